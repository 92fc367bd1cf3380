"""Long recordings: cut at pauses into pieces no longer than asked, covering the whole
recording, and `python -m asr transcribe` decodes the pieces and joins them with times
counted from the recording's start."""
import json

import pytest
import soundfile as sf
import torch

from asr.__main__ import main
from asr.audio import load_audio
from asr.checkpoint import save_checkpoint
from asr.data import read_manifest
from asr.model import ASRModel
from asr.segment import split_at_pauses
from asr.text import build_tokenizer
from conftest import WORDS
from test_train import tiny_config

SR = 16000


def _bursts(n: int, burst_s: float, gap_s: float, seed: int = 0):
    """n bursts of noise, each followed by a gap of near silence; the gaps' sample ranges."""
    g = torch.Generator().manual_seed(seed)
    parts, gaps, pos = [], [], 0
    for _ in range(n):
        burst = 0.3 * torch.randn(int(burst_s * SR), generator=g)
        gap = 1e-4 * torch.randn(int(gap_s * SR), generator=g)
        parts += [burst, gap]
        pos += burst.numel()
        gaps.append((pos, pos + gap.numel()))
        pos += gap.numel()
    return torch.cat(parts), gaps


def _check_cover(spans, n, max_s):
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous: nothing dropped
    assert all(0 < e - s <= max_s * SR for s, e in spans)


def test_cuts_fall_in_pauses_and_cover_the_recording():
    wave, gaps = _bursts(9, 2.6, 0.4)  # 27 s
    spans = split_at_pauses(wave, SR, max_seconds=8.0, min_seconds=3.0)
    _check_cover(spans, wave.numel(), 8.0)
    assert len(spans) >= 4
    for start, _ in spans[1:]:
        assert any(lo <= start <= hi for lo, hi in gaps), start / SR

    noise = 0.3 * torch.randn(25 * SR, generator=torch.Generator().manual_seed(1))  # no pause
    _check_cover(split_at_pauses(noise, SR, max_seconds=10.0), noise.numel(), 10.0)
    assert split_at_pauses(wave[: 5 * SR], SR, max_seconds=8.0) == [(0, 5 * SR)]
    with pytest.raises(ValueError, match="min_seconds"):
        split_at_pauses(wave, SR, max_seconds=3.0, min_seconds=5.0)
    with pytest.raises(ValueError, match="1-D"):
        split_at_pauses(wave[None], SR)


def test_transcribe_cuts_a_long_file_and_joins_the_pieces(tmp_path, tone_corpus, capsys):
    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size).eval()
    with torch.no_grad():  # sharper outputs than at initialisation: labels get emitted
        model.heads["ctc"].proj.weight.mul_(8.0)
    path = save_checkpoint(tmp_path / "model.pt", cfg, tok, model)
    clips = [load_audio(u.audio, SR) for u in read_manifest(tone_corpus)]
    silence = torch.zeros(int(0.5 * SR))
    wave = torch.cat([torch.cat([c, silence]) for c in clips * 2])
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, wave.numpy(), SR)
    duration = wave.numel() / SR
    assert duration > 6.0

    assert main(["transcribe", "--model", str(path), "--max-segment", "3", str(long_wav)]) == 0
    out = json.loads(capsys.readouterr().out)
    segments = out["segments"]
    assert len(segments) >= 2 and segments[0]["start"] == 0.0
    assert segments[-1]["end"] == pytest.approx(duration, abs=1e-3)
    assert all(a["end"] == b["start"] and b["end"] - b["start"] <= 3.0 + 1e-3
               for a, b in zip(segments, segments[1:]))
    assert out["text"] == " ".join(s["text"] for s in segments if s["text"])
    assert len(out["tokens"]) == len(out["times"]) > 0
    assert out["times"] == sorted(out["times"]) and out["times"][-1] <= duration
    # a piece decodes as that piece alone would, its times shifted by its start
    piece = segments[1]
    piece_wav = tmp_path / "piece.wav"
    sf.write(piece_wav, wave[round(piece["start"] * SR): round(piece["end"] * SR)].numpy(), SR)
    assert main(["transcribe", "--model", str(path), str(piece_wav)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["text"] == piece["text"]
    shifted = [t for t in out["times"] if piece["start"] <= t < piece["end"]]
    assert shifted == pytest.approx([piece["start"] + t for t in alone["times"]], abs=2e-3)

    assert main(["transcribe", "--model", str(path), "--max-segment", "0", str(long_wav)]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert [(s["start"], s["end"]) for s in whole["segments"]] == [(0.0, round(duration, 3))]
