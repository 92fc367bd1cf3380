"""Active-learning scorers behind one interface, chosen by name from ``SCORERS``.

A scorer maps a batch of unlabeled clips to one score per clip, higher = more worth
labeling. Scores are >= 0 for every scorer here (selection with diversity relies on it).
The scorers that decode (all but ``random``) also give each clip's best hypothesis as
text when they have the model's tokenizer: the labeling queue shows it to the labeler to
correct.

- ``egl``: Expected Gradient Length (Huang et al. 2016): the sum over the N-best of
  P(h | x), renormalised over the N-best, times || d loss(x, h) / d theta ||, with the
  head's own per-utterance loss (CTC or RNN-T) and h as the target.
- ``confidence``: least confidence, 1 - P(best | x)^(1 / max(|best|, 1)), one minus the
  best hypothesis's per-token geometric-mean probability (``length_norm="none"``:
  1 - P(best | x)); the unnormalised form is near 1 for every long clip.
- ``entropy``: the entropy (nats) of the renormalised N-best posteriors.
- ``random``: a uniform draw in [0, 1) seeded by ``seed`` and the clip id, so a clip's
  score does not depend on batching or order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from active_learning.gradients import hypothesis_gradient_norms, only_these_require_grad, select_parameters
from active_learning.nbest import nbest_posteriors, search_nbest
from asr.registry import Registry
from asr.search.types import SearchResult
from asr.text import Tokenizer

SCORERS: Registry = Registry("active-learning scorer")

EGL_LENGTH_NORMS = ("none", "tokens", "frames")


@dataclass
class ScoringConfig:
    """method: a ``SCORERS`` name. head: the model head to search and differentiate
    (default: the first). nbest, beam: the N-best list (beam >= nbest). params: which
    parameters EGL counts (see ``select_parameters``). egl_length_norm: divide each
    hypothesis's gradient norm by nothing, its token count (at least 1) or the clip's
    encoder frames. confidence_length_norm: ``"tokens"`` or ``"none"`` (see the module
    docstring). seed: the random scorer's. batch_seconds: padded audio per batch."""

    method: str = "egl"
    head: Optional[str] = None
    nbest: int = 4
    beam: int = 8
    params: str = "all"
    egl_length_norm: str = "none"
    confidence_length_norm: str = "tokens"
    seed: int = 0
    batch_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.nbest <= self.beam:
            raise ValueError(f"need 1 <= nbest <= beam (the N-best list comes from a beam that wide), "
                             f"got nbest={self.nbest}, beam={self.beam}")
        if self.egl_length_norm not in EGL_LENGTH_NORMS:
            raise ValueError(f"egl_length_norm must be one of {EGL_LENGTH_NORMS}, got {self.egl_length_norm!r}")
        if self.confidence_length_norm not in ("tokens", "none"):
            raise ValueError(f"confidence_length_norm must be 'tokens' or 'none', got {self.confidence_length_norm!r}")


class Scorer:
    """``rows(ids, waves (B, N), wave_lens (B,)) -> B rows`` of the scores file,
    ``{"id", "score"}`` plus ``"hypothesis"`` (the best hypothesis's text) from scorers
    that decode, given the ``tokenizer``; ``score(...) -> B scores``. ``needs_audio``:
    False when the audio need not be loaded at all."""

    needs_audio = True

    def __init__(self, model: Optional[torch.nn.Module], cfg: ScoringConfig,
                 tokenizer: Optional[Tokenizer] = None) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        if model is not None:
            model.eval()  # no dropout, no SpecAugment, for the search and the gradients
            self.head_name = cfg.head or next(iter(model.heads))
            if self.head_name not in model.heads:
                raise ValueError(f"model has heads {list(model.heads)}, not {cfg.head!r}")
            self.head = model.heads[self.head_name]

    def score(self, ids: Sequence[str], waves: Optional[torch.Tensor] = None,
              wave_lens: Optional[torch.Tensor] = None) -> List[float]:
        return [r["score"] for r in self.rows(ids, waves, wave_lens)]

    def rows(self, ids: Sequence[str], waves: Optional[torch.Tensor],
             wave_lens: Optional[torch.Tensor]) -> List[Dict]:
        raise NotImplementedError

    def row(self, uid: str, score: float, result: Optional[SearchResult] = None) -> Dict:
        """A scores-file row; with the text of ``result``'s best hypothesis when there is
        one and the tokenizer is known."""
        row = {"id": uid, "score": score}
        if result is not None and self.tokenizer is not None:
            row["hypothesis"] = self.tokenizer.decode(result.best.tokens)
        return row


