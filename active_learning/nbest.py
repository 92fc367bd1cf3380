"""N-best lists for scoring: a beam search by head, and the hypotheses' posteriors
renormalised over the list."""
from __future__ import annotations

from typing import List, Sequence

import torch

from asr.search.types import SearchResult


def beam_method(head: torch.nn.Module) -> str:
    """The N-best (beam) search of a head: ``ctc_prefix_beam`` or ``transducer_beam``."""
    try:
        return next(m for m in head.search_methods if m.endswith("_beam"))
    except StopIteration:
        raise ValueError(f"{type(head).__name__} has no beam search among {head.search_methods}") from None


@torch.no_grad()
def search_nbest(head: torch.nn.Module, enc: torch.Tensor, enc_lens: torch.Tensor, nbest: int,
                 beam: int) -> List[SearchResult]:
    """enc (B, T, D), enc_lens (B,) -> one N-best list per utterance (no LM: the scores are
    the model's own log P(y | x), which the posteriors and confidences need)."""
    if nbest < 1 or beam < nbest:
        raise ValueError(f"need 1 <= nbest <= beam, got nbest={nbest}, beam={beam}")
    return head.decode(enc.detach(), enc_lens, beam_method(head), beam=beam, nbest=nbest)


def nbest_posteriors(scores: Sequence[float]) -> torch.Tensor:
    """Log-scores (N,) of one N-best list -> P(h | x) renormalised over the list (N,), float64."""
    return torch.softmax(torch.tensor(list(scores), dtype=torch.float64), dim=0)
