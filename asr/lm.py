"""A small token n-gram LM for shallow fusion in beam search.

Interpolated Witten-Bell smoothing (every order mixes with the next lower one, down to an
add-one unigram), over the same token ids the acoustic model emits, so it plugs into
``ctc_prefix_beam`` and ``transducer_beam`` as ``lm(prefix, token) -> log P(token | prefix)``.
For a large word LM use KenLM through pyctcdecode or flashlight; this one is for
domain text (commands, digits) trained in seconds from transcripts.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

BOS = -1  # sentence start, never emitted


class NgramLM:
    def __init__(self, order: int, vocab_size: int) -> None:
        if order < 1:
            raise ValueError("order must be >= 1")
        self.order = order
        self.vocab_size = vocab_size
        # counts[k][context of length k] = Counter(next token)
        self.counts: List[Dict[Tuple[int, ...], Counter]] = [defaultdict(Counter) for _ in range(order)]
        self._memo: Dict[Tuple[Tuple[int, ...], int], float] = {}

    @classmethod
    def train(cls, sequences: Iterable[Sequence[int]], order: int, vocab_size: int) -> "NgramLM":
        """Count n-grams over token-id sequences (each starts after ``BOS`` padding)."""
        lm = cls(order, vocab_size)
        for seq in sequences:
            padded = [BOS] * (order - 1) + list(seq)
            for i in range(order - 1, len(padded)):
                tok = padded[i]
                for k in range(order):
                    lm.counts[k][tuple(padded[i - k:i])][tok] += 1
        return lm

    def _prob(self, context: Tuple[int, ...], token: int) -> float:
        if not context:
            uni = self.counts[0][()]
            return (uni[token] + 1) / (sum(uni.values()) + self.vocab_size)
        lower = self._prob(context[1:], token)
        c = self.counts[len(context)].get(context)
        if not c:
            return lower
        total, types = sum(c.values()), len(c)
        return (c[token] + types * lower) / (total + types)

    def __call__(self, prefix: Tuple[int, ...], token: int) -> float:
        """log P(token | prefix): the LM-fusion interface of the beam searches."""
        k = self.order - 1
        context = tuple(([BOS] * k + list(prefix))[-k:]) if k else ()
        key = (context, token)
        if key not in self._memo:
            self._memo[key] = math.log(self._prob(context, token))
        return self._memo[key]

    def save(self, path: str | Path) -> None:
        data = {"order": self.order, "vocab_size": self.vocab_size,
                "counts": [[[list(ctx), dict(c)] for ctx, c in level.items()] for level in self.counts]}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "NgramLM":
        data = json.loads(Path(path).read_text())
        lm = cls(data["order"], data["vocab_size"])
        for k, level in enumerate(data["counts"]):
            for ctx, c in level:
                lm.counts[k][tuple(ctx)] = Counter({int(t): n for t, n in c.items()})
        return lm
