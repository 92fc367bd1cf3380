"""Second-pass rescoring of N-best lists by an attention decoder.

A CTC or RNN-T beam search proposes hypotheses; the attention decoder, reading the same
encoder output, scores each whole hypothesis (teacher forced, ``eos`` included), and the
list is re-ranked by ``weight * attention log-prob + (1 - weight) * first-pass score``.

Shape letters: ``B`` batch, ``T`` frames, ``N`` hypotheses, ``U`` labels, ``De`` encoder width.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from asr.search.types import Hypothesis, SearchResult


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
        weight: share of the attention log-probability in the combined score (0: the
            first pass's ranking, 1: the attention decoder's alone).

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
        U = max((len(h.tokens) for h in hyps), default=0)
        targets = torch.zeros(N, U, dtype=torch.long, device=enc.device)
        for n, h in enumerate(hyps):
            targets[n, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
        target_lens = torch.tensor([len(h.tokens) for h in hyps], device=enc.device)
        n_frames = int(enc_lens[b])
        enc_n = enc[b: b + 1, :n_frames].expand(N, -1, -1)
        att = head.sequence_log_probs(enc_n, enc_lens[b: b + 1].expand(N), targets, target_lens)
        combined = [weight * float(a) + (1.0 - weight) * h.score for a, h in zip(att.tolist(), hyps)]
        order = sorted(range(N), key=lambda n: -combined[n])
        out.append(SearchResult([Hypothesis(list(hyps[n].tokens), combined[n], list(hyps[n].times),
                                            hyps[n].text) for n in order]))
    return out
