"""Second-pass rescoring of N-best lists: by an attention decoder, or by a neural LM.

A CTC or RNN-T beam search proposes hypotheses; a second model scores each whole
hypothesis and the list is re-ranked:

* :func:`rescore_nbest`: the attention decoder, reading the same encoder output,
  scores each hypothesis (teacher forced, ``eos`` included), ranked by
  ``weight * attention log-prob / norm + (1 - weight) * first-pass score``;
* :func:`rescore_nbest_lm`: a token LM (``asr.neural_lm.LSTMLM``) scores each
  hypothesis's text, ranked by ``first-pass score + weight * LM log-prob / norm``.

Like is added to like: a first pass whose scores are length normalised (``attention_beam``:
its log-score over ``(|y| + 1) ** length_norm``) says so in each hypothesis's ``norm``, and
the second pass's whole-sequence log-prob is divided by the same ``norm``, as if it had
been part of the first pass's log-score (shallow fusion, normalised with it). The other
searches' ``norm`` is 1: their log-scores and the second pass's add as they are. The
re-ranked hypotheses keep their ``norm``, so a second rescoring combines the same way.

Shape letters: ``B`` batch, ``T`` frames, ``N`` hypotheses, ``U`` labels, ``De`` encoder width.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from asr.search.types import Hypothesis, SearchResult


def _padded_tokens(hyps: Sequence[Hypothesis], device) -> Tuple[Tensor, Tensor]:
    """The hypotheses' tokens as (tokens (N, U) long, zero-padded; lens (N,))."""
    lens = torch.tensor([len(h.tokens) for h in hyps], dtype=torch.long)
    tokens = torch.zeros(len(hyps), int(lens.max()) if len(hyps) else 0, dtype=torch.long)
    for n, h in enumerate(hyps):
        tokens[n, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    return tokens.to(device), lens.to(device)


def _reranked(hyps: Sequence[Hypothesis], combined: Sequence[float]) -> SearchResult:
    """The hypotheses best first by ``combined``, which becomes each one's score."""
    order = sorted(range(len(hyps)), key=lambda n: -combined[n])
    return SearchResult([Hypothesis(list(hyps[n].tokens), combined[n], list(hyps[n].times),
                                    hyps[n].text, hyps[n].norm) for n in order])


@torch.no_grad()
def rescore_nbest(head, enc: Tensor, enc_lens: Tensor, results: List[SearchResult],
                  weight: float = 0.5) -> List[SearchResult]:
    """Re-rank each utterance's N-best list with an attention head.

    Args:
        head: an attention head with ``sequence_log_probs(enc, enc_lens, targets,
            target_lens) -> (N,)`` (``asr.heads.attention.AttentionHead``).
        enc: ``(B, T, De)`` encoder output the first pass read.
        enc_lens: ``(B,)`` frames per utterance.
        results: the first pass's results, one per utterance.
        weight: share of the attention log-probability (over each hypothesis's ``norm``,
            see the module docstring) in the combined score (0: the first pass's ranking,
            1: the attention decoder's alone).

    Returns:
        one :class:`SearchResult` per utterance, best first by the combined score, which
        becomes each hypothesis's ``score`` (tokens, times and text are kept).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rescoring weight must lie in [0, 1], got {weight}")
    out = []
    for b, res in enumerate(results):
        hyps = res.nbest
        N = len(hyps)
        targets, target_lens = _padded_tokens(hyps, enc.device)
        n_frames = int(enc_lens[b])
        enc_n = enc[b: b + 1, :n_frames].expand(N, -1, -1)
        att = head.sequence_log_probs(enc_n, enc_lens[b: b + 1].expand(N), targets, target_lens)
        out.append(_reranked(hyps, [weight * float(a) / h.norm + (1.0 - weight) * h.score
                                    for a, h in zip(att.tolist(), hyps)]))
    return out


@torch.no_grad()
def rescore_nbest_lm(lm, results: List[SearchResult], weight: float = 0.5) -> List[SearchResult]:
    """Re-rank each utterance's N-best list by ``first-pass score + weight * LM log-prob /
    norm`` (``norm``: each hypothesis's, 1 unless the first pass normalised its scores by
    length, see the module docstring).

    Args:
        lm: a token LM with ``sequence_log_probs(tokens (N, U), lens (N,)) -> (N,)``,
            log P(tokens, end of sentence) (``asr.neural_lm.LSTMLM``), over the same
            token ids as the hypotheses.
        results: the first pass's results, one per utterance; each list is scored as
            one batch of its N hypotheses.
        weight: the LM's weight (0 keeps the first pass's ranking).

    Returns:
        one :class:`SearchResult` per utterance, best first by the combined score, which
        becomes each hypothesis's ``score`` (tokens, times and text are kept).
    """
    if weight < 0:
        raise ValueError(f"LM rescoring weight must be >= 0, got {weight}")
    device = next(lm.parameters()).device
    out = []
    for res in results:
        hyps = res.nbest
        if not hyps:
            out.append(res)
            continue
        lm_scores = lm.sequence_log_probs(*_padded_tokens(hyps, device)).tolist()
        out.append(_reranked(hyps, [h.score + weight * s / h.norm for h, s in zip(hyps, lm_scores)]))
    return out
