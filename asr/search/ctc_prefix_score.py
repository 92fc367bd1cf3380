"""CTC prefix scores for label-synchronous searches (Watanabe et al. 2017, Algorithm 2).

``log P_ctc(g ... | x)``: the probability that a CTC model's output *starts with* the
prefix ``g``, summed over all alignments and all continuations. An attention beam search
adds it to its own scores (one-pass joint CTC/attention decoding, as ESPnet does); the
prefix score of a complete hypothesis is its full CTC log-probability.

Shape letters: ``T`` frames, ``V`` vocabulary, ``N`` hypotheses, ``K`` candidate labels.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Prefix scores over one utterance's CTC log-probabilities ``(T, V)``.

    A hypothesis carries ``r (T, 2)``: the log-probabilities of its prefix being emitted
    by frame ``t`` and the path ending in a label (``[:, 0]``) or in blank (``[:, 1]``).
    """

    def __init__(self, log_probs: Tensor, blank: int = 0) -> None:
        self.x = log_probs.detach().double().cpu()  # (T, V)
        self.blank = blank
        self.T = self.x.shape[0]

    def initial_state(self) -> Tensor:
        """``r (T, 2)`` of the empty prefix: only blanks so far."""
        r = torch.full((self.T, 2), NEG_INF, dtype=torch.float64)
        r[:, 1] = torch.cumsum(self.x[:, self.blank], 0)
        return r

    def full_score(self, r: Tensor) -> Tensor:
        """``log P_ctc(g | x)`` of complete hypotheses from their states ``r (N, T, 2)`` -> ``(N,)``."""
        if self.T == 0:
            return torch.zeros(r.shape[0], dtype=torch.float64)
        return torch.logaddexp(r[:, -1, 0], r[:, -1, 1])

    def extend(self, r: Tensor, last: Tensor, empty: Tensor, cands: Tensor) -> Tuple[Tensor, Tensor]:
        """Prefix scores of every hypothesis ``g`` extended by each candidate label ``c``.

        r: ``(N, T, 2)`` states of the hypotheses; last: ``(N,)`` their last labels (any
        value where ``empty``); empty: ``(N,)`` True for the empty prefix; cands: ``(N, K)``
        labels (not blank). Returns psi ``(N, K)`` = ``log P_ctc(g + c ... | x)`` and the
        new states ``(N, K, T, 2)``.
        """
        N, K = cands.shape
        T = self.T
        r_new = torch.full((N, K, T, 2), NEG_INF, dtype=torch.float64)
        if T == 0:
            return torch.full((N, K), NEG_INF, dtype=torch.float64), r_new
        xs = self.x[:, cands.reshape(-1)].T.reshape(N, K, T)  # (N, K, T) log x_t(c)
        xb = self.x[:, self.blank]  # (T,)
        r_sum = torch.logaddexp(r[..., 0], r[..., 1])  # (N, T)
        # phi_t: mass from which c may start at t + 1; a repeated label needs a blank between
        phi = r_sum[:, None, :].expand(N, K, T).clone()
        repeat = (cands == last[:, None]) & ~empty[:, None]  # (N, K)
        phi[repeat] = r[:, None, :, 1].expand(N, K, T)[repeat]
        r_new[:, :, 0, 0] = torch.where(empty[:, None], xs[:, :, 0],
                                        torch.full_like(xs[:, :, 0], NEG_INF))
        psi = r_new[:, :, 0, 0].clone()
        for t in range(1, T):
            r_new[:, :, t, 0] = torch.logaddexp(r_new[:, :, t - 1, 0], phi[:, :, t - 1]) + xs[:, :, t]
            r_new[:, :, t, 1] = torch.logaddexp(r_new[:, :, t - 1, 0], r_new[:, :, t - 1, 1]) + xb[t]
            psi = torch.logaddexp(psi, phi[:, :, t - 1] + xs[:, :, t])
        return psi, r_new
