"""CTC head: a projection of the encoder output to token log-probabilities."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

import asr.search.ctc  # noqa: F401  (registers the CTC searches)
import asr.search.vocab  # noqa: F401  (registers the closed-vocabulary searches)
from asr.registry import HEADS, SEARCHES
from asr.search.types import SearchResult


@dataclass
class CTCConfig:
    pass


@HEADS.register("ctc")
class CTCHead(nn.Module):
    """enc (B, T, D) -> log-probs (B, T, V); blank is token 0."""

    search_methods = ("ctc_greedy", "ctc_prefix_beam", "ctc_vocab")

    def __init__(self, enc_dim: int, vocab_size: int, cfg: CTCConfig | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(enc_dim, vocab_size)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.proj(enc), dim=-1)

    def loss(self, enc: torch.Tensor, enc_lens: torch.Tensor, targets: torch.Tensor,
             target_lens: torch.Tensor) -> torch.Tensor:
        """Per-utterance CTC loss (B,), summed over each utterance's frames.

        enc: (B, T, D); enc_lens: (B,); targets: (B, U) padded; target_lens: (B,).
        Utterances too short for their transcript give inf, which is zeroed (and their
        gradient with it) rather than poisoning the batch.
        """
        log_probs = self.forward(enc).float()
        return F.ctc_loss(log_probs.transpose(0, 1), targets, enc_lens, target_lens,
                          blank=0, reduction="none", zero_infinity=True)

    def decode(self, enc: torch.Tensor, enc_lens: torch.Tensor, method: str = "ctc_greedy",
               **options) -> List[SearchResult]:
        if method not in self.search_methods:
            raise ValueError(f"CTC head decodes with {self.search_methods}, not {method!r}")
        # searches are Python loops over frames: they run on the CPU, in fp32
        return SEARCHES.get(method)(self.forward(enc).float().cpu(), enc_lens.cpu(), **options)
