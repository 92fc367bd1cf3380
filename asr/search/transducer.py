"""Transducer searches: batched greedy and alignment-length synchronous beam search.

Both are plain functions over a transducer head (anything with the methods of
:class:`TransducerModel`, e.g. ``asr.heads.transducer.TransducerHead``), registered in
``SEARCHES`` as ``"transducer_greedy"`` and ``"transducer_beam"``, returning one
:class:`~asr.search.types.SearchResult` per utterance.

Shape letters: ``B`` batch, ``T`` frames, ``N`` hypotheses, ``V`` vocabulary including blank,
``De``/``Dp``/``Dj`` encoder / prediction / joiner widths.

Shallow fusion: ``lm_score(prev_tokens: tuple[int, ...], token: int) -> float`` returns
``log P_lm(token | prev_tokens)``; the beam search adds ``lm_weight * lm_score(...)`` (plus
``length_bonus``) for every emitted label. See :class:`asr.lm.NgramLM`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import torch
from torch import Tensor

from asr.registry import SEARCHES
from asr.search.types import Hypothesis, SearchResult

LMScore = Callable[[Tuple[int, ...], int], float]

__all__ = ["TransducerModel", "LMScore", "transducer_greedy", "transducer_beam",
           "TransducerGreedyState", "transducer_greedy_init", "transducer_greedy_advance"]


class TransducerModel(Protocol):
    """What the searches need from a transducer head."""

    blank: int

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None) -> Tuple[Tensor, ...]:
        """Prediction state before any label; tuple of batch-first tensors."""

    def step(self, tokens: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """tokens ``(N,)`` -> dec ``(N, Dp)`` and the new state."""

    def project_enc(self, enc: Tensor) -> Tensor:
        """``(..., De) -> (..., Dj)``."""

    def project_dec(self, dec: Tensor) -> Tensor:
        """``(..., Dp) -> (..., Dj)``."""

    def join_projected(self, enc_proj: Tensor, dec_proj: Tensor) -> Tensor:
        """``(..., Dj)`` x ``(..., Dj)`` -> logits ``(..., V)``."""


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _select(state: Tuple[Tensor, ...], index: Tensor) -> Tuple[Tensor, ...]:
    return tuple(s[index] for s in state)


def _where(mask: Tensor, new: Tuple[Tensor, ...], old: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    out = []
    for n, o in zip(new, old):
        m = mask.reshape((-1,) + (1,) * (n.dim() - 1))
        out.append(torch.where(m, n, o))
    return tuple(out)


@dataclass
class TransducerGreedyState:
    """Greedy search carried across chunks for one utterance: the prediction network's
    state after the labels so far (batch 1) and its projected output ``dec_p (1, Dj)``,
    the labels, their frames, the alignment's log-probability and the frames read."""

    pred_state: Tuple[Tensor, ...]
    dec_p: Tensor
    tokens: List[int] = field(default_factory=list)
    times: List[int] = field(default_factory=list)
    score: float = 0.0
    frames: int = 0


@torch.no_grad()
def transducer_greedy_init(head: TransducerModel, batch_size: int,
                           device: Optional[torch.device] = None) -> List[TransducerGreedyState]:
    """``batch_size`` fresh states: the prediction network has read the start blank."""
    state = head.initial_state(batch_size, device)
    start = torch.full((batch_size,), head.blank, dtype=torch.long, device=device)
    dec, state = head.step(start, state)
    dec_p = head.project_dec(dec)
    return [TransducerGreedyState(_select(state, torch.tensor([b], device=device)), dec_p[b:b + 1])
            for b in range(batch_size)]


