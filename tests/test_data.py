import json

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError, load_audio
from asr.data import (DurationBatchSampler, ManifestError, UtteranceDataset, collate,
                      read_manifest, validate, write_manifest)
from asr.text import CharTokenizer, normalize_text


def test_load_audio_resamples_and_mixes_down(tmp_path):
    sr = 8000
    stereo = np.stack([np.sin(np.arange(sr) * 0.1), np.zeros(sr)], axis=1).astype(np.float32)
    sf.write(tmp_path / "a.flac", stereo, sr)
    wave = load_audio(tmp_path / "a.flac", 16000)
    assert wave.shape == (16000,) and wave.dtype == torch.float32
    assert abs(float(wave.abs().max()) - 0.5) < 0.05


@pytest.mark.parametrize("content,reason", [
    (None, "no such file"),
    (b"RIFF\x00\x00junk", "cannot decode"),
    (b"", "cannot decode"),
])
def test_bad_audio_errors_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=reason) as exc:
        load_audio(path)
    assert str(path) in str(exc.value)


def test_zero_sample_file_is_rejected(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")


def test_manifest_roundtrip_and_errors(tmp_path, tone_corpus):
    utts = read_manifest(tone_corpus)
    assert len(utts) == 8 and utts[0].text == "yes"
    out = write_manifest(utts, tmp_path / "copy.jsonl")
    assert [u.id for u in read_manifest(out)] == [u.id for u in utts]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "audio": "a.wav", "duration": 1}) + "\n")
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: missing field\(s\) \['text'\]"):
        read_manifest(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ManifestError, match="bad.jsonl:1: not valid JSON"):
        read_manifest(bad)


def test_validate_skips_and_reports_bad_utterances(tmp_path, tone_corpus):
    utts = read_manifest(tone_corpus)
    (tmp_path / "corrupt.wav").write_bytes(b"not audio at all")
    utts[1].text = "  ?! "  # empty after normalisation
    utts[2].audio = str(tmp_path / "corrupt.wav")
    utts[3].audio = str(tmp_path / "missing.wav")
    tok = CharTokenizer()
    kept, rejected = validate(utts, normalize_text, tok.encode)
    assert len(kept) == 5
    reasons = {r.id: r.reason for r in rejected}
    assert "empty transcript" in reasons["utt1"]
    assert "cannot read header" in reasons["utt2"] and "no such file" not in reasons["utt2"]
    assert set(reasons) == {"utt1", "utt2", "utt3"}
    with pytest.raises(ManifestError, match="utt1"):
        validate(utts, normalize_text, tok.encode, on_error="raise")


def test_dataset_skips_audio_that_breaks_later(tmp_path, tone_corpus, monkeypatch):
    utts = read_manifest(tone_corpus)
    tok = CharTokenizer()
    ds = UtteranceDataset(utts, tok.encode)
    (tmp_path / "tones" / "utt0.wav").write_bytes(b"corrupted after validation")
    batch = collate([ds[i] for i in range(4)])
    assert batch.ids == ["utt1", "utt2", "utt3"] and ds.rejected[0].id == "utt0"
    assert batch.waves.shape[0] == 3 and batch.targets.shape[0] == 3
    # the failure is remembered: a later epoch neither re-reads the file nor lists it again
    with monkeypatch.context() as m:
        m.setattr("asr.data.load_audio", lambda *a, **k: pytest.fail("read again"))
        assert ds[0] is None and [r.id for r in ds.rejected] == ["utt0"]
    strict = UtteranceDataset(utts, tok.encode, on_error="raise")
    with pytest.raises(AudioError, match="utt0.wav"):
        strict[0]
    # a resumed run is told of the earlier failure and skips it without listing it twice
    resumed = UtteranceDataset(utts, tok.encode)
    resumed.restore_rejected([r.__dict__ for r in ds.rejected])
    assert resumed[0] is None and [r.id for r in resumed.rejected] == ["utt0"]


def test_duration_batches_respect_budget_and_cover_everything():
    durations = [0.5 + (i % 7) * 0.7 for i in range(100)]
    sampler = DurationBatchSampler(durations, max_seconds=10.0, seed=3)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(100))
    for b in batches:
        assert len(b) * max(durations[i] for i in b) <= 10.0 or len(b) == 1
    assert sampler.batches() == batches  # same epoch, same order (resumable)
    sampler.set_epoch(1)
    assert sampler.batches() != batches
