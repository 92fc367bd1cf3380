"""Attention decoder searches: batched greedy and label-synchronous beam search.

Plain functions over an attention head (anything with the methods of
:class:`AttentionModel`, e.g. ``asr.heads.attention.AttentionHead``), registered in
``SEARCHES`` as ``"attention_greedy"`` and ``"attention_beam"``, each returning one
:class:`~asr.search.types.SearchResult` per utterance. A token's time is the frame the
decoder attended to most when it emitted it.

The beam search can add, per label, ``lm_weight * lm_score(prefix, token)`` plus
``length_bonus`` (shallow fusion with :class:`asr.lm.NgramLM` or any scorer of that
interface, whose ``final(prefix)`` scores the end), and CTC prefix scores of a CTC head
on the same encoder (``ctc_log_probs``, ``ctc_weight``: one-pass joint CTC/attention
decoding, Watanabe et al. 2017).

Shape letters: ``B`` batch, ``T`` frames, ``V`` vocabulary, ``N`` hypotheses, ``De``
encoder width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Protocol, Tuple

import torch
from torch import Tensor

from asr.registry import SEARCHES
from asr.search.ctc_prefix_score import CTCPrefixScorer
from asr.search.types import Hypothesis, SearchResult

LMScore = Callable[[Tuple[int, ...], int], float]

__all__ = ["AttentionModel", "attention_greedy", "attention_beam", "end_detected",
           "BEAM_ONLY_OPTIONS", "refuse_beam_only_options"]

# Decoding options that only attention_beam reads; every other search would take them
# (searches swallow unknown keywords) and ignore them.
BEAM_ONLY_OPTIONS = ("ctc_weight", "length_norm", "end_window", "end_margin")


def refuse_beam_only_options(method: Optional[str], options: Mapping[str, object]) -> None:
    """A ValueError naming each of :data:`BEAM_ONLY_OPTIONS` set (not None) in
    ``options`` when the search ``method`` is not ``attention_beam``, which would ignore it."""
    given = [k for k in BEAM_ONLY_OPTIONS if options.get(k) is not None]
    if given and method != "attention_beam":
        named = ", ".join(f"{k} (--{k.replace('_', '-')})" for k in given)
        raise ValueError(f"{named}: only the attention_beam search uses it, not {method!r} "
                         "(give --search attention_beam with an attention head, or drop it)")


class AttentionModel(Protocol):
    """What the searches need from an attention head."""

    eos: int

    def memory(self, enc: Tensor, enc_lens: Tensor):
        """enc ``(B, T, De)``, enc_lens ``(B,)`` -> memory with ``select(index)``."""

    def initial_state(self, memory) -> Tuple[Tensor, ...]:
        """Decoder state before the start symbol; tuple of batch-first tensors."""

    def step(self, tokens: Tensor, state: Tuple[Tensor, ...], memory
             ) -> Tuple[Tensor, Tensor, Tuple[Tensor, ...]]:
        """tokens ``(N,)`` -> logits ``(N, V)``, attention weights ``(N, T)``, new state."""

    def max_length(self, frames: int) -> int:
        """Label limit for an utterance of ``frames`` frames."""


def _select(state: Tuple[Tensor, ...], index: Tensor) -> Tuple[Tensor, ...]:
    return tuple(s[index] for s in state)


@SEARCHES.register("attention_greedy")
@torch.no_grad()
def attention_greedy(head: AttentionModel, enc: Tensor, enc_lens: Tensor, **_unused
                     ) -> List[SearchResult]:
    """Batched greedy search: feed back the most likely token until ``eos``.

    An utterance that reaches ``head.max_length(T)`` labels gets ``eos`` forced (its
    log-probability is added), as the beam search does.

    Args:
        head: attention head (see :class:`AttentionModel`).
        enc: ``(B, T, De)`` encoder output.
        enc_lens: ``(B,)`` frames per utterance.

    Returns:
        one :class:`SearchResult` with a single hypothesis per utterance, its score
        ``log P(tokens, eos | x)``.
    """
    B = enc.shape[0]
    memory = head.memory(enc, enc_lens)
    state = head.initial_state(memory)
    limits = [head.max_length(int(n)) for n in enc_lens.tolist()]
    feed = torch.full((B,), head.eos, dtype=torch.long, device=enc.device)
    tokens: List[List[int]] = [[] for _ in range(B)]
    times: List[List[int]] = [[] for _ in range(B)]
    scores = [0.0] * B
    alive = [True] * B
    while any(alive):
        logits, weights, state = head.step(feed, state, memory)
        logp = logits.log_softmax(-1).double().cpu()
        best = logp.argmax(-1).tolist()
        frames = weights.argmax(-1).tolist()
        for b in range(B):
            if not alive[b]:
                continue
            tok = head.eos if len(tokens[b]) >= limits[b] else best[b]
            scores[b] += float(logp[b, tok])
            if tok == head.eos:
                alive[b] = False
            else:
                tokens[b].append(tok)
                times[b].append(frames[b])
        feed = torch.tensor(best, dtype=torch.long, device=enc.device)
    return [SearchResult([Hypothesis(tokens[b], scores[b], times[b])]) for b in range(B)]


@dataclass
class _Hyp:
    tokens: Tuple[int, ...]
    score: float  # fused log-score (attention, CTC, LM, bonus), not length normalised
    times: Tuple[int, ...]
    row: int  # this hypothesis's row in the batched decoder state
    ctc_psi: float = 0.0  # CTC prefix log-score of tokens
    ctc_row: int = 0  # row of its CTC state


def end_detected(ended: List[_Hyp], length: int, window: int = 3, margin: float = -10.0) -> bool:
    """ESPnet's end detection: for each of the last ``window`` lengths, the best hypothesis
    that ended with that many labels is more than ``-margin`` below the best ended one;
    longer ones will not do better."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    count = 0
    for m in range(window):
        same = [h.score for h in ended if len(h.tokens) == length - m]
        if same and max(same) - best < margin:
            count += 1
    return count == window