@torch.no_grad()
def transducer_greedy_advance(head: TransducerModel, enc: Tensor, enc_lens: Tensor,
                              states: List[TransducerGreedyState],
                              max_symbols_per_frame: int = 3) -> List[TransducerGreedyState]:
    """Run greedy search over the next frames of B utterances, one batch.

    enc: ``(B, T, De)`` new encoder frames; enc_lens: ``(B,)`` valid ones; states: one per
    row. Returns the new states (the given ones are not changed).
    """
    B, T, _ = enc.shape
    device = enc.device
    blank = head.blank
    enc_p = head.project_enc(enc)  # (B, T, Dj)
    lens = enc_lens.to(device).long()
    state = tuple(torch.cat(parts, 0) for parts in zip(*(st.pred_state for st in states)))
    dec_p = torch.cat([st.dec_p for st in states], 0)  # (B, Dj)
    tokens = [list(st.tokens) for st in states]
    times = [list(st.times) for st in states]
    offsets = [st.frames for st in states]
    scores = torch.zeros(B, dtype=torch.float64, device=device)
    for t in range(T):
        in_frame = t < lens  # rows still reading frame t
        emitted = torch.zeros(B, dtype=torch.long, device=device)
        while bool(in_frame.any()):
            logp = head.join_projected(enc_p[:, t], dec_p).log_softmax(dim=-1)  # (B, V)
            best_lp, best = logp.max(dim=-1)
            emit = in_frame & (best != blank) & (emitted < max_symbols_per_frame)
            leave = in_frame & ~emit
            scores += torch.where(emit, best_lp, torch.where(leave, logp[:, blank], 0.0)).double()
            in_frame = emit
            if not bool(emit.any()):
                break
            emitted += emit.long()
            for b in emit.nonzero().flatten().tolist():
                tokens[b].append(int(best[b]))
                times[b].append(offsets[b] + t)
            new_dec, new_state = head.step(torch.where(emit, best, blank), state)
            state = _where(emit, new_state, state)
            dec_p = torch.where(emit[:, None], head.project_dec(new_dec), dec_p)
    return [TransducerGreedyState(tuple(s[b:b + 1] for s in state), dec_p[b:b + 1], tokens[b],
                                  times[b], states[b].score + float(scores[b]),
                                  states[b].frames + int(lens[b]))
            for b in range(B)]


@SEARCHES.register("transducer_greedy")
@torch.no_grad()
def transducer_greedy(
    head: TransducerModel,
    enc: Tensor,
    enc_lens: Tensor,
    beam: int = 1,
    nbest: int = 1,
    max_symbols_per_frame: int = 3,
    **_unused,
) -> List[SearchResult]:
    """Batched greedy search: at each node take the most likely symbol.

    At most ``max_symbols_per_frame`` labels per frame; when the limit is hit the search
    moves to the next frame as if blank was chosen (and adds blank's log-probability), so
    the score is always the log-probability of one complete alignment.

    Args:
        head: transducer head (see :class:`TransducerModel`).
        enc: ``(B, T, De)`` encoder output.
        enc_lens: ``(B,)`` frames per utterance.
        beam: ignored (greedy).
        nbest: ignored; one hypothesis per utterance.
        max_symbols_per_frame: label limit per frame (>= 1).

    Returns:
        one :class:`SearchResult` with a single :class:`Hypothesis` per utterance.
    """
    states = transducer_greedy_init(head, enc.shape[0], enc.device)
    states = transducer_greedy_advance(head, enc, enc_lens, states, max_symbols_per_frame)
    return [SearchResult(nbest=[Hypothesis(tokens=st.tokens, score=st.score, times=st.times)])
            for st in states]


@dataclass
class _Hyp:
    tokens: Tuple[int, ...]
    score: float  # log-sum over merged alignments (+ LM and length terms)
    best: float  # best single alignment's score among the merged ones (chooses times)
    times: Tuple[int, ...]
    t: int
    dec_p: Tensor  # (Dj,)
    state: Tuple[Tensor, ...]  # batch-first tensors with batch 1


@dataclass
class _Candidate:
    parent: _Hyp
    token: Optional[int]  # None: blank
    score: float
    best: float
    merged: List[float] = field(default_factory=list)


