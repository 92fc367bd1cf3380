"""The FSDD reader takes the recordings whatever their audio suffix and its case: a copy
with ``.WAV`` (or ``.flac``) files was read as "no utterances found"."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpora import load_corpus


def _tone(path: Path, sr: int = 8000, fmt: dict = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(sr // 2) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, **(fmt or {}))


def test_fsdd_reads_uppercase_and_other_audio_suffixes(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    _tone(rec / "0_george_0.wav")
    _tone(rec / "1_george_1.WAV", fmt={"format": "WAV"})
    _tone(rec / "2_lucas_0.flac")
    (rec / "README.txt").write_text("not audio")
    utts = load_corpus("fsdd", tmp_path / "fsdd")
    assert [(u.id, u.text, u.speaker, u.sample_rate) for u in utts] == [
        ("0_george_0", "zero", "george", 8000), ("1_george_1", "one", "george", 8000),
        ("2_lucas_0", "two", "lucas", 8000)]
    assert not utts.rejected


def test_fsdd_same_recording_twice_is_refused(tmp_path):
    rec = tmp_path / "recordings"
    _tone(rec / "3_theo_0.wav")
    _tone(rec / "3_theo_0.flac")
    with pytest.raises(ValueError, match="'3_theo_0' is used twice"):
        load_corpus("fsdd", tmp_path)
