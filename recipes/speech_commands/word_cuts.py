"""Real command words of speakers outside Speech Commands, cut out of other corpora's
utterances by CTC forced alignment (``--command-words N`` of run.py and crossval.py).

speechocean762 and LJSpeech read sentences with "on", "no", "go", "up", "right"...; AN4 has
"yes", "no", "stop" and "go" said alone. Each utterance whose transcript holds a command
word is aligned with a streaming CTC model (``asr.align.align_words``; the default,
``data/models/english_streaming.pt``, has a bounded look-ahead, so its spikes stay near the
sounds, while the bidirectional models put them anywhere, even at frame 0), and the word is
cut around its spikes:

- the spikes lag the sound: on AN4's isolated words (the 32 of the training-side speakers,
  against the energy-based ``kws.data.speech_region``) the first spike comes 0.10-0.41 s
  after the onset (median 0.16) and the last one -0.10..+0.27 s after the offset (median
  0.11), so the cut runs from ``LEAD_S`` before the first spike to ``TAIL_S`` after the last;
- the neighbours' spikes lag too: on synthetic three- and four-word phrases (60 phrases,
  six espeak-ng and flite voices, the words' true positions known) the previous word's last
  spike came -0.18..+0.21 s after the command word's onset and the next word's first spike
  0.18-0.40 s after its offset, so the cut starts no earlier than ``NEIGHBOUR_S`` before the
  previous word's last spike and ends no later than ``NEIGHBOUR_S`` before the next word's
  first spike. On those phrases the cuts hold 97% of the word on average (12% of them less
  than 90% of it) and 0.15 s of other audio; the first settings tried (0.05 s after the
  last spike, 0.1 s before the next word) held only 80%;
- outside the cut the audio is faded ``FADE_DB`` down (with ``RAMP_S`` ramps), so the window
  holds one word as a Speech Commands clip does, on the recording's own (quieter) background.

Only words whose aligned characters have a mean posterior of at least ``MIN_SCORE`` are
kept (the model heard that word there), at most ``PER_SPEAKER_WORD`` per (corpus, speaker,
word), from the speakers on the training side of the wake-word recipe's held-out split
(:func:`kws.negatives.split_held_out`, 50%), as for ``--unknown-speech``.
"""
from __future__ import annotations

import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import List, Sequence

import torch
from tqdm import tqdm

from kws.data import SPEECH_COMMANDS_WORDS

log = logging.getLogger("recipes.speech_commands.word_cuts")
ROOT = Path(__file__).resolve().parents[2]
ALIGNER = ROOT / "data" / "models" / "english_streaming.pt"
CORPORA = ("speechocean762", "an4", "ljspeech")  # no Speech Commands speaker in them
LEAD_S = 0.30
TAIL_S = 0.20
NEIGHBOUR_S = 0.20
FADE_DB = 40.0
RAMP_S = 0.02
MIN_SCORE = 0.5
PER_SPEAKER_WORD = 3


def cut_bounds(spans: Sequence, k: int, duration: float, lead: float = LEAD_S, tail: float = TAIL_S,
               previous: float = NEIGHBOUR_S, following: float = NEIGHBOUR_S) -> tuple:
    """(start, end) seconds of word ``k`` of the aligned ``spans`` (``asr.align.WordSpan``)
    in an utterance of ``duration`` seconds, by the rules in the module docstring: from
    ``lead`` before its first spike (but not earlier than ``previous`` before the previous
    word's last spike) to ``tail`` after its last (but not later than ``following`` before
    the next word's first spike)."""
    start = spans[k].start - lead
    end = spans[k].end + tail
    if k > 0:
        start = max(start, spans[k - 1].end - previous)
    if k + 1 < len(spans):
        end = min(end, spans[k + 1].start - following)
    return max(0.0, start), min(duration, end)