@SEARCHES.register("transducer_beam")
@torch.no_grad()
def transducer_beam(
    head: TransducerModel,
    enc: Tensor,
    enc_lens: Tensor,
    beam: int = 4,
    nbest: int = 1,
    lm_score: Optional[LMScore] = None,
    lm_weight: float = 0.0,
    length_bonus: float = 0.0,
    max_output_length: Optional[int] = None,
    lm: Optional[LMScore] = None,
    **_unused,
) -> List[SearchResult]:
    """Alignment-length synchronous beam search (Saon et al., ICASSP 2020).

    Hypotheses advance together along the alignment length ``i = t + u`` (frames read plus
    labels emitted), so every label sequence in the beam sits at one frame and hypotheses
    with equal labels are merged exactly (their probabilities added). With a beam large
    enough to hold every prefix the N-best scores are the exact ``log P(y | x)`` (plus LM
    terms); tests check this against exhaustive enumeration.

    Args:
        head: transducer head (see :class:`TransducerModel`).
        enc: ``(B, T, De)`` encoder output.
        enc_lens: ``(B,)`` frames per utterance.
        beam: hypotheses kept per step, and labels tried per hypothesis.
        nbest: hypotheses returned per utterance, best first.
        lm_score: optional ``lm_score(prev_tokens, token) -> log-prob`` for shallow fusion.
        lm_weight: weight of ``lm_score``.
        length_bonus: added per emitted label (counters the LM's bias to short outputs).
        max_output_length: label limit per utterance (default ``3 * T_b``).
        lm: alias of ``lm_score`` (the keyword the CTC prefix beam search uses).

    Returns:
        one :class:`SearchResult` per utterance; each hypothesis has its score and the frame
        of every label (of the best alignment among those merged into it).
    """
    if lm_score is None:
        lm_score = lm
    enc_p = head.project_enc(enc)  # (B, T, Dj)
    lens = enc_lens.long().tolist()
    results = []
    for b in range(enc.shape[0]):
        search = TransducerBeamSearch(head, beam, lm_score, lm_weight, length_bonus,
                                      max_output_length)
        search.advance(enc_p[b, : lens[b]])
        results.append(search.result(nbest, final=True))
    return results


