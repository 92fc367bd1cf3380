"""CMU's AN4 also ships as an4_raw.bigendian: headerless 16 kHz 16-bit big-endian ``.raw``
files under the same ``wav/`` tree; every entry was rejected as "no such file"."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.audio import audio_info, load_audio
from asr.corpora import load_corpus

ROOT = Path(__file__).resolve().parents[1]


def _raw(path: Path, seconds: float = 0.5) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    pcm = (0.2 * 32767 * np.sin(2 * np.pi * 300 * t)).astype(">i2")
    path.write_bytes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768


def make_an4_raw(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "an4_train.transcription").write_text("<s> YES </s> (an251-fash-b)\n")
    (root / "etc" / "an4_test.transcription").write_text(
        "<s> ENTER SIX TWO </s> (an406-fcaw-b)\n<s> NO </s> (an407-fcaw-b)\n")
    _raw(root / "wav/an4_clstk/fash/an251-fash-b.raw")
    _raw(root / "wav/an4test_clstk/fcaw/an406-fcaw-b.raw", 1.0)
    return root  # an407's audio is missing


def test_raw_audio_is_read_as_an4_big_endian_pcm(tmp_path):
    want = _raw(tmp_path / "x.raw", 0.25)
    assert audio_info(tmp_path / "x.raw") == (0.25, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "x.raw",
                                          16000).numpy(), want, atol=1e-4)


def test_an4_reads_the_raw_release(tmp_path):
    root = make_an4_raw(tmp_path / "an4")
    utts = load_corpus("an4", root, split="test")
    assert [(u.id, u.text, u.speaker, round(u.duration, 2), u.sample_rate) for u in utts] == [
        ("an406-fcaw-b", "ENTER SIX TWO", "fcaw", 1.0, 16000)]
    (missing,) = utts.rejected
    assert missing.id == "an407-fcaw-b" and ".raw" in missing.reason


@pytest.mark.timeout(120)
def test_evaluate_cli_on_the_raw_release(tmp_path):
    root = make_an4_raw(tmp_path / "an4")
    out = subprocess.run(
        [sys.executable, "-m", "asr", "evaluate", "--model", str(ROOT / "data/models/fsdd_ctc.pt"),
         "--plain", "--corpus", "an4", "--data", str(root), "--split", "test", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["utterances"] == 1
