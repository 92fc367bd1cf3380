"""The one result type every search returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class Hypothesis:
    """One decoded path.

    tokens: token ids, blanks removed.
    score: total log-probability (plus any LM/length bonus the search used).
    times: encoder frame index at which each token was emitted (same length as tokens).
    text: filled in by the caller that owns the tokenizer.
    norm: ``score`` is the search's log-score divided by this: 1 (not normalised), or
        ``(len(tokens) + 1) ** length_norm`` from ``attention_beam``, whose ranking score is
        length normalised. A second pass (``asr.search.rescore``) divides the log-prob it
        adds by it too, so that it adds like to like.
    """

    tokens: List[int]
    score: float
    times: List[int] = field(default_factory=list)
    text: str = ""
    norm: float = 1.0


@dataclass
class SearchResult:
    """N-best list for one utterance, best first."""

    nbest: List[Hypothesis]

    @property
    def best(self) -> Hypothesis:
        return self.nbest[0]