def isolate(wave: torch.Tensor, a: int, b: int, sample_rate: int) -> torch.Tensor:
    """``wave`` (N,) with everything outside samples [a, b) faded ``FADE_DB`` down, over
    ``RAMP_S`` ramps just outside the cut (the cut itself is untouched)."""
    floor = 10 ** (-FADE_DB / 20)
    gain = torch.full_like(wave, floor)
    gain[a:b] = 1.0
    ramp = max(1, int(RAMP_S * sample_rate))
    steps = torch.linspace(floor, 1.0, ramp + 2)[1:-1]
    lo = max(0, a - ramp)
    gain[lo:a] = steps[ramp - (a - lo):]
    hi = min(wave.numel(), b + ramp)
    gain[b:hi] = steps.flip(0)[:hi - b]
    return wave * gain


def command_words(corpora: str | Path, n: int, index: dict, window_samples: int, sample_rate: int = 16000,
                  aligner: str | Path | tuple = ALIGNER, seed: int = 0, min_score: float = MIN_SCORE,
                  per_speaker_word: int = PER_SPEAKER_WORD) -> list:
    """Up to ``n`` clips (``kws.data.Clip``, label = the word's class in ``index``) of the
    ten command words cut from the corpora under ``corpora``. Each clip is the window plus a
    quarter window either side, centred on the cut, which is its focus. ``aligner``: a
    checkpoint with a CTC head, or an already loaded ``(model, tokenizer)``. Files that
    cannot be read or aligned are reported and skipped."""
    from asr.align import AlignmentError, align_words
    from asr.checkpoint import load_model
    from asr.audio import AudioError
    from kws.data import Clip, load_audio
    from kws.negatives import corpus_files, split_held_out

    commands = set(SPEECH_COMMANDS_WORDS)
    files, _ = split_held_out(corpus_files(corpora, CORPORA), 50.0)
    files = [f for f in files if commands & set(re.findall(r"[a-z']+", f.text.lower()))]
    random.Random(seed).shuffle(files)
    model, tokenizer = aligner if isinstance(aligner, tuple) else load_model(aligner)[:2]
    if model.cfg.features.sample_rate != sample_rate:
        raise ValueError(f"aligner runs at {model.cfg.features.sample_rate} Hz, the clips at {sample_rate} Hz")
    taken: Counter = Counter()
    length = window_samples + 2 * (window_samples // 4)
    clips: List = []
    stats = Counter()
    for f in tqdm(files, desc="command words", mininterval=5.0):
        if len(clips) >= n:
            break
        words = set(re.findall(r"[a-z']+", f.text.lower())) & commands
        if all(taken[(f.corpus, f.speaker, w)] >= per_speaker_word for w in words):
            continue
        try:
            wave = load_audio(f.path, sample_rate)
            spans = align_words(model, tokenizer, wave, f.text)
        except (AudioError, AlignmentError) as exc:
            log.warning("command words: skipping %s: %s", f.path, exc)
            stats["skipped_files"] += 1
            continue
        duration = wave.numel() / sample_rate
        for k, span in enumerate(spans):
            key = (f.corpus, f.speaker, span.word)
            if span.word not in commands or taken[key] >= per_speaker_word or len(clips) >= n:
                continue
            if span.score < min_score:
                stats["low_score"] += 1
                continue
            t0, t1 = cut_bounds(spans, k, duration)
            a, b = int(t0 * sample_rate), int(t1 * sample_rate)
            if b - a < int(0.1 * sample_rate):
                stats["too_short"] += 1
                continue
            start = (a + b) // 2 - length // 2
            seg = torch.zeros(length)
            lo, hi = max(start, 0), min(start + length, wave.numel())
            seg[lo - start:hi - start] = isolate(wave, a, b, sample_rate)[lo:hi]
            focus = (max(a - start, 0), min(b - start, length))
            clips.append(Clip(seg, index[span.word], "real", f"{f.path}#{t0:.2f}-{t1:.2f}s",
                              f"{f.corpus}/{f.speaker}", focus))
            taken[key] += 1
    per_word = Counter(w for (_, _, w), c in taken.items() for _ in range(c))
    log.info("%d command words cut (%s), %d speakers; %s", len(clips), dict(per_word),
             len({(c, s) for c, s, _ in taken}), dict(stats))
    return clips
