"""Hotword (context) biasing through the searches' LM-fusion interface.

:class:`ContextBiasing` is a scorer ``bias(prefix, token) -> float`` with ``final(prefix)``,
like :class:`asr.lm.NgramLM`, so it plugs into ``ctc_prefix_beam``, ``transducer_beam``
and ``attention_beam`` as ``lm_score`` (use :func:`with_biasing` to keep an LM as well).

The phrases (token-id sequences) form an Aho-Corasick trie. Every token that advances a
partial match earns ``boost``; when the match fails, the search falls back to the longest
suffix that still matches a phrase's start and the boost of the dropped tokens is taken
back, so only completed phrases keep theirs (icefall's ContextGraph behaves so). In terms
of a potential ``Phi(prefix) = boost * (tokens in completed phrases + depth of the current
partial match)``, a token scores ``Phi(prefix + token) - Phi(prefix)``, and ``final``
takes back the unfinished match at the end of the utterance.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["ContextBiasing", "with_biasing"]


class ContextBiasing:
    """Boost ``boost`` per token of any phrase in ``phrases`` (lists of token ids)."""

    MEMO_LIMIT = 200_000  # prefixes remembered before the cache starts over

    def __init__(self, phrases: Sequence[Sequence[int]], boost: float = 2.0) -> None:
        self.boost = float(boost)
        self.children: List[Dict[int, int]] = [{}]
        self.depth = [0]
        self.end = [False]
        for phrase in phrases:
            node = 0
            for tok in phrase:
                if tok not in self.children[node]:
                    self.children.append({})
                    self.depth.append(self.depth[node] + 1)
                    self.end.append(False)
                    self.children[node][tok] = len(self.children) - 1
                node = self.children[node][tok]
            if node:
                self.end[node] = True
        # fail[n]: the node of the longest proper suffix of n's path that is in the trie;
        # output[n]: depth of the longest phrase ending at n's path end (0: none)
        self.fail = [0] * len(self.children)
        self.output = [self.depth[n] if self.end[n] else 0 for n in range(len(self.children))]
        queue = deque(self.children[0].values())
        while queue:
            node = queue.popleft()
            for tok, child in self.children[node].items():
                f = self.fail[node]
                while f and tok not in self.children[f]:
                    f = self.fail[f]
                self.fail[child] = self.children[f].get(tok, 0)
                self.output[child] = self.output[child] or self.output[self.fail[child]]
                queue.append(child)
        self._memo: Dict[Tuple[int, ...], Tuple[int, int]] = {(): (0, 0)}

    def _state(self, prefix: Tuple[int, ...]) -> Tuple[int, int]:
        """(trie node of the current partial match, tokens in completed phrases)."""
        state = self._memo.get(prefix)
        if state is not None:
            return state
        known = len(prefix) - 1
        while prefix[:known] not in self._memo:  # the longest remembered prefix
            known -= 1
        node, done = self._memo[prefix[:known]]
        if len(self._memo) >= self.MEMO_LIMIT:
            self._memo = {(): (0, 0)}
        for i in range(known, len(prefix)):
            tok = prefix[i]
            while node and tok not in self.children[node]:
                node = self.fail[node]
            node = self.children[node].get(tok, 0)
            if self.output[node]:  # a phrase completed: it keeps its boost, matching restarts
                done += self.output[node]
                node = 0
            self._memo[prefix[: i + 1]] = (node, done)
        return node, done

    def potential(self, prefix: Tuple[int, ...]) -> float:
        node, done = self._state(tuple(prefix))
        return self.boost * (done + self.depth[node])

    def __call__(self, prefix: Tuple[int, ...], token: int) -> float:
        prefix = tuple(prefix)
        return self.potential(prefix + (token,)) - self.potential(prefix)

    def final(self, prefix: Tuple[int, ...]) -> float:
        """Take back the boost of an unfinished match at the end."""
        node, _ = self._state(tuple(prefix))
        return -self.boost * self.depth[node]


class _Biased:
    """``lm_weight * lm + bias`` as one scorer (used with weight 1)."""

    def __init__(self, lm, lm_weight: float, bias: ContextBiasing) -> None:
        self.lm, self.lm_weight, self.bias = lm, lm_weight, bias

    def __call__(self, prefix: Tuple[int, ...], token: int) -> float:
        lm = self.lm_weight * self.lm(prefix, token) if self.lm is not None and self.lm_weight else 0.0
        return lm + self.bias(prefix, token)

    def final(self, prefix: Tuple[int, ...]) -> float:
        end = getattr(self.lm, "final", None)
        lm = self.lm_weight * end(prefix) if end is not None and self.lm_weight else 0.0
        return lm + self.bias.final(prefix)


def with_biasing(options: dict, phrases: Sequence[Sequence[int]], boost: float = 2.0) -> dict:
    """Search options with hotword biasing added to any LM fusion they already have:
    ``lm_score`` becomes ``lm_weight * lm + bias`` and ``lm_weight`` 1. No phrases: the
    options unchanged."""
    phrases = [list(p) for p in phrases if len(p)]
    if not phrases:
        return dict(options)
    lm: Optional[object] = options.get("lm_score", options.get("lm"))
    out = {k: v for k, v in options.items() if k != "lm"}
    out.update(lm_score=_Biased(lm, options.get("lm_weight", 0.0), ContextBiasing(phrases, boost)),
               lm_weight=1.0)
    return out
