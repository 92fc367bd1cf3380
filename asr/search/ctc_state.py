"""CTC search state carried across chunks, without torch (the onnxruntime runtime in
``export.asr_runtime`` shares it): the greedy path so far and the prefix beam. Log-
probabilities come in as anything with ``shape`` and ``tolist()`` (torch or numpy)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from asr.search.types import Hypothesis, SearchResult

NEG_INF = float("-inf")

# An LM scorer for shallow fusion: log P(token | previous tokens).
LMScore = Callable[[Tuple[int, ...], int], float]


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


@dataclass
class CTCGreedyState:
    """Greedy search carried across chunks for one utterance: tokens and their first
    frames so far, the best path's log-probability, the previous frame's best token (a
    repeat across a chunk boundary is merged) and the frames read."""

    tokens: List[int] = field(default_factory=list)
    times: List[int] = field(default_factory=list)
    score: float = 0.0
    last: int = 0  # blank before the first frame
    frames: int = 0

    def extend(self, best: Sequence[int], score: float, blank: int = 0) -> None:
        """Read the next frames' best tokens ``best`` (their log-probabilities summing to
        ``score``): merge repeats, drop blanks. Shared by the torch and numpy searches."""
        for t, tok in enumerate(best):
            if tok != blank and tok != self.last:
                self.tokens.append(tok)
                self.times.append(self.frames + t)
            self.last = tok
        self.score += score
        self.frames += len(best)


class PrefixBeam:
    """CTC prefix beam search over one utterance whose frames arrive in chunks: ``advance``
    with each chunk's log-probabilities, ``result`` at any time (``final``: the LM scores
    the end of the sentence). Offline search is one ``advance`` over all frames."""

    def __init__(self, beam: int = 8, blank: int = 0, token_prune: Optional[int] = None,
                 lm: Optional[LMScore] = None, lm_weight: float = 0.0,
                 length_bonus: float = 0.0, token_min_logp: Optional[float] = None,
                 beam_prune_logp: Optional[float] = None) -> None:
        """``token_prune``: try only the top-k tokens of a frame; ``token_min_logp``: only
        those whose log-probability is at least this (the frame's best token always);
        ``beam_prune_logp``: after a frame, drop the prefixes scoring more than this below
        the best one. The blank is always tried. None: no such pruning (exact within the
        beam)."""
        self.beam, self.blank, self.token_prune = beam, blank, token_prune
        self.token_min_logp, self.beam_prune_logp = token_min_logp, beam_prune_logp
        self.lm, self.lm_weight, self.length_bonus = lm, lm_weight, length_bonus
        # prefix -> [log P ending in blank, log P ending in non-blank]; plus the fused extra
        # score (LM and bonus, which depends only on the prefix)
        self.beams: Dict[Tuple[int, ...], List[float]] = {(): [0.0, NEG_INF]}
        self.extra: Dict[Tuple[int, ...], float] = {(): 0.0}
        # A token's time is the frame of its most probable emission seen so far.
        self.times: Dict[Tuple[int, ...], Tuple[int, ...]] = {(): ()}
        self.emit_best: Dict[Tuple[int, ...], float] = {}
        self.frames = 0

    def advance(self, lp: torch.Tensor) -> None:
        """lp: (T, V) log-probabilities of the next T frames (torch or numpy)."""
        rows = lp.tolist()  # float32 -> Python floats, exactly
        for t, row in enumerate(rows, start=self.frames):
            self._frame(row, t)
        self.frames += len(rows)

    def _frame(self, row: List[float], t: int) -> None:
        """Read frame ``t``, its (V,) log-probabilities ``row``: extend the beam, keep its
        ``beam`` best prefixes and forget every other one (scores, fused extra, times, best
        emissions), so memory stays O(beam) per frame, not O(frames x beam x V)."""
        blank, token_prune, V = self.blank, self.token_prune, len(row)
        lm, lm_weight, length_bonus = self.lm, self.lm_weight, self.length_bonus
        beams, extra, times, emit_best = self.beams, self.extra, self.times, self.emit_best
        min_logp, beam_prune = self.token_min_logp, self.beam_prune_logp
        if token_prune and token_prune < V:
            cand = sorted(range(V), key=row.__getitem__, reverse=True)[:token_prune]
        else:
            cand = range(V)
        if min_logp is not None:
            floor = min(min_logp, max(row))  # the frame's best token stays
            cand = [tok for tok in cand if row[tok] >= floor]
        if token_prune or min_logp is not None:
            cand = list(cand)
            if blank not in cand:
                cand.append(blank)
        nxt: Dict[Tuple[int, ...], List[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        # times set at frame t take effect after it: an extension at t follows its prefix's
        # alignments up to t - 1, never a token that the prefix itself re-timed to t
        retimed: Dict[Tuple[int, ...], Tuple[int, ...]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            last = prefix[-1] if prefix else None
            for tok in cand:
                p = row[tok]
                if tok == blank:
                    e = nxt[prefix]
                    e[0] = _logaddexp(e[0], total + p)
                    continue
                if tok == last:
                    # repeat without blank in between stays on the same prefix
                    e = nxt[prefix]
                    e[1] = _logaddexp(e[1], pnb + p)
                    new_p = pb + p
                else:
                    new_p = total + p
                new = prefix + (tok,)
                if new not in extra:
                    bonus = length_bonus
                    if lm is not None and lm_weight != 0.0:
                        bonus += lm_weight * lm(prefix, tok)
                    extra[new] = extra[prefix] + bonus
                if extra[new] == NEG_INF or new_p == NEG_INF:
                    continue  # the LM forbids it (a word not in its lexicon), or no path does
                if new_p > emit_best.get(new, NEG_INF):
                    emit_best[new] = new_p
                    retimed[new] = times[prefix] + (t,)
                e = nxt[new]
                e[1] = _logaddexp(e[1], new_p)
        times.update(retimed)
        scored = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]) + extra[kv[0]],
                        reverse=True)[: self.beam]
        if beam_prune is not None and scored:
            best = _logaddexp(*scored[0][1]) + extra[scored[0][0]]
            scored = [kv for kv in scored if _logaddexp(*kv[1]) + extra[kv[0]] >= best - beam_prune]
        self.beams = dict(scored)
        # forget every prefix that left the beam
        self.extra = {p: extra[p] for p in self.beams}
        self.times = {p: times[p] for p in self.beams}
        self.emit_best = {p: emit_best[p] for p in self.beams if p in emit_best}

    def result(self, nbest: int = 1, final: bool = False) -> SearchResult:
        """The ``nbest`` best prefixes so far; ``final``: the utterance ended here."""
        extra, lm, lm_weight = self.extra, self.lm, self.lm_weight
        # an LM that scores the end of the sentence (NgramLM with end_of_sentence, WordLM)
        # gets its last say
        end = getattr(lm, "final", None)
        if final and end is not None and lm_weight != 0.0:
            ended = {p: extra[p] + lm_weight * end(p) for p in self.beams}
            if any(v > NEG_INF for v in ended.values()):  # else keep the unfinished ones
                extra = ended
        ranked = sorted(self.beams.items(), key=lambda kv: _logaddexp(*kv[1]) + extra[kv[0]],
                        reverse=True)
        hyps = [Hypothesis(list(p), _logaddexp(*s) + extra[p], list(self.times[p]))
                for p, s in ranked[:nbest]]
        return SearchResult(hyps)
