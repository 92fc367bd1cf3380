"""Streaming searches for the onnxruntime runtime, in numpy: ports of
``asr.search.ctc.ctc_greedy_advance`` and ``asr.search.transducer.transducer_greedy_advance``.
(The CTC prefix beam, ``asr.search.ctc_state.PrefixBeam``, already takes numpy.)

The transducer search sees the networks as two functions, so it runs on onnxruntime
sessions or, in the tests, on the torch head:

- ``decoder(tokens (N,) int64, state) -> (decoder_proj (N, Dj), state)``, ``state`` a
  tuple of arrays, batch first;
- ``joiner(encoder_out (N, D), decoder_proj (N, Dj)) -> log_probs (N, V)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

import numpy as np

from asr.search.ctc_state import CTCGreedyState

State = Tuple[np.ndarray, ...]
DecoderFn = Callable[[np.ndarray, State], Tuple[np.ndarray, State]]
JoinerFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def ctc_greedy_advance(log_probs: np.ndarray, lengths: np.ndarray,
                       states: Sequence[CTCGreedyState], blank: int = 0) -> None:
    """Extend each utterance's greedy path by its next frames, in place.

    log_probs: (B, T, V) log-softmax outputs of the new frames; lengths: (B,) valid ones.
    """
    best = log_probs.argmax(axis=-1)  # (B, T)
    best_lp = np.take_along_axis(log_probs, best[..., None], axis=-1)[..., 0]
    for b, st in enumerate(states):
        n = int(lengths[b])
        st.extend(best[b, :n].tolist(), float(best_lp[b, :n].astype(np.float64).sum()), blank)


@dataclass
class TransducerGreedyState:
    """Greedy transducer search of one utterance: the prediction network's state and
    projected output (batch 1) after the last emitted label, the labels and their frames,
    the alignment's log-probability and the frames read."""

    pred_state: State
    dec_p: np.ndarray  # (1, Dj)
    tokens: List[int] = field(default_factory=list)
    times: List[int] = field(default_factory=list)
    score: float = 0.0
    frames: int = 0


def transducer_greedy_init(decoder: DecoderFn, initial_state: State,
                           blank: int = 0) -> TransducerGreedyState:
    """A fresh search: the prediction network has read the start blank.
    initial_state: the zero state for one hypothesis."""
    dec_p, state = decoder(np.full(1, blank, dtype=np.int64), initial_state)
    return TransducerGreedyState(tuple(state), dec_p)


def transducer_greedy_advance(decoder: DecoderFn, joiner: JoinerFn, enc: np.ndarray,
                              enc_lens: np.ndarray, states: List[TransducerGreedyState],
                              max_symbols_per_frame: int = 3,
                              blank: int = 0) -> List[TransducerGreedyState]:
    """Greedy search over the next frames of B utterances, one batch (the torch search's
    steps: at most ``max_symbols_per_frame`` labels a frame, then on as if blank).

    enc: (B, T, D) new encoder frames; enc_lens: (B,) valid ones; states: one per row.
    Returns the new states (the given ones are not changed).
    """
    B, T, _ = enc.shape
    lens = np.asarray(enc_lens, dtype=np.int64)
    state = tuple(np.concatenate(parts, 0) for parts in zip(*(st.pred_state for st in states)))
    dec_p = np.concatenate([st.dec_p for st in states], 0)  # (B, Dj)
    tokens = [list(st.tokens) for st in states]
    times = [list(st.times) for st in states]
    scores = np.zeros(B, dtype=np.float64)
    for t in range(T):
        in_frame = t < lens  # rows still reading frame t
        emitted = np.zeros(B, dtype=np.int64)
        while in_frame.any():
            logp = joiner(np.ascontiguousarray(enc[:, t]), dec_p)  # (B, V)
            best = logp.argmax(axis=-1)
            best_lp = logp[np.arange(B), best]
            emit = in_frame & (best != blank) & (emitted < max_symbols_per_frame)
            leave = in_frame & ~emit
            scores += np.where(emit, best_lp, np.where(leave, logp[:, blank], 0.0)).astype(np.float64)
            in_frame = emit
            if not emit.any():
                break
            emitted += emit
            for b in np.flatnonzero(emit).tolist():
                tokens[b].append(int(best[b]))
                times[b].append(states[b].frames + t)
            new_dec, new_state = decoder(np.where(emit, best, blank).astype(np.int64), state)
            state = tuple(np.where(emit.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
                          for new, old in zip(new_state, state))
            dec_p = np.where(emit[:, None], new_dec, dec_p)
    return [TransducerGreedyState(tuple(s[b:b + 1] for s in state), dec_p[b:b + 1], tokens[b],
                                  times[b], states[b].score + float(scores[b]),
                                  states[b].frames + int(lens[b]))
            for b in range(B)]
