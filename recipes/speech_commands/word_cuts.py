"""Real command words of speakers outside Speech Commands, cut out of other corpora's
utterances by CTC forced alignment (``--command-words N`` of run.py and crossval.py; the
cutting, and how its rules were measured, is :mod:`asr.word_cuts`).

speechocean762 and LJSpeech read sentences with "on", "no", "go", "up", "right"...; AN4 has
"yes", "no", "stop" and "go" said alone. The words are taken from the speakers on the
training side of the wake-word recipe's held-out split (:func:`kws.negatives.split_held_out`,
50%), as for ``--unknown-speech``, at most ``PER_SPEAKER_WORD`` per (corpus, speaker, word).
"""
from __future__ import annotations

from pathlib import Path

import torch

from asr.word_cuts import ALIGNER, MIN_SCORE, cut_words
from kws.data import SPEECH_COMMANDS_WORDS

CORPORA = ("speechocean762", "an4", "ljspeech")  # no Speech Commands speaker in them
PER_SPEAKER_WORD = 3


def command_words(corpora: str | Path, n: int, index: dict, window_samples: int, sample_rate: int = 16000,
                  aligner: str | Path | tuple = ALIGNER, seed: int = 0, min_score: float = MIN_SCORE,
                  per_speaker_word: int = PER_SPEAKER_WORD) -> list:
    """Up to ``n`` clips (``kws.data.Clip``, label = the word's class in ``index``) of the
    ten command words cut from the corpora under ``corpora``. Each clip is the window plus a
    quarter window either side, centred on the cut, which is its focus. ``aligner``: a
    checkpoint with a CTC head, or an already loaded ``(model, tokenizer)``, at
    ``sample_rate``. Files that cannot be read or aligned are reported and skipped."""
    from asr.word_cuts import load_aligner
    from kws.data import Clip
    from kws.negatives import corpus_files, split_held_out

    model, tokenizer = load_aligner(aligner)
    if model.cfg.features.sample_rate != sample_rate:
        raise ValueError(f"aligner runs at {model.cfg.features.sample_rate} Hz, the clips at {sample_rate} Hz")
    files, _ = split_held_out(corpus_files(corpora, CORPORA), 50.0)
    utterances = [(f.path, f.text, f"{f.corpus}/{f.speaker}") for f in files]
    length = window_samples + 2 * (window_samples // 4)
    clips = []
    for cut in cut_words(utterances, SPEECH_COMMANDS_WORDS, (model, tokenizer), n, per_speaker_word,
                         min_score, seed, desc="command words"):
        start = (cut.start + cut.end) // 2 - length // 2
        seg = torch.zeros(length)
        lo, hi = max(start, 0), min(start + length, cut.wave.numel())
        seg[lo - start:hi - start] = cut.wave[lo:hi]
        focus = (max(cut.start - start, 0), min(cut.end - start, length))
        clips.append(Clip(seg, index[cut.word], "real",
                          f"{cut.path}#{cut.start / sample_rate:.2f}-{cut.end / sample_rate:.2f}s", cut.key, focus))
    return clips
