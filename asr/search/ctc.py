"""CTC search: greedy and prefix beam search, both returning N-best with log-scores and
per-token frame times."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from asr.registry import SEARCHES
from asr.search.ctc_state import (NEG_INF, CTCGreedyState, LMScore, PrefixBeam,  # noqa: F401
                                  _logaddexp)
from asr.search.types import Hypothesis, SearchResult


def collapse_path(path: List[int], blank: int = 0) -> Tuple[List[int], List[int]]:
    """A frame-level CTC path -> (tokens, first frame of each token): repeats merged, blanks dropped."""
    tokens, times, prev = [], [], blank
    for t, tok in enumerate(path):
        if tok != blank and tok != prev:
            tokens.append(tok)
            times.append(t)
        prev = tok
    return tokens, times


def ctc_greedy_advance(log_probs: torch.Tensor, lengths: torch.Tensor,
                       states: Sequence[CTCGreedyState], blank: int = 0) -> None:
    """Extend each utterance's greedy path by its next frames, in place.

    log_probs: (B, T, V) log-softmax outputs of the new frames; lengths: (B,) valid ones;
    states: one per row.
    """
    best_lp, best = log_probs.max(dim=-1)  # (B, T)
    for b, st in enumerate(states):
        n = int(lengths[b])
        st.extend(best[b, :n].tolist(), float(best_lp[b, :n].double().sum()), blank)


@SEARCHES.register("ctc_greedy")
def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0,
               **_: object) -> List[SearchResult]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    Args:
        log_probs: (B, T, V) log-softmax outputs.
        lengths: (B,) valid frames.
    Returns:
        one SearchResult per utterance with a single hypothesis whose score is the
        best path's log-probability and whose times are the first frame of each token.
    """
    states = [CTCGreedyState(last=blank) for _ in range(log_probs.shape[0])]
    ctc_greedy_advance(log_probs, lengths, states, blank)
    return [SearchResult([Hypothesis(list(st.tokens), st.score, list(st.times))]) for st in states]


@SEARCHES.register("ctc_prefix_beam")
def ctc_prefix_beam(log_probs: torch.Tensor, lengths: torch.Tensor, beam: int = 8,
                    nbest: int = 1, blank: int = 0, token_prune: Optional[int] = None,
                    lm_score: Optional[LMScore] = None, lm_weight: float = 0.0,
                    length_bonus: float = 0.0, token_min_logp: Optional[float] = None,
                    beam_prune_logp: Optional[float] = None, **_: object) -> List[SearchResult]:
    """CTC prefix beam search (Hannun et al. 2014), in log space.

    Scores are log P(prefix | x) summed over all alignments, plus ``lm_weight`` times the
    LM log-probability and ``length_bonus`` per token when fusion is used.

    Args:
        log_probs: (B, T, V) log-softmax outputs.
        lengths: (B,) valid frames.
        beam: prefixes kept after each frame.
        nbest: hypotheses returned per utterance (<= beam).
        token_prune: consider only the top-k tokens per frame (None: all).
        token_min_logp: consider only tokens of at least this log-probability at a frame
            (its best token always; None: all). pyctcdecode's default is -5.
        beam_prune_logp: drop prefixes more than this below the best after each frame
            (None: keep the ``beam`` best). pyctcdecode's default is -10 (here: 10).
        lm_score: optional scorer ``lm_score(prefix, token) -> log-prob`` for shallow fusion.
    """
    lp_all = log_probs.detach().cpu().double()
    results = []
    for b in range(lp_all.shape[0]):
        search = PrefixBeam(beam, blank, token_prune, lm_score, lm_weight, length_bonus,
                            token_min_logp, beam_prune_logp)
        search.advance(lp_all[b, : int(lengths[b])])
        results.append(search.result(nbest, final=True))
    return results
