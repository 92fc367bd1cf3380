"""The streaming runtime: one :class:`Recognizer` (the model, shared, holding no per-stream
data) and a :class:`Stream` per utterance or client (sherpa-onnx's split).

A stream takes audio at any rate in pieces of any size (``accept_waveform``), turns it
into feature frames as they become computable, and waits for the recognizer: the
recognizer's :meth:`Recognizer.decode_streams` runs the ready streams of any clients
through the encoder as one batch (their encoder states stacked) and advances each one's
search. ``result()`` gives the segment's partial or final text with word times,
``is_endpoint()`` applies the trailing-silence rules, ``reset()`` starts the next segment.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from asr.config import StreamingConfig
from asr.encoders import split_state, stack_states
from asr.search.ctc import CTCGreedyState, PrefixBeam, ctc_greedy_advance
from asr.search.transducer import (TransducerBeamSearch, transducer_greedy_advance,
                                   transducer_greedy_init)
from asr.search.types import Hypothesis
from asr.stream_result import SegmentStream, StreamResult, WordTime, word_times  # noqa: F401 (re-exported)
from asr.streaming.features import streaming_front_end
from asr.streaming.resample import StreamingResampler
from asr.text import Tokenizer

STREAMING_SEARCHES = ("ctc_greedy", "ctc_prefix_beam", "transducer_greedy", "transducer_beam")


class Recognizer:
    """A model shared by many streams.

    model: an :class:`~asr.model.ASRModel` with a streamable encoder (``init_state``) and
    cmvn ``global`` or ``running`` (put in eval mode). ``config``: chunk size and endpoint
    rules (default: the model's ``streaming`` section). ``method``: one of ``STREAMING_SEARCHES`` (default: the head's first);
    ``beam``, ``lm_score``, ``lm_weight``, ``length_bonus`` go to the beam searches,
    ``token_min_logp`` and ``beam_prune_logp`` to the CTC prefix beam (its pruning).
    """

    def __init__(self, model, tokenizer: Tokenizer, config: Optional[StreamingConfig] = None,
                 head: Optional[str] = None, method: Optional[str] = None, beam: int = 8,
                 lm_score=None, lm_weight: float = 0.0, length_bonus: float = 0.0,
                 max_symbols_per_frame: Optional[int] = None, token_min_logp: Optional[float] = None,
                 beam_prune_logp: Optional[float] = None) -> None:
        if not hasattr(model.encoder, "init_state"):
            raise ValueError(f"encoder {model.cfg.encoder.name!r} cannot stream")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or model.cfg.streaming
        if self.config.chunk_frames < 1:
            raise ValueError(f"streaming.chunk_frames must be >= 1, got {self.config.chunk_frames}")
        self.head_name = head or next(iter(model.heads))
        self.head = model.heads[self.head_name]
        self.method = method or self.head.search_methods[0]
        if self.method not in STREAMING_SEARCHES or self.method not in self.head.search_methods:
            raise ValueError(f"streaming decodes head {self.head_name!r} with "
                             f"{[m for m in STREAMING_SEARCHES if m in self.head.search_methods]}, "
                             f"not {self.method!r}")
        self.beam, self.lm_score, self.lm_weight, self.length_bonus = (
            beam, lm_score, lm_weight, length_bonus)
        self.token_min_logp, self.beam_prune_logp = token_min_logp, beam_prune_logp
        if max_symbols_per_frame is None:
            head_cfg = getattr(self.head, "config", None)
            max_symbols_per_frame = getattr(head_cfg, "max_symbols_per_frame", 3)
        self.max_symbols_per_frame = max_symbols_per_frame
        # refuse a front end or encoder that cannot stream now, not at the first chunk
        streaming_front_end(model)
        with torch.no_grad():
            model.encoder.streaming_forward(torch.zeros(1, 1, model.features.dim),
                                            torch.ones(1, dtype=torch.long),
                                            model.encoder.init_state(1))
        self.sample_rate = model.cfg.features.sample_rate
        self.frame_seconds = model.frame_seconds

    def create_stream(self) -> "Stream":
        return Stream(self)

    def new_search(self):
        """A search state for a fresh segment."""
        if self.method == "ctc_greedy":
            return CTCGreedyState()
        if self.method == "ctc_prefix_beam":
            return PrefixBeam(self.beam, lm=self.lm_score, lm_weight=self.lm_weight,
                              length_bonus=self.length_bonus, token_min_logp=self.token_min_logp,
                              beam_prune_logp=self.beam_prune_logp)
        if self.method == "transducer_beam":
            return TransducerBeamSearch(self.head, self.beam, self.lm_score, self.lm_weight,
                                        self.length_bonus)
        return transducer_greedy_init(self.head, 1)[0]

    def best(self, search, final: bool) -> Hypothesis:
        if isinstance(search, (PrefixBeam, TransducerBeamSearch)):
            return search.result(1, final=final).best
        return Hypothesis(list(search.tokens), search.score, list(search.times))

    @torch.no_grad()
    def decode_streams(self, streams: Sequence["Stream"]) -> int:
        """Decode one chunk of every ready stream, all in one batch; returns how many."""
        ready = [s for s in streams if s.is_ready()]
        if not ready:
            return 0
        chunks, finals = [], []
        for s in ready:
            n = min(self.config.chunk_frames, s._pending.shape[0])
            chunks.append(s._pending[:n])
            finals.append(s._input_finished and n == s._pending.shape[0])
            s._pending = s._pending[n:]
        lens = torch.tensor([c.shape[0] for c in chunks])
        x = torch.zeros(len(ready), max(1, int(lens.max())), chunks[0].shape[1])
        for b, c in enumerate(chunks):
            x[b, : c.shape[0]] = c
        state = stack_states([s._encoder_state for s in ready])
        enc, enc_lens, state = self.model.encoder.streaming_forward(
            x, lens, state, torch.tensor(finals))
        for s, row, final in zip(ready, split_state(state), finals):
            s._encoder_state = row
            s._finished = final
        searches = [s._search for s in ready]
        if self.method == "transducer_greedy":
            searches = transducer_greedy_advance(self.head, enc, enc_lens, searches,
                                                 self.max_symbols_per_frame)
        elif self.method == "transducer_beam":
            enc_p = self.head.project_enc(enc)
            for b, search in enumerate(searches):
                search.advance(enc_p[b, : enc_lens[b]])
        else:
            log_probs = self.head(enc)
            if self.method == "ctc_greedy":
                ctc_greedy_advance(log_probs, enc_lens, searches)
            else:
                for b, search in enumerate(searches):
                    search.advance(log_probs[b, : enc_lens[b]])
        for s, search in zip(ready, searches):
            s._search = search
        return len(ready)

    def decode_stream(self, stream: "Stream") -> None:
        """Decode all of one stream's ready audio."""
        while self.decode_streams([stream]):
            pass


class Stream(SegmentStream):
    """One utterance's (or client's) audio, features, encoder and search state."""

    _resampler_class = StreamingResampler

    def __init__(self, recognizer: Recognizer) -> None:
        model = recognizer.model
        self._start_stream(recognizer, streaming_front_end(model),
                           torch.zeros(0, model.features.dim))
        self._encoder_state = model.encoder.init_state(1)

    @staticmethod
    def _as_samples(samples) -> torch.Tensor:
        return torch.as_tensor(samples, dtype=torch.float32).reshape(-1)

    def _add_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            self._pending = torch.cat([self._pending, frames])