@SEARCHES.register("attention_beam")
@torch.no_grad()
def attention_beam(head: AttentionModel, enc: Tensor, enc_lens: Tensor, beam: int = 4,
                   nbest: int = 1, length_norm: float = 1.0, lm_score: Optional[LMScore] = None,
                   lm_weight: float = 0.0, length_bonus: float = 0.0,
                   ctc_log_probs: Optional[Tensor] = None, ctc_weight: float = 0.0,
                   end_window: int = 3, end_margin: float = -10.0,
                   lm: Optional[LMScore] = None, **_unused) -> List[SearchResult]:
    """Label-synchronous beam search, one utterance at a time (its hypotheses batched).

    Each step extends every running hypothesis by its best labels (``beam`` of them by
    attention score; ``ceil(1.5 beam)`` when CTC or an LM re-weighs them), keeps the best
    ``beam`` extensions, and moves those ending in ``eos`` to the ended list. It stops when
    no hypothesis runs, at the label limit (``eos`` is forced there), or when
    :func:`end_detected` says longer hypotheses score far below the best ended one.

    Score of a hypothesis ``y``: ``(1 - ctc_weight) log P_att(y, eos | x) + ctc_weight
    log P_ctc(y | x) + lm_weight log P_lm(y, end) + length_bonus |y|``; the ended ones
    are ranked by that score over ``(|y| + 1) ** length_norm`` (0: no normalisation), and
    the returned scores are these ranking scores, each hypothesis's divisor in its ``norm``
    (an N-best rescoring divides its log-prob by it as well: ``asr.search.rescore``).

    Args:
        head: attention head (see :class:`AttentionModel`).
        enc: ``(B, T, De)`` encoder output.
        enc_lens: ``(B,)`` frames per utterance.
        beam: hypotheses kept per step.
        nbest: hypotheses returned per utterance, best first.
        length_norm: exponent of the length normalisation (>= 0).
        lm_score: optional ``lm_score(prefix, token) -> log-prob`` (shallow fusion).
        lm_weight, length_bonus: its weight, and a bonus per label.
        ctc_log_probs: ``(B, T, V)`` log-probabilities of a CTC head on the same encoder
            output (blank = ``head.eos`` = 0), for joint decoding.
        ctc_weight: weight of the CTC prefix scores (needs ``ctc_log_probs``).
        end_window, end_margin: end detection (see :func:`end_detected`; a window of at
            least 1 label length, a margin <= 0).
        lm: alias of ``lm_score`` (the keyword the CTC prefix beam search uses).

    Returns:
        one :class:`SearchResult` per utterance.
    """
    if lm_score is None:
        lm_score = lm
    use_lm = lm_score is not None and lm_weight != 0.0
    if ctc_weight and ctc_log_probs is None:
        raise ValueError("ctc_weight needs ctc_log_probs (a CTC head's output)")
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must lie in [0, 1], got {ctc_weight}")
    if length_norm < 0:
        raise ValueError(f"length_norm must be >= 0 (0: no normalisation), got {length_norm}")
    if end_window < 1:
        raise ValueError(f"end_window must be >= 1 (label lengths), got {end_window}")
    if end_margin > 0:
        raise ValueError(f"end_margin must be <= 0 (a log-score below the best ended "
                         f"hypothesis), got {end_margin}")
    att_weight = 1.0 - ctc_weight
    lm_end = getattr(lm_score, "final", None) if use_lm else None
    eos = head.eos
    memory = head.memory(enc, enc_lens)
    results = []
    for b, frames in enumerate(enc_lens.tolist()):
        limit = head.max_length(int(frames))
        mem_b = memory.select(torch.tensor([b], device=enc.device))
        state = head.initial_state(mem_b)
        ctc = (CTCPrefixScorer(ctc_log_probs[b, :frames], blank=eos) if ctc_weight else None)
        ctc_states = ctc.initial_state()[None] if ctc else None  # (N, T, 2)
        running = [_Hyp((), 0.0, (), 0)]
        ended: List[_Hyp] = []
        for length in range(limit + 1):
            feed = torch.tensor([h.tokens[-1] if h.tokens else eos for h in running],
                                dtype=torch.long, device=enc.device)
            rows = torch.tensor([h.row for h in running], device=enc.device)
            mem_n = mem_b.select(torch.zeros(len(running), dtype=torch.long, device=enc.device))
            logits, weights, state = head.step(feed, _select(state, rows), mem_n)
            logp = logits.log_softmax(-1).double().cpu()  # (N, V)
            frames_n = weights.argmax(-1).tolist()
            V = logp.shape[1]
            if length >= limit:  # the label limit: only the end may follow
                cands = torch.full((len(running), 1), eos, dtype=torch.long)
            else:
                k = min(V, math.ceil(1.5 * beam) if (ctc or use_lm) else beam)
                cands = logp.topk(k, dim=-1).indices  # (N, K)
            cand_scores = att_weight * logp.gather(1, cands)  # (N, K)
            psi = new_ctc = None
            if ctc is not None:
                r = ctc_states[[h.ctc_row for h in running]]
                # eos is no CTC label: extend by a stand-in there, replaced by the full score
                labels = torch.where(cands == eos, 1 if eos != 1 else 2, cands)
                last = torch.tensor([h.tokens[-1] if h.tokens else -1 for h in running])
                empty = torch.tensor([not h.tokens for h in running])
                psi, new_ctc = ctc.extend(r, last, empty, labels)
                full = ctc.full_score(r)  # (N,): the prefix ended here
                psi = torch.where(cands == eos, full[:, None], psi)
                prev = torch.tensor([h.ctc_psi for h in running], dtype=torch.float64)
                cand_scores = cand_scores + ctc_weight * (psi - prev[:, None])
            pool = []
            for n, h in enumerate(running):
                for j, tok in enumerate(cands[n].tolist()):
                    s = h.score + float(cand_scores[n, j])
                    if s == -math.inf:
                        continue
                    if tok == eos:
                        if lm_end is not None:
                            s += lm_weight * float(lm_end(h.tokens))
                    else:
                        s += length_bonus
                        if use_lm:
                            s += lm_weight * float(lm_score(h.tokens, tok))
                    if s > -math.inf:
                        pool.append((s, n, j, tok))
            pool.sort(key=lambda c: -c[0])
            running_next, ctc_rows = [], []
            for s, n, j, tok in pool[:beam]:
                h = running[n]
                if tok == eos:
                    ended.append(_Hyp(h.tokens, s, h.times, n))
                    continue
                hyp = _Hyp(h.tokens + (tok,), s, h.times + (frames_n[n],), n)
                if ctc is not None:
                    hyp.ctc_psi, hyp.ctc_row = float(psi[n, j]), len(ctc_rows)
                    ctc_rows.append(new_ctc[n, j])
                running_next.append(hyp)
            running = running_next
            if ctc is not None and ctc_rows:
                ctc_states = torch.stack(ctc_rows)
            if not running or end_detected(ended, length, end_window, end_margin):
                break
        norms = [(len(h.tokens) + 1) ** length_norm for h in ended]
        ranked = sorted(((h.score / z, z, h) for h, z in zip(ended, norms)), key=lambda s: -s[0])
        hyps = [Hypothesis(list(h.tokens), s, list(h.times), norm=z) for s, z, h in ranked[:nbest]]
        results.append(SearchResult(hyps or [Hypothesis([], -math.inf, [])]))
    return results