class _NBestScorer(Scorer):
    """Scores from each clip's N-best list alone."""

    @torch.no_grad()
    def rows(self, ids, waves, wave_lens):
        enc, enc_lens = self.model.encode(waves, wave_lens)
        return [self.row(uid, self.from_nbest(r.nbest), r) for uid, r in
                zip(ids, search_nbest(self.head, enc, enc_lens, self.cfg.nbest, self.cfg.beam))]

    def from_nbest(self, nbest) -> float:
        raise NotImplementedError


@SCORERS.register("confidence")
class LeastConfidenceScorer(_NBestScorer):
    def from_nbest(self, nbest) -> float:
        best = nbest[0]
        log_p = best.score / max(len(best.tokens), 1) if self.cfg.confidence_length_norm == "tokens" else best.score
        return 1.0 - float(torch.tensor(min(log_p, 0.0), dtype=torch.float64).exp())


@SCORERS.register("entropy")
class NBestEntropyScorer(_NBestScorer):
    def from_nbest(self, nbest) -> float:
        p = nbest_posteriors([h.score for h in nbest])
        return float((-(p * p.clamp(min=1e-300).log()).sum()).clamp(min=0.0))


@SCORERS.register("random")
class RandomScorer(Scorer):
    needs_audio = False

    def __init__(self, model, cfg: ScoringConfig, tokenizer=None) -> None:
        super().__init__(None, cfg)  # the model plays no part, and nothing is decoded

    def rows(self, ids, waves=None, wave_lens=None):
        return [self.row(uid, self.draw(uid)) for uid in ids]

    def draw(self, uid: str) -> float:
        digest = hashlib.sha256(f"{self.cfg.seed}\0{uid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64


@SCORERS.register("egl")
class EGLScorer(Scorer):
    def __init__(self, model, cfg: ScoringConfig, tokenizer=None) -> None:
        super().__init__(model, cfg, tokenizer)
        self.params = select_parameters(model, self.head_name, cfg.params)
        self.encoder_counts = any(n.startswith("encoder.") for n in self.params)

    def rows(self, ids, waves, wave_lens):
        with only_these_require_grad(self.model, self.params), torch.enable_grad():
            if self.encoder_counts:
                # one graph per clip: a backward through a batch's encoder pays for every
                # row, and there is one backward per hypothesis
                scored = [self.score_encoded(*self.model.encode(waves[b:b + 1, : int(n)], wave_lens[b:b + 1]))[0]
                          for b, n in enumerate(wave_lens)]
            else:
                with torch.no_grad():  # the backward passes stop at the head
                    enc, enc_lens = self.model.encode(waves, wave_lens)
                scored = self.score_encoded(enc, enc_lens)
        return [self.row(uid, score, result) for uid, (score, result) in zip(ids, scored)]

    def score_encoded(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> List[Tuple[float, SearchResult]]:
        """enc (B, T, D) (with a graph to the counted encoder parameters, if any), enc_lens (B,)
        -> B (score, N-best list)."""
        results = search_nbest(self.head, enc, enc_lens, self.cfg.nbest, self.cfg.beam)
        scores = []
        for b, r in enumerate(results):
            # the losses of one clip's hypotheses per call: each backward then runs over
            # N rows, not over the whole batch's
            n, frames = len(r.nbest), int(enc_lens[b])
            norms = hypothesis_gradient_norms(self.head, enc[b:b + 1, :frames], enc_lens[b:b + 1], [0] * n,
                                              [h.tokens for h in r.nbest], list(self.params.values()))
            weights = nbest_posteriors([h.score for h in r.nbest]) / self.length_norms(r.nbest, frames)
            scores.append((float((weights * norms).sum()), r))
        return scores

    def length_norms(self, nbest, frames: int) -> torch.Tensor:
        """(N,) divisors of the hypotheses' gradient norms."""
        if self.cfg.egl_length_norm == "tokens":
            return torch.tensor([max(len(h.tokens), 1) for h in nbest], dtype=torch.float64)
        if self.cfg.egl_length_norm == "frames":
            return torch.full((len(nbest),), float(max(frames, 1)), dtype=torch.float64)
        return torch.ones(len(nbest), dtype=torch.float64)


def build_scorer(model: Optional[torch.nn.Module], cfg: ScoringConfig,
                 tokenizer: Optional[Tokenizer] = None) -> Scorer:
    """The scorer ``cfg.method``; with the model's ``tokenizer``, its rows carry the best
    hypothesis's text (scorers that decode)."""
    return SCORERS.get(cfg.method)(model, cfg, tokenizer)
