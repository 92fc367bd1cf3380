"""Closed-vocabulary search: score every phrase of a fixed list and rank them.

For isolated-word or command tasks (spoken digits, a command set) the answer is known to
be one of a few phrases. Ranking the phrases by their exact log-likelihood under the head
(the sum over all alignments: the CTC or RNN-T forward score) is then both faster and
more accurate than an open search followed by spelling correction. Token times come from
the best alignment (Viterbi) of the winning phrase.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from asr.registry import SEARCHES
from asr.search.ctc import collapse_path
from asr.search.types import Hypothesis, SearchResult


def _pad_phrases(vocabulary: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Phrases as ``(K, U)`` int64 targets padded with 0, and ``(K,)`` lengths."""
    if not vocabulary:
        raise ValueError("closed-vocabulary search needs a non-empty vocabulary of phrases")
    if any(len(p) == 0 for p in vocabulary):
        raise ValueError("closed-vocabulary search: every phrase needs at least one token")
    lens = torch.tensor([len(p) for p in vocabulary], dtype=torch.long)
    targets = torch.zeros(len(vocabulary), int(lens.max()), dtype=torch.long)
    for k, p in enumerate(vocabulary):
        targets[k, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    return targets, lens


def _ranked(scores: torch.Tensor, nbest: int) -> List[int]:
    order = torch.argsort(scores, descending=True, stable=True)
    return [int(k) for k in order[: max(1, nbest)]]


@SEARCHES.register("ctc_vocab")
@torch.no_grad()
def ctc_vocab(log_probs: torch.Tensor, lengths: torch.Tensor,
              vocabulary: Sequence[Sequence[int]], nbest: int = 1, blank: int = 0,
              **_: object) -> List[SearchResult]:
    """Rank a fixed list of phrases by their CTC log-likelihood.

    Args:
        log_probs: (B, T, V) log-softmax outputs.
        lengths: (B,) valid frames.
        vocabulary: K phrases, each a list of token ids (no blanks).
        nbest: phrases returned per utterance, best first.
    Returns:
        one SearchResult per utterance; scores are log P(phrase | audio) (-inf where a
        phrase cannot fit in the frames, and then no times), times are the Viterbi alignment's first frame
        of each token of the phrase.
    """
    targets, target_lens = _pad_phrases(vocabulary)
    K = targets.shape[0]
    results = []
    for b in range(log_probs.shape[0]):
        T = int(lengths[b])
        lp = log_probs[b, :T].float()
        nll = F.ctc_loss(lp[:, None, :].expand(T, K, lp.shape[-1]), targets,
                         torch.full((K,), T, dtype=torch.long), target_lens,
                         blank=blank, reduction="none", zero_infinity=False)
        scores = -nll
        nb = []
        for k in _ranked(scores, nbest):
            tokens = targets[k, : target_lens[k]].tolist()
            times: List[int] = []
            if torch.isfinite(scores[k]):
                path, _ = AF.forced_align(lp[None], targets[k: k + 1, : target_lens[k]].int(),
                                          blank=blank)
                _, times = collapse_path(path[0].tolist(), blank)
            nb.append(Hypothesis(tokens=tokens, score=float(scores[k]), times=times))
        results.append(SearchResult(nb))
    return results


def _transducer_viterbi_times(log_probs: torch.Tensor, tokens: List[int], blank: int) -> List[int]:
    """Frame at which each token is emitted on the best path through the RNN-T lattice.

    log_probs: (T, U+1, V) log-softmax joiner outputs for one phrase of U tokens. Node
    (t, u) means u tokens emitted by frame t; a blank moves to t+1, a label to u+1.
    """
    T, U1, _ = log_probs.shape
    U = U1 - 1
    blank_lp = log_probs[:, :, blank].tolist()
    label_lp = [[log_probs[t, u, tokens[u]].item() for u in range(U)] for t in range(T)]
    neg = float("-inf")
    alpha = [[neg] * U1 for _ in range(T)]
    by_label = [[False] * U1 for _ in range(T)]
    for t in range(T):
        for u in range(U1):
            if t == 0 and u == 0:
                alpha[0][0] = 0.0
                continue
            best = alpha[t - 1][u] + blank_lp[t - 1][u] if t > 0 else neg
            if u > 0 and alpha[t][u - 1] + label_lp[t][u - 1] > best:
                best, by_label[t][u] = alpha[t][u - 1] + label_lp[t][u - 1], True
            alpha[t][u] = best
    times: List[int] = []
    t, u = T - 1, U  # the path ends with a blank out of (T-1, U)
    while u > 0:
        if by_label[t][u]:
            times.append(t)
            u -= 1
        else:
            t -= 1
    return times[::-1]


@SEARCHES.register("transducer_vocab")
@torch.no_grad()
def transducer_vocab(model, enc: torch.Tensor, enc_lens: torch.Tensor,
                     vocabulary: Sequence[Sequence[int]], nbest: int = 1, **_: object) -> List[SearchResult]:
    """Rank a fixed list of phrases by their RNN-T log-likelihood.

    Args:
        model: a transducer head (``predict``, ``join``, ``blank``).
        enc: (B, T, De) encoder output.
        enc_lens: (B,) frames per utterance.
        vocabulary: K phrases, each a list of token ids (no blanks).
        nbest: phrases returned per utterance, best first.
    Returns:
        one SearchResult per utterance; scores are log P(phrase | audio), times the
        Viterbi alignment's emission frame of each token of the winning phrases.
    """
    targets, target_lens = _pad_phrases(vocabulary)
    K = targets.shape[0]
    dec, _, _ = model.predict(targets, target_lens)  # (K, U+1, Dp)
    results = []
    for b in range(enc.shape[0]):
        T = int(enc_lens[b])
        logits = model.join(enc[b: b + 1, :T].expand(K, T, enc.shape[-1]), dec)  # (K, T, U+1, V)
        nll = AF.rnnt_loss(logits.float(), targets.int(), torch.full((K,), T, dtype=torch.int32),
                           target_lens.int(), blank=model.blank, reduction="none")
        scores = -nll
        nb = []
        for k in _ranked(scores, nbest):
            n = int(target_lens[k])
            tokens = targets[k, :n].tolist()
            lp = logits[k, :, : n + 1].float().log_softmax(-1)
            nb.append(Hypothesis(tokens=tokens, score=float(scores[k]),
                                 times=_transducer_viterbi_times(lp, tokens, model.blank)))
        results.append(SearchResult(nb))
    return results