class TransducerBeamSearch:
    """ALSD over one utterance whose projected encoder frames arrive in chunks:
    ``advance(enc_p (T, Dj))`` with each chunk, ``result(nbest, final)`` at any time.

    A step needs the frame of every active hypothesis and must know whether that frame is
    the last, so it waits until the frame after each active hypothesis's has arrived (or
    the utterance ended); the default label limit ``3 T`` waits likewise. The steps are
    then those of the offline search, which is one ``advance`` and a final ``result``.
    """

    def __init__(self, head: TransducerModel, beam: int = 4, lm_score: Optional[LMScore] = None,
                 lm_weight: float = 0.0, length_bonus: float = 0.0,
                 max_output_length: Optional[int] = None) -> None:
        self.head, self.beam = head, beam
        self.lm_score, self.lm_weight, self.length_bonus = lm_score, lm_weight, length_bonus
        self.max_output_length = max_output_length
        device = head.output.weight.device if hasattr(head, "output") else None
        state = head.initial_state(1, device)
        dec, state = head.step(torch.full((1,), head.blank, dtype=torch.long, device=device), state)
        dec_p = head.project_dec(dec)[0]
        self.active = [_Hyp(tokens=(), score=0.0, best=0.0, times=(), t=0, dec_p=dec_p, state=state)]
        self.final: Dict[Tuple[int, ...], _Hyp] = {}
        self.enc_p = dec_p.new_zeros(0, dec_p.shape[-1])  # (T, Dj) frames so far
        self.steps = 0
        self.ended = False

    @property
    def frames(self) -> int:
        return self.enc_p.shape[0]

    @torch.no_grad()
    def advance(self, enc_p: Tensor) -> None:
        """enc_p: (T', Dj) the next projected encoder frames."""
        self.enc_p = torch.cat([self.enc_p, enc_p.detach()])
        self._run()

    @torch.no_grad()
    def result(self, nbest: int = 1, final: bool = False) -> SearchResult:
        """Best first. ``final``: the utterance ends at the frames given so far (no more
        may follow); otherwise the active hypotheses, a partial result."""
        if final and not self.ended:
            self.ended = True
            self._run()
            self._end_of_sentence()
        pool = list(self.final.values()) if self.ended else self.active
        hyps = sorted(pool, key=lambda h: h.score, reverse=True)[:nbest]
        return SearchResult([Hypothesis(list(h.tokens), h.score, list(h.times)) for h in hyps]
                            or [Hypothesis(tokens=[], score=0.0, times=[])])

    def _end_of_sentence(self) -> None:
        # an LM that scores the end of the sentence (NgramLM with end_of_sentence, WordLM)
        # gets its last say
        end = getattr(self.lm_score, "final", None)
        if end is not None and self.lm_weight != 0.0:
            ended = [h.score + self.lm_weight * end(h.tokens) for h in self.final.values()]
            if any(s > -math.inf for s in ended):  # else keep the unfinished ones
                for h, s in zip(self.final.values(), ended):
                    h.score = s

    def _run(self) -> None:
        T = self.frames
        if T == 0:
            if self.ended:
                self.active = []
            return
        u_max = self.max_output_length if self.max_output_length is not None else 3 * T
        while self.active and (not self.ended or self.steps < T + u_max):
            if not self.ended:
                if max(h.t for h in self.active) + 1 >= T:
                    return  # is the next hypothesis's frame the last? wait and see
                if self.max_output_length is None and max(len(h.tokens) for h in self.active) >= u_max:
                    return  # the limit 3 T may still grow
            self._step(T, u_max)
            self.steps += 1
            if self.ended:
                self._drop_hopeless()
        if self.ended:
            self.active = []

    def _drop_hopeless(self) -> None:
        """Once the utterance has ended, drop the hypotheses scoring below the ``beam``
        best ended ones. A hypothesis's alignments only lose probability as it grows
        (when no LM or positive length bonus can raise a score), so it cannot overtake
        them; without this the beam went on adding labels at the last frames up to the
        label limit (3 T), ending ``beam`` hypotheses per step: minutes and gigabytes on a
        one-minute recording."""
        if self.lm_score is not None or self.length_bonus > 0 or len(self.final) < self.beam:
            return
        worst_kept = sorted((h.score for h in self.final.values()), reverse=True)[self.beam - 1]
        self.active = [h for h in self.active if h.score > worst_kept]

    def _step(self, T: int, u_max: int) -> None:
        """One ALSD step of every active hypothesis."""
        head, beam, enc_p = self.head, self.beam, self.enc_p
        lm_score, lm_weight, length_bonus = self.lm_score, self.lm_weight, self.length_bonus
        active, final = self.active, self.final
        device = enc_p.device
        blank = head.blank
        frames = torch.tensor([h.t for h in active], device=device)
        logits = head.join_projected(enc_p[frames], torch.stack([h.dec_p for h in active]))
        logp = logits.log_softmax(dim=-1).double().cpu()  # (N, V)
        V = logp.shape[1]
        k = min(beam, V - 1)
        nonblank = logp.clone()
        nonblank[:, blank] = -math.inf
        top_lp, top_tok = nonblank.topk(k, dim=-1)
        cands: Dict[Tuple[int, ...], _Candidate] = {}

        def offer(tokens: Tuple[int, ...], cand: _Candidate) -> None:
            old = cands.get(tokens)
            if old is None:
                cands[tokens] = cand
                return
            score = _logaddexp(old.score, cand.score)
            if cand.best > old.best:
                cand.score = score
                cands[tokens] = cand
            else:
                old.score = score

        for n, h in enumerate(active):
            s = h.score + float(logp[n, blank])
            best = h.best + float(logp[n, blank])
            if h.t + 1 == T:
                done = final.get(h.tokens)
                if done is None:
                    final[h.tokens] = _Hyp(h.tokens, s, best, h.times, T, h.dec_p, h.state)
                else:  # unreachable in ALSD (a label sequence ends at one step) but harmless
                    done.score = _logaddexp(done.score, s)
            else:
                offer(h.tokens, _Candidate(parent=h, token=None, score=s, best=best))
            if len(h.tokens) >= u_max:
                continue
            for lp, tok in zip(top_lp[n].tolist(), top_tok[n].tolist()):
                if lp == -math.inf:
                    continue
                extra = length_bonus
                if lm_score is not None and lm_weight != 0.0:
                    extra += lm_weight * float(lm_score(h.tokens, tok))
                    if extra == -math.inf:  # the LM forbids it (a word not in its lexicon)
                        continue
                offer(h.tokens + (tok,), _Candidate(parent=h, token=tok, score=h.score + lp + extra, best=h.best + lp + extra))

        kept = sorted(cands.items(), key=lambda kv: kv[1].score, reverse=True)[:beam]
        active = []
        grow = [(tokens, c) for tokens, c in kept if c.token is not None]
        for tokens, c in kept:
            if c.token is None:
                p = c.parent
                active.append(_Hyp(tokens, c.score, c.best, p.times, p.t + 1, p.dec_p, p.state))
        if grow:
            states = tuple(torch.cat(parts) for parts in zip(*[c.parent.state for _, c in grow]))
            toks = torch.tensor([c.token for _, c in grow], dtype=torch.long, device=device)
            dec, new_state = head.step(toks, states)
            dec_p = head.project_dec(dec)
            for i, (tokens, c) in enumerate(grow):
                p = c.parent
                active.append(
                    _Hyp(tokens, c.score, c.best, p.times + (p.t,), p.t, dec_p[i], _select(new_state, torch.tensor([i])))
                )
        self.active = active
