"""Words cut out of transcribed utterances, by CTC forced alignment (:mod:`asr.align`): more
real voices saying a closed set of words (command words, digits) from corpora of running
speech. Used by the Speech Commands recipe (``--command-words``) and the FSDD recipe
(``--digit-words``).

Each utterance whose transcript holds one of the words is aligned, and the word is cut
around its spikes. The default aligner, ``data/models/english_streaming.pt``, has a bounded
look-ahead, so its spikes stay near the sounds, while the bidirectional models put them
anywhere, even at frame 0. The cut rules were measured on that model:

- its spikes lag the sound: on AN4's isolated words (the 32 "yes", "no", "stop", "go" of the
  wake-word split's training-side speakers, against the energy-based
  ``kws.data.speech_region``) the first spike comes 0.10-0.41 s after the onset (median
  0.16) and the last one -0.10..+0.27 s after the offset (median 0.11), so the cut runs from
  ``LEAD_S`` before the first spike to ``TAIL_S`` after the last;
- the neighbours' spikes lag too: on synthetic three- and four-word phrases (60 phrases,
  six espeak-ng and flite voices, the words' true positions known;
  ``python -m recipes.speech_commands.check_cuts``) the previous word's last spike came
  -0.18..+0.21 s after the word's onset and the next word's first spike 0.18-0.40 s after
  its offset, so the cut starts no earlier than ``NEIGHBOUR_S`` before the previous word's
  last spike and ends no later than ``NEIGHBOUR_S`` before the next word's first spike. On
  those phrases the cuts hold 97% of the word on average (12% of them less than 90% of it)
  and 0.15 s of other audio; the first settings tried (0.05 s after the last spike, 0.1 s
  before the next word) held only 80%;
- outside the cut the audio is faded ``FADE_DB`` down (with ``RAMP_S`` ramps), so the word
  stands alone, as in a corpus of isolated words, on the recording's own (quieter) background.

Only words whose aligned characters have a mean posterior of at least ``MIN_SCORE`` are
kept (the model heard that word there), and at most ``per_key_word`` of each (key, word),
the key being the speaker.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Tuple

import torch
from tqdm import tqdm

log = logging.getLogger("asr.word_cuts")
ALIGNER = Path(__file__).resolve().parents[1] / "data" / "models" / "english_streaming.pt"
LEAD_S = 0.30
TAIL_S = 0.20
NEIGHBOUR_S = 0.20
FADE_DB = 40.0
RAMP_S = 0.02
MIN_SCORE = 0.5
MIN_CUT_S = 0.1


@dataclass
class WordCut:
    path: str  # the utterance's file
    key: str  # its speaker
    word: str
    start: int  # samples: the cut is wave[start:end]
    end: int
    score: float
    wave: torch.Tensor  # (N,) the whole utterance, faded outside the cut


def cut_bounds(spans: Sequence, k: int, duration: float, lead: float = LEAD_S, tail: float = TAIL_S,
               previous: float = NEIGHBOUR_S, following: float = NEIGHBOUR_S) -> Tuple[float, float]:
    """(start, end) seconds of word ``k`` of the aligned ``spans`` (``asr.align.WordSpan``)
    in an utterance of ``duration`` seconds: from ``lead`` before its first spike (but not
    earlier than ``previous`` before the previous word's last spike) to ``tail`` after its
    last (but not later than ``following`` before the next word's first spike)."""
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


def load_aligner(aligner: str | Path | tuple = ALIGNER):
    """(model, tokenizer) from a checkpoint with a CTC head, or an already loaded pair."""
    from asr.checkpoint import load_model

    return aligner if isinstance(aligner, tuple) else load_model(aligner)[:2]


def cut_words(utterances: Iterable[Tuple[str, str, str]], words: Iterable[str],
              aligner: str | Path | tuple = ALIGNER, limit: int | None = None, per_key_word: int = 3,
              min_score: float = MIN_SCORE, seed: int = 0, desc: str = "word cuts") -> Iterator[WordCut]:
    """Cuts of ``words`` from ``utterances`` ((audio path, transcript, speaker key) each),
    taken in a seeded shuffled order, at most ``limit`` in all and ``per_key_word`` per
    (key, word). A file that cannot be read or aligned is reported (logged) and skipped."""
    from asr.align import AlignmentError, align_words
    from asr.audio import AudioError, load_audio
    from asr.text import normalize_text

    wanted = set(words)
    todo = [u for u in utterances if wanted & set(normalize_text(u[1]).split())]
    random.Random(seed).shuffle(todo)
    model, tokenizer = load_aligner(aligner)
    sample_rate = model.cfg.features.sample_rate
    taken: Counter = Counter()
    stats: Counter = Counter()
    made = 0
    for path, text, key in tqdm(todo, desc=desc, mininterval=5.0):
        if limit is not None and made >= limit:
            break
        if all(taken[(key, w)] >= per_key_word for w in wanted & set(normalize_text(text).split())):
            continue
        try:
            wave = load_audio(path, sample_rate)
            spans = align_words(model, tokenizer, wave, text)
        except (AudioError, AlignmentError) as exc:
            log.warning("%s: skipping %s: %s", desc, path, exc)
            stats["skipped_files"] += 1
            continue
        for k, span in enumerate(spans):
            if span.word not in wanted or taken[(key, span.word)] >= per_key_word:
                continue
            if limit is not None and made >= limit:
                break
            if span.score < min_score:
                stats["low_score"] += 1
                continue
            t0, t1 = cut_bounds(spans, k, wave.numel() / sample_rate)
            a, b = int(t0 * sample_rate), int(t1 * sample_rate)
            if b - a < int(MIN_CUT_S * sample_rate):
                stats["too_short"] += 1
                continue
            taken[(key, span.word)] += 1
            made += 1
            yield WordCut(path, key, span.word, a, b, span.score, isolate(wave, a, b, sample_rate))
    per_word = Counter()
    for (_, w), c in taken.items():
        per_word[w] += c
    log.info("%s: %d cuts %s, %d speakers; %s", desc, made, dict(per_word), len({k for k, _ in taken}), dict(stats))
