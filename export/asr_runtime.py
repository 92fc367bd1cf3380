"""Streaming recognition on exported ONNX graphs (``python -m export asr``): numpy and
onnxruntime only, no torch (tested in a subprocess).

The API of :mod:`asr.streaming`: one :class:`Recognizer` shared by many :class:`Stream`
objects; ``accept_waveform(sample_rate, samples)``, ``input_finished()``, ``result()``,
``is_endpoint()``, ``reset()``; :meth:`Recognizer.decode_streams` runs the ready streams
of all clients through the encoder as one batch. Everything the runtime needs (front end,
chunk size, endpoint rules, vocabulary) comes from the graphs' metadata.

    rec = Recognizer("exp/onnx", int8=True)
    stream = rec.create_stream()
    stream.accept_waveform(16000, samples)
    stream.input_finished()
    rec.decode_stream(stream)
    print(stream.result().text)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from asr.search.ctc_state import CTCGreedyState, LMScore, PrefixBeam
from asr.search.types import Hypothesis
from asr.stream_result import SegmentStream, StreamResult, word_times
from asr.text import Tokenizer
from export.asr_features_np import RunningMean, StreamingFeatures
from export.asr_resample_np import StreamingResampler
from export.asr_search_np import (TransducerGreedyState, ctc_greedy_advance,
                                  transducer_greedy_advance, transducer_greedy_init)

MODEL_TYPE = "asr_streaming"
STREAMING_SEARCHES = ("ctc_greedy", "ctc_prefix_beam", "transducer_greedy")


@dataclass
class EndpointRules:
    """Trailing-silence rules in seconds (``asr.config.EndpointConfig``); 0 turns one off."""

    silence_without_speech: float = 2.4
    silence_after_speech: float = 1.2
    max_segment: float = 20.0


@dataclass
class StreamingOptions:
    """Feature frames per encoder step and endpoint rules (``asr.config.StreamingConfig``;
    an instance of that class works too)."""

    chunk_frames: int = 16
    endpoint: EndpointRules = field(default_factory=EndpointRules)


class Session:
    """One graph: inputs and outputs by name, the metadata, zero states."""

    def __init__(self, path: Path, num_threads: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ValueError(f"{path}: cannot load ONNX model ({exc})") from None
        self.meta = self.session.get_modelmeta().custom_metadata_map
        if self.meta.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{path}: not an exported streaming ASR model "
                             f"(model_type={self.meta.get('model_type')!r})")
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.state_inputs = [n for n in self.inputs if n.startswith("state.")]

    def zero_state(self, batch_size: int) -> List[np.ndarray]:
        """Zeros for every ``state.*`` input, batch first (all states start at zero)."""
        dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
        return [np.zeros([batch_size] + list(self.inputs[n].shape[1:]),
                         dtype=dtypes[self.inputs[n].type]) for n in self.state_inputs]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        # the exporter drops inputs a graph does not read (``final`` without lookahead)
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        return dict(zip(self.outputs, self.session.run(None, feeds)))


class Recognizer:
    """Exported graphs shared by many streams.

    model_dir: the directory ``python -m export asr`` wrote; ``int8``: use the
    ``*.int8.onnx`` graphs. ``config``: chunk size and endpoint rules (default: the
    metadata's). ``head``: ``"ctc"`` or ``"transducer"`` (default: the model's first);
    ``method``: one of ``STREAMING_SEARCHES``; ``beam``, ``lm_score``, ``lm_weight``,
    ``length_bonus`` go to the CTC prefix beam, and ``token_min_logp`` and
    ``beam_prune_logp`` (its pruning; None: exact within the beam).
    """

    def __init__(self, model_dir: str | Path, int8: bool = False, config=None,
                 head: Optional[str] = None, method: Optional[str] = None, beam: int = 8,
                 lm_score: Optional[LMScore] = None, lm_weight: float = 0.0,
                 length_bonus: float = 0.0, max_symbols_per_frame: Optional[int] = None,
                 num_threads: int = 1, token_min_logp: Optional[float] = None,
                 beam_prune_logp: Optional[float] = None) -> None:
        model_dir = Path(model_dir)
        suffix = ".int8.onnx" if int8 else ".onnx"

        def load(name: str) -> Session:
            path = model_dir / f"{name}{suffix}"
            if not path.is_file():
                raise ValueError(f"{path}: not found (python -m export asr writes it)")
            return Session(path, num_threads)

        self.encoder = load("encoder")
        meta = self.encoder.meta
        self.meta = meta
        # lc_bgru: frontend.onnx (convolutions) + encoder.onnx (one window), driven here
        self.encoder_kind = meta.get("encoder_kind", "conv_rnn")
        self.frontend: Optional[Session] = None
        if self.encoder_kind == "lc_bgru":
            self.frontend = load("frontend")
            self.chunk_size = int(meta["chunk_size"])
            self.window_frames = int(meta["window_frames"])
            self.frame_dim = int(meta["frame_dim"])
        self.running_cmvn_frames = (int(meta["cmvn_running_frames"])
                                    if meta.get("cmvn") == "running" else None)
        heads = json.loads(meta["heads"])
        self.head_name = head or next(iter(heads))
        if self.head_name not in heads:
            raise ValueError(f"the export has heads {list(heads)}, not {self.head_name!r}")
        self.head_kind = heads[self.head_name]["kind"]
        self.blank = int(heads[self.head_name]["blank"])
        methods = [m for m in STREAMING_SEARCHES if m.startswith(self.head_kind)]
        self.method = method or methods[0]
        if self.method not in methods:
            raise ValueError(f"head {self.head_name!r} decodes with {methods}, not {self.method!r}")
        if self.head_kind == "ctc":
            self.ctc = load("ctc")
        else:
            self.decoder, self.joiner = load("decoder"), load("joiner")
            if max_symbols_per_frame is None:
                max_symbols_per_frame = int(heads[self.head_name]["max_symbols_per_frame"])
        self.max_symbols_per_frame = max_symbols_per_frame or 3
        self.beam, self.lm_score, self.lm_weight, self.length_bonus = (
            beam, lm_score, lm_weight, length_bonus)
        self.token_min_logp, self.beam_prune_logp = token_min_logp, beam_prune_logp
        if config is None:
            config = StreamingOptions(int(meta["chunk_frames"]),
                                      EndpointRules(**json.loads(meta["endpoint"])))
        if config.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {config.chunk_frames}")
        self.config = config
        self.tokenizer = Tokenizer.from_dict(json.loads(meta["tokenizer"]))
        self.feature_config = json.loads(meta["feature_config"])
        self.sample_rate = int(meta["sample_rate"])
        self.feature_dim = int(self.feature_config["n_mels"])
        self.frame_seconds = (int(self.feature_config["hop_length"])
                              * int(meta["subsampling_factor"]) / self.sample_rate)

    def create_stream(self) -> "Stream":
        return Stream(self)

    # ---- the prediction network and joiner as the numpy search sees them ------------
    def _decoder_step(self, tokens: np.ndarray, state):
        out = self.decoder.run({"tokens": tokens,
                                **dict(zip(self.decoder.state_inputs, state))})
        return out["decoder_proj"], tuple(out["new_" + n] for n in self.decoder.state_inputs)

    def _joiner(self, encoder_out: np.ndarray, decoder_proj: np.ndarray) -> np.ndarray:
        return self.joiner.run({"encoder_out": encoder_out, "decoder_proj": decoder_proj})["log_probs"]

    def new_search(self):
        """A search state for a fresh segment."""
        if self.method == "ctc_greedy":
            return CTCGreedyState(last=self.blank)
        if self.method == "ctc_prefix_beam":
            return PrefixBeam(self.beam, self.blank, lm=self.lm_score, lm_weight=self.lm_weight,
                              length_bonus=self.length_bonus, token_min_logp=self.token_min_logp,
                              beam_prune_logp=self.beam_prune_logp)
        return transducer_greedy_init(self._decoder_step, tuple(self.decoder.zero_state(1)),
                                      self.blank)

    def best(self, search, final: bool) -> Hypothesis:
        if isinstance(search, PrefixBeam):
            return search.result(1, final=final).best
        return Hypothesis(list(search.tokens), search.score, list(search.times))

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
        lens = np.array([c.shape[0] for c in chunks], dtype=np.int64)
        x = np.zeros((len(ready), max(1, int(lens.max())), self.feature_dim), dtype=np.float32)
        for b, c in enumerate(chunks):
            x[b, : c.shape[0]] = c
        if self.frontend is not None:
            enc, enc_lens = self._lc_bgru_step(ready, x, lens, finals)
        else:
            names = self.encoder.state_inputs
            feeds = {n: np.concatenate([s._encoder_state[i] for s in ready], 0)
                     for i, n in enumerate(names)}
            out = self.encoder.run({"features": x, "feature_lens": lens,
                                    "final": np.array(finals, dtype=bool), **feeds})
            enc, enc_lens = out["encoder_out"], out["encoder_out_lens"]
            for b, s in enumerate(ready):
                s._encoder_state = [out["new_" + n][b:b + 1] for n in names]
        for s, final in zip(ready, finals):
            s._finished = final
        searches = [s._search for s in ready]
        if self.method == "transducer_greedy":
            searches = transducer_greedy_advance(self._decoder_step, self._joiner, enc, enc_lens,
                                                 searches, self.max_symbols_per_frame, self.blank)
        else:
            if enc.shape[1]:
                log_probs = self.ctc.run({"encoder_out": enc})["log_probs"]
            else:  # no window was complete in this step
                log_probs = np.zeros((len(ready), 0, self.tokenizer.vocab_size), np.float32)
            if self.method == "ctc_greedy":
                ctc_greedy_advance(log_probs, enc_lens, searches, self.blank)
            else:
                for b, search in enumerate(searches):
                    search.advance(log_probs[b, : enc_lens[b]])
        for s, search in zip(ready, searches):
            s._search = search
        return len(ready)

    def _lc_bgru_step(self, ready: Sequence["Stream"], x: np.ndarray, lens: np.ndarray,
                      finals: Sequence[bool]):
        """``LCBiGRUEncoder.streaming_forward`` on the two graphs: the front end over the
        chunk, then encoder.onnx once per window that some stream has complete (W frames
        in, or fewer at the end of its input), the streams with a window in one batch.
        x: (B, T, F) features, lens (B,) -> (encoder_out (B, T', D), lengths (B,))."""
        names = self.frontend.state_inputs
        feeds = {n: np.concatenate([s._encoder_state[i] for s in ready], 0)
                 for i, n in enumerate(names)}
        out = self.frontend.run({"features": x, "feature_lens": lens, **feeds})
        frames, frame_lens = out["frames"], out["frame_lens"]
        for b, s in enumerate(ready):
            s._encoder_state = [out["new_" + n][b:b + 1] for n in names]
            s._window_frames = np.concatenate([s._window_frames, frames[b, :frame_lens[b]]])
        W, C = self.window_frames, self.chunk_size
        outs: List[List[np.ndarray]] = [[] for _ in ready]
        while True:
            rows = [b for b, s in enumerate(ready)
                    if s._window_frames.shape[0] >= W or (finals[b] and s._window_frames.shape[0])]
            if not rows:
                break
            window = np.zeros((len(rows), W, self.frame_dim), np.float32)
            window_lens = np.zeros(len(rows), np.int64)
            for r, b in enumerate(rows):
                buf = ready[b]._window_frames[:W]
                window[r, :buf.shape[0]], window_lens[r] = buf, buf.shape[0]
            res = self.encoder.run({
                "window": window, "window_lens": window_lens,
                "state.rnn_hidden": np.concatenate([ready[b]._rnn_hidden for b in rows], 0)})
            for r, b in enumerate(rows):
                s = ready[b]
                outs[b].append(res["encoder_out"][r, :min(C, int(window_lens[r]))])
                s._rnn_hidden = res["new_state.rnn_hidden"][r:r + 1]
                s._window_frames = s._window_frames[C:]
        enc_lens = np.array([sum(o.shape[0] for o in row) for row in outs], dtype=np.int64)
        enc = np.zeros((len(ready), int(enc_lens.max()), 2 * self.frame_dim), np.float32)
        for b, row in enumerate(outs):
            if row:
                enc[b, :enc_lens[b]] = np.concatenate(row)
        return enc, enc_lens

    def decode_stream(self, stream: "Stream") -> None:
        """Decode all of one stream's ready audio."""
        while self.decode_streams([stream]):
            pass


class Stream(SegmentStream):
    """One utterance's (or client's) audio, features, encoder and search state."""

    _resampler_class = StreamingResampler  # torchaudio's windowed-sinc kernel, in numpy

    def __init__(self, recognizer: Recognizer) -> None:
        self._start_stream(recognizer, StreamingFeatures(recognizer.feature_config),
                           np.zeros((0, recognizer.feature_dim), dtype=np.float32))
        if recognizer.frontend is not None:  # lc_bgru
            self._encoder_state = recognizer.frontend.zero_state(1)
            self._rnn_hidden = recognizer.encoder.zero_state(1)[0]
            self._window_frames = np.zeros((0, recognizer.frame_dim), np.float32)
        else:
            self._encoder_state = recognizer.encoder.zero_state(1)
        self._running_cmvn = (RunningMean(recognizer.feature_dim, recognizer.running_cmvn_frames)
                              if recognizer.running_cmvn_frames else None)

    @staticmethod
    def _as_samples(samples) -> np.ndarray:
        return np.asarray(samples, dtype=np.float32).reshape(-1)

    def _add_frames(self, frames: np.ndarray) -> None:
        if frames.shape[0]:
            if self._running_cmvn is not None:
                frames = self._running_cmvn(frames)
            self._pending = np.concatenate([self._pending, frames])
