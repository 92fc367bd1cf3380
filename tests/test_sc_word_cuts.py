"""Words cut from other corpora's utterances (asr/word_cuts.py, recipes/speech_commands/word_cuts.py):
the cut rules, the fade, and the whole pass on tiny generated corpora with a stand-in
aligner whose posteriors follow the audio's loudness."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from asr.align import WordSpan
from asr.heads.ctc import CTCHead
from asr.text import CharTokenizer
from kws.negatives import corpus_files, split_held_out
from asr import word_cuts
from asr.word_cuts import cut_bounds, isolate
from recipes.speech_commands.word_cuts import CORPORA, command_words
from tests.test_sc_recipe_data import SR, WINDOW, _corpora


def test_cut_bounds_pad_the_spikes_and_stop_short_of_the_neighbours():
    spans = [WordSpan("turn", 0.2, 0.5, 1.0), WordSpan("left", 0.9, 1.2, 1.0), WordSpan("now", 2.0, 2.3, 1.0)]
    a, b = cut_bounds(spans, 1, 3.0)  # free on both sides: the lead and the tail
    assert a == pytest.approx(0.9 - word_cuts.LEAD_S) and b == pytest.approx(1.2 + word_cuts.TAIL_S)
    close = [WordSpan("turn", 0.2, 0.8, 1.0), WordSpan("left", 0.9, 1.2, 1.0), WordSpan("now", 1.3, 1.6, 1.0)]
    a, b = cut_bounds(close, 1, 3.0)
    assert a == pytest.approx(0.8 - word_cuts.NEIGHBOUR_S) and b == pytest.approx(1.3 - word_cuts.NEIGHBOUR_S)
    assert cut_bounds(spans, 0, 3.0)[0] == 0.0 and cut_bounds(spans, 2, 2.4)[1] == 2.4  # the file's ends


def test_isolate_fades_everything_outside_the_cut():
    wave = torch.ones(SR)
    a, b = 6000, 9000
    out = isolate(wave, a, b, SR)
    ramp = int(word_cuts.RAMP_S * SR)
    floor = 10 ** (-word_cuts.FADE_DB / 20)
    assert torch.equal(out[a:b], wave[a:b])
    assert torch.allclose(out[:a - ramp], torch.full((a - ramp,), floor))
    assert torch.allclose(out[b + ramp:], torch.full((SR - b - ramp,), floor))
    assert (out[a - ramp:a].diff() > 0).all() and (out[b:b + ramp].diff() < 0).all()
    edge = isolate(wave, 10, SR - 5, SR)  # ramps clipped at the file's ends
    assert edge.shape == wave.shape and edge[10:SR - 5].eq(1).all()


class LoudnessCTC(nn.Module):
    """Blank over quiet frames; over loud frames every character equally likely."""

    frame_seconds = 0.04

    def __init__(self, tokenizer: CharTokenizer) -> None:
        super().__init__()
        self.V = tokenizer.vocab_size
        self.heads = nn.ModuleDict({"ctc": CTCHead(self.V, self.V)})
        with torch.no_grad():
            self.heads["ctc"].proj.weight.copy_(torch.eye(self.V))
            self.heads["ctc"].proj.bias.zero_()
        self.cfg = SimpleNamespace(features=SimpleNamespace(sample_rate=SR))

    def encode(self, waves, wave_lens):
        hop = int(self.frame_seconds * SR)
        n = int(wave_lens[0]) // hop
        loud = waves[0, : n * hop].reshape(n, hop).abs().amax(dim=1) > 0.1
        probs = torch.empty(n, self.V)
        probs[:, 0] = torch.where(loud, 0.02, 0.98)
        probs[:, 1:] = torch.where(loud, 0.98, 0.02)[:, None] / (self.V - 1)
        return probs.log()[None], torch.tensor([n])


def test_command_words_cut_from_training_side_speakers(tmp_path):
    _corpora(tmp_path, np.random.default_rng(3))  # every fourth transcript says "turn left now"
    index = {"_silence_": 0, "_unknown_": 1, "left": 6}
    tok = CharTokenizer()
    aligner = (LoudnessCTC(tok), tok)
    clips = command_words(tmp_path, 100, index, WINDOW, SR, aligner=aligner, min_score=0.0, per_speaker_word=1)
    train_files, held_files = split_held_out(corpus_files(tmp_path, CORPORA), 50.0)
    said = [f for f in train_files if "left" in f.text.lower()]
    assert said and [f for f in held_files if "left" in f.text.lower()]
    # one clip per training-side speaker who says it (LJSpeech has one speaker, three such files)
    assert sorted(c.speaker for c in clips) == sorted({f"{f.corpus}/{f.speaker}" for f in said})
    assert {c.path.split("#")[0] for c in clips} <= {f.path for f in said}
    length = WINDOW + 2 * (WINDOW // 4)
    ramp = int(word_cuts.RAMP_S * SR)
    for c in clips:
        assert c.label == 6 and c.source == "real" and c.wave.shape == (length,)
        f0, f1 = c.focus
        assert 0 <= f0 < f1 <= length
        wave = c.wave.numpy()
        assert np.abs(wave[f0:f1]).max() > 0.25  # the burst ('left') is inside the cut
        outside = np.concatenate([wave[:max(0, f0 - ramp)], wave[f1 + ramp:]])
        assert np.abs(outside).max() < 0.3 * 10 ** (-word_cuts.FADE_DB / 20) + 1e-3
    # the loudness aligner is unsure which character is which: a posterior floor drops them all
    assert command_words(tmp_path, 100, index, WINDOW, SR, aligner=aligner, min_score=0.5) == []
    assert len(command_words(tmp_path, 2, index, WINDOW, SR, aligner=aligner, min_score=0.0)) == 2


def _tiny_an4(root):
    import soundfile as sf

    (root / "etc").mkdir(parents=True)
    (root / "etc" / "an4_train.transcription").write_text(
        "<s> TWO SIX EIGHT </s> (an253-fash-b)\n<s> RUBOUT </s> (an254-fash-b)\n<s> SIX SIX </s> (an256-fash-b)\n")
    (root / "etc" / "an4_test.transcription").write_text("<s> ENTER SIX TWO </s> (an406-fcaw-b)\n")
    rng = np.random.default_rng(4)
    for rel in ("an4_clstk/fash/an253-fash-b", "an4_clstk/fash/an254-fash-b", "an4_clstk/fash/an256-fash-b",
                "an4test_clstk/fcaw/an406-fcaw-b"):
        p = root / "wav" / f"{rel}.flac"
        p.parent.mkdir(parents=True, exist_ok=True)
        wave = 0.001 * rng.standard_normal(2 * SR)
        wave[SR // 4: 7 * SR // 4] += 0.3 * np.sin(2 * np.pi * 300 * np.arange(3 * SR // 2) / SR)
        sf.write(p, wave.astype(np.float32), SR)


def test_fsdd_digit_words_are_cut_written_and_read_back(tmp_path):
    """The FSDD recipe's --digit-words on a tiny AN4 tree: each digit of every split becomes
    a file of its own, labelled with the digit and the corpus-marked speaker; a second call
    reads the cuts back without aligning anything."""
    import soundfile as sf

    from recipes.fsdd.prepare import digit_words

    root = tmp_path / "an4"
    _tiny_an4(root)
    tok = CharTokenizer()
    utts = digit_words("an4", root, tmp_path / "cuts", repeat=2, per_speaker=1,
                       aligner=(LoudnessCTC(tok), tok), min_score=0.0)
    got = sorted((u.text, u.speaker) for u in utts if not u.id.endswith("_r1"))
    # fash's second "six" (and both of an256's) are over the per-speaker cap of one
    assert got == [("eight", "an4:fash"), ("six", "an4:fash"), ("six", "an4:fcaw"), ("two", "an4:fash"),
                   ("two", "an4:fcaw")]
    assert len(utts) == 10 and {u.id for u in utts if u.id.endswith("_r1")}
    for u in utts:
        audio, rate = sf.read(u.audio)
        assert rate == SR and abs(audio.size / SR - u.duration) < 1e-3 and u.duration <= 2.0
    again = digit_words("an4", root, tmp_path / "cuts", repeat=2, aligner=("not", "used"))
    assert [(u.id, u.audio, u.text) for u in again] == [(u.id, u.audio, u.text) for u in utts]


def test_fsdd_digit_words_read_back_with_other_settings_say_so(tmp_path, caplog):
    """The cut index keeps the settings it was cut with: a later call asking for others
    reuses the cuts and says which settings differ (it used to reuse them silently)."""
    import json

    from recipes.fsdd.prepare import digit_words

    _tiny_an4(tmp_path / "an4")
    tok = CharTokenizer()
    first = digit_words("an4", tmp_path / "an4", tmp_path / "cuts", per_speaker=1,
                        aligner=(LoudnessCTC(tok), tok), min_score=0.0)
    saved = json.loads((tmp_path / "cuts" / "an4" / "cuts.json").read_text())
    assert saved["settings"]["per_speaker"] == 1 and len(saved["cuts"]) == len(first)
    caplog.clear()
    again = digit_words("an4", tmp_path / "an4", tmp_path / "cuts", per_speaker=3, min_score=0.0)
    assert [u.audio for u in again] == [u.audio for u in first]
    assert "other settings (per_speaker 1 (now 3))" in caplog.text
    caplog.clear()
    digit_words("an4", tmp_path / "an4", tmp_path / "cuts", per_speaker=1, min_score=0.0)
    assert "other settings" not in caplog.text


def test_fsdd_digit_words_in_a_relative_folder_survive_a_manifest_elsewhere(tmp_path, monkeypatch):
    """The recipe's default --digit-words-dir is relative (exp/fsdd_digit_words) and its
    training manifest lives in another folder, which resolves relative audio paths against
    itself: the cuts must still be found, also when read back from another working folder."""
    from asr.data import read_manifest, write_manifest
    from recipes.fsdd.prepare import digit_words

    _tiny_an4(tmp_path / "an4")
    tok = CharTokenizer()
    monkeypatch.chdir(tmp_path)
    utts = digit_words("an4", "an4", "exp/cuts", per_speaker=1, aligner=(LoudnessCTC(tok), tok), min_score=0.0)
    assert utts
    manifest = write_manifest(utts, tmp_path / "exp" / "fsdd" / "data" / "train.jsonl")
    assert all(Path(u.audio).is_file() for u in read_manifest(manifest))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = digit_words("an4", "unused", tmp_path / "exp" / "cuts", aligner=("not", "used"))
    assert [u.audio for u in again] == [u.audio for u in utts] and all(Path(u.audio).is_file() for u in again)
