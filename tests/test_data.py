import json
from types import SimpleNamespace

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


def _tone_file(path, seconds=2.0, sr=16000, **fmt):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, **fmt)
    return path


@pytest.mark.parametrize("name,fmt", [
    ("a.wav", {}), ("a.flac", {}), ("a.ogg", {"format": "OGG", "subtype": "VORBIS"}),
    ("a.opus", {"format": "OGG", "subtype": "OPUS"}), ("a.sph", {"format": "NIST"}),
    ("a.mp3", {"format": "MP3", "bitrate_mode": "VARIABLE"}),
    ("b.mp3", {"format": "MP3", "bitrate_mode": "CONSTANT"}),
])
def test_whole_files_and_segments_of_every_format_load(tmp_path, name, fmt):
    path = _tone_file(tmp_path / name, **fmt)
    assert load_audio(path).numel() == 32000
    assert load_audio(path, offset=1.5, duration=0.6).numel() == 8000  # past the end: the rest


def test_a_truncated_file_is_rejected_naming_the_counts(tmp_path):
    """An MP3 cut short still promises its whole length (Xing header): it is refused, not
    decoded in part; without such a header its length is an estimate and it is read."""
    whole = _tone_file(tmp_path / "whole.mp3", format="MP3", bitrate_mode="VARIABLE").read_bytes()
    assert b"Xing" in whole[:400] or b"Info" in whole[:400]
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=r"truncated: \d+ of the 32000 frames its header promises "
                                         r"decode \(\d\.\d\d of 2\.00 s\)") as exc:
        load_audio(cut)
    assert str(cut) in str(exc.value)
    with pytest.raises(AudioError, match="truncated"):
        load_audio(cut, offset=0.2, duration=1.5)
    assert load_audio(cut, duration=0.5).numel() == 8000  # the part that is there


def test_an_mp3_without_a_length_header_is_never_called_truncated(tmp_path, monkeypatch):
    """Without a Xing/Info/VBRI header libmpg123 estimates an MP3's length from its size and
    first frame, which can promise far more than a whole file holds: not a truncation."""
    import asr.audio

    whole = _tone_file(tmp_path / "whole.mp3", format="MP3", bitrate_mode="VARIABLE").read_bytes()
    tagged = tmp_path / "id3.mp3"  # an ID3v2 tag (syncsafe size 256) before the first frame,
    tagged.write_bytes(b"ID3\x03\x00\x00\x00\x00\x02\x00" + b"\xff\xfb" * 128 + whole)  # sync-like
    untagged = tmp_path / "estimated.mp3"
    untagged.write_bytes(whole[:400].replace(b"Xing", b"Xinq").replace(b"Info", b"Infq")
                         + whole[400:])
    assert asr.audio.frame_count_is_exact(tagged, sf.info(str(tagged)))
    assert not asr.audio.frame_count_is_exact(untagged, sf.info(str(untagged)))
    info = sf.info  # the estimate overshoots: twice what decodes
    monkeypatch.setattr(asr.audio.sf, "info", lambda p: SimpleNamespace(
        **{k: getattr(info(p), k) for k in ("format", "samplerate")}, frames=2 * info(p).frames))
    assert load_audio(untagged).numel() > 0
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tagged)


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
