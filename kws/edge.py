"""Edge runtime for exported KWS models: numpy + onnxruntime only (soundfile optional, to
read files). Nothing here imports torch (tested in a subprocess).

The ONNX file carries everything needed (labels, feature config, window length, detector
defaults) in its metadata, so no side config is read.

    model = KWSModel("data/models/computer_crnn_int8.onnx")
    stream = model.stream()
    for chunk in chunks:               # (n,) float32 at model.sample_rate
        for det in stream.accept_waveform(chunk):
            print(det.time_s, det.label, det.score)
    stream.flush()

Two stream kinds: :class:`KeywordStream` runs the model on the last window every hop
(any model; the only path for bidirectional ones) and :class:`StatefulKeywordStream`
carries the GRU state and the convolution's frame context from hop to hop (models
exported with :func:`kws.export.export_streaming_onnx`). ``model.stream(mode=...)``
chooses; "auto" streams when the file has a streaming graph.
"""
from __future__ import annotations

import json
import math
from typing import Iterable, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from kws.detector import Detection, PosteriorDetector, target_indices
from kws.features_np import StreamingFeatures, compute_features, resample, window_features


class EdgeError(ValueError):
    """Bad model or audio; the message names the file."""


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    """(N,) float32 mono at ``sample_rate`` via soundfile; EdgeError names a bad file."""
    try:
        import soundfile as sf
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise EdgeError(f"{path}: reading audio files needs the 'soundfile' package") from exc
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise EdgeError(f"{path}: cannot decode audio ({exc})") from None
    if data.size == 0:
        raise EdgeError(f"{path}: empty audio (0 samples)")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise EdgeError(f"{path}: audio contains NaN or Inf samples")
    return resample(wave, sr, sample_rate).astype(np.float32)


class KWSModel:
    """A stateless, shareable model: ``predict`` on feature windows, ``classify`` on clips,
    ``stream()`` for a per-input :class:`KeywordStream`."""

    def __init__(self, path: str, num_threads: int = 1) -> None:
        self.path = str(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # int8 weights (DequantizeLinear on constants, see kws.export.quantize_int8) are
        # folded to float once at load instead of on every run
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgeError(f"{self.path}: cannot load ONNX model ({exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("model_type") != "kws_crnn":
            raise EdgeError(f"{self.path}: not a KWS CRNN model (model_type={meta.get('model_type')!r})")
        self.meta = meta
        self.labels: List[str] = json.loads(meta["labels"])
        self.task = meta.get("task", "commands")
        self.keyword = meta.get("keyword", "")
        self.feature_config = json.loads(meta["feature_config"])
        self.sample_rate = int(self.feature_config["sample_rate"])
        self.hop_length = int(self.feature_config["hop_length"])
        self.window_frames = int(meta["window_frames"])
        self.window_samples = int(meta["window_samples"])
        self.detector_config = json.loads(meta["detector"])
        self.targets = target_indices(self.labels)
        self.input_name = self.session.get_inputs()[0].name
        # a streaming-step graph (kws.export.export_streaming_onnx) also serves windows
        self.streaming = meta.get("graph") == "streaming_step"
        if self.streaming:
            self.state_shape = tuple(json.loads(meta["state_shape"]))  # (L, H)
            self.conv_kernel_t = int(meta["conv_kernel_t"])
            self.conv_stride_t = int(meta["conv_stride_t"])
        n_mels = int(self.feature_config["n_mels"])
        self.silence_frame = np.full(
            n_mels, 0.0 if self.feature_config["kind"] == "pcen" else
            math.log(float(self.feature_config.get("log_floor", 1e-6))), dtype=np.float32)

    # ---------------------------------------------------------------- clips
    def predict(self, feats: np.ndarray, batch: int = 256) -> np.ndarray:
        """feats (B, W, F) float32 windows -> posteriors (B, C)."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[1] != self.window_frames:
            raise EdgeError(f"{self.path}: expected features (B, {self.window_frames}, F), "
                            f"got {feats.shape}")
        if self.streaming:  # a zero state, the last step: the windowed computation
            outs = [self.step(feats[i:i + batch], self.zero_state(feats[i:i + batch].shape[0]))[0][:, -1]
                    for i in range(0, feats.shape[0], batch)]
        else:
            outs = [self.session.run(None, {self.input_name: feats[i:i + batch]})[0]
                    for i in range(0, feats.shape[0], batch)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)

    def zero_state(self, batch: int = 1) -> np.ndarray:
        """(L, B, H) zeros: the state at the start of a stream."""
        layers, hidden = self.state_shape
        return np.zeros((layers, batch, hidden), np.float32)

    def step(self, feats: np.ndarray, state: np.ndarray) -> tuple:
        """Streaming graph only. feats (B, LT + (K-1) ST, F), state (L, B, H) ->
        (posteriors (B, K, C), state (L, B, H))."""
        post, h = self.session.run(None, {"features": np.ascontiguousarray(feats, dtype=np.float32),
                                          "state": state})
        return post, h

    def fit_window(self, wave: np.ndarray) -> np.ndarray:
        """Center-crop or zero-pad a clip (N,) to one window with its context on both sides
        (context_samples + window_samples + context_samples,), as training makes them."""
        w = self.window_samples
        n = wave.shape[0]
        start = (n - w) // 2 - self.context_samples
        total = w + 2 * self.context_samples
        out = np.zeros(total, np.float32)
        a, b = max(start, 0), min(start + total, n)
        if b > a:
            out[a - start:b - start] = wave[a:b]
        return out

    @property
    def context_samples(self) -> int:
        """:attr:`kws.config.KWSConfig.context_samples` of the model's features."""
        return int(self.feature_config["n_fft"]) // 2 if self.feature_config.get("center", True) else 0

    def features(self, wave: np.ndarray) -> np.ndarray:
        """(N,) waveform -> (T, F) features (numpy, equal to asr.features within 1e-4)."""
        return compute_features(wave, self.feature_config)

    def window_features(self, window: np.ndarray) -> np.ndarray:
        """A window with its context (from :meth:`fit_window`) -> (window_frames, F): the
        frames the stream computes for the same audio (framed without padding)."""
        if not self.context_samples:
            return self.features(window)
        return compute_features(window, {**self.feature_config, "center": False})

    def classify(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Clips [(N_i,)] -> posteriors (B, C), one window per clip (centered)."""
        feats = np.stack([self.window_features(self.fit_window(np.asarray(w, np.float32))) for w in waves])
        return self.predict(feats)

    # ---------------------------------------------------------------- streams
    def stream_mode(self, mode: str = "auto") -> str:
        """The stream kind that ``mode`` gives with this model: "windowed" or "streaming"
        ("auto": streaming when the model has a streaming graph)."""
        if mode not in ("auto", "windowed", "streaming"):
            raise ValueError(f"mode must be 'auto', 'windowed' or 'streaming', got {mode!r}")
        if mode == "streaming" and not self.streaming:
            raise EdgeError(f"{self.path}: not a streaming-step model (export a unidirectional "
                            "model with 'python -m kws export --streaming'); use mode 'windowed'")
        return "streaming" if mode == "streaming" or (mode == "auto" and self.streaming) else "windowed"

    def stream(self, threshold: Optional[float] = None, smooth_hops: Optional[int] = None,
               refractory_s: Optional[float] = None, record: bool = False, mode: str = "auto"):
        """A per-input stream. ``mode`` (:meth:`stream_mode`): "windowed" (:class:`KeywordStream`:
        the model on the last window every hop), "streaming" (:class:`StatefulKeywordStream`:
        the recurrent state carried from hop to hop; streaming-step models only) or "auto"
        (streaming when the model has a streaming graph)."""
        kind = self.stream_mode(mode)
        d = dict(self.detector_config)
        if threshold is not None:
            d["threshold"] = threshold
        if smooth_hops is not None:
            d["smooth_hops"] = smooth_hops
        if refractory_s is not None:
            d["refractory_s"] = refractory_s
        if kind == "streaming":
            return StatefulKeywordStream(self, d, record=record)
        return KeywordStream(self, d, record=record)


class _DetectorStream:
    """What both keyword streams share: the model, the hop, the detector, sample counting,
    the recorded posteriors and the trailing-silence flush. Subclasses turn new feature
    frames into posteriors (:meth:`_frames_to_detections`)."""

    def __init__(self, model: KWSModel, detector: dict, record: bool) -> None:
        self.model = model
        self.hop_frames = max(1, int(round(detector["hop_s"] * model.sample_rate / model.hop_length)))
        self.detector = PosteriorDetector(
            model.labels, threshold=detector["threshold"], smooth_hops=detector["smooth_hops"],
            refractory_hops=int(round(detector["refractory_s"] / detector["hop_s"])))
        self.record = record

    def _reset_common(self) -> None:
        self.features.reset()
        self.detector.reset()
        self._samples = 0
        self.posteriors: List[np.ndarray] = []  # (C,) per hop, when record=True
        self.times: List[float] = []

    @property
    def seconds(self) -> float:
        return self._samples / self.model.sample_rate

    def accept_waveform(self, samples: np.ndarray) -> List[Detection]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._samples += samples.size
        new = self.features.accept(samples)
        if new.shape[0] == 0:
            return []
        return self._frames_to_detections(new)

    def _frames_to_detections(self, new: np.ndarray) -> List[Detection]:
        raise NotImplementedError

    def _push(self, p: np.ndarray, t: float, dets: List[Detection]) -> None:
        """One hop's posterior (C,) at time t (s) to the detector."""
        if self.record:
            self.posteriors.append(p)
            self.times.append(t)
        d = self.detector.push(p, t)
        if d is not None:
            dets.append(d)

    def flush(self, seconds: float = 0.3) -> List[Detection]:
        """Feed trailing silence so the end of the input reaches the network."""
        return self.accept_waveform(np.zeros(int(seconds * self.model.sample_rate), np.float32))


class KeywordStream(_DetectorStream):
    """Per-input state: streaming features, the last window of frames, the detector.

    accept_waveform(samples (n,)) -> [Detection]. The model runs once per hop on the last
    ``window_frames`` frames; before the stream has a full window, the missing frames are
    features of silence. Every chunk size gives the same result.

    Log-mel frames are computed once each. PCEN depends on where its smoother starts, and
    the model was trained on 1 s windows normalised on their own, so for a PCEN model the
    stream keeps mel power frames and normalises every window afresh
    (:func:`kws.features_np.window_features`), as in training and as ``classify`` does.
    """

    def __init__(self, model: KWSModel, detector: dict, record: bool = False) -> None:
        super().__init__(model, detector, record)
        self.per_window = model.feature_config["kind"] == "pcen"
        self.features = StreamingFeatures(model.feature_config, mel_only=self.per_window)
        self.reset()

    def reset(self) -> None:
        W = self.model.window_frames
        self._reset_common()
        # silence: mel power 0 (PCEN, normalised per window) or its log-mel frame
        silence = (np.zeros_like(self.model.silence_frame) if self.per_window
                   else self.model.silence_frame)
        self._hist = np.tile(silence, (W, 1))
        self._frames = 0  # frames seen so far

    def _frames_to_detections(self, new: np.ndarray) -> List[Detection]:
        W, hop = self.model.window_frames, self.hop_frames
        allf = np.concatenate([self._hist, new])  # row j is frame (self._frames - W + j)
        first = self._frames
        last = self._frames + new.shape[0] - 1
        ends = np.arange(((first + 1 + hop - 1) // hop) * hop - 1, last + 1, hop)  # frame k with (k+1) % hop == 0
        self._hist = allf[-W:]
        self._frames += new.shape[0]
        if ends.size == 0:
            return []
        rows = ends - (first - W)  # index in allf of each window's last frame
        st = allf.strides
        view = np.lib.stride_tricks.as_strided(
            allf, shape=(allf.shape[0] - W + 1, W, allf.shape[1]), strides=(st[0], st[0], st[1]))
        windows = view[rows - W + 1]
        if self.per_window:
            windows = window_features(windows, self.features.fe)
        probs = self.model.predict(windows)
        dets = []
        fr = self.model.hop_length / self.model.sample_rate
        for k, p in zip(ends, probs):
            self._push(p, float(k * fr), dets)
        return dets


class StatefulKeywordStream(_DetectorStream):
    """Hop-to-hop streaming without recomputation, for streaming-step models.

    accept_waveform(samples (n,)) -> [Detection], as :class:`KeywordStream`. Each log-mel
    frame is computed once; the frames not yet consumed by the convolution (its context)
    and the GRU state (``state`` input/output of the ONNX graph) are carried between calls,
    so each new frame passes through the network once. At every hop the detector gets the
    posterior of the last convolution step whose frames have all arrived (the
    convolution's stride, e.g. 80 ms, need not divide the 100 ms hop); that posterior
    equals the model run over all audio since the stream started (tested against torch).
    Hops before the first convolution step (LT frames) give no posterior.
    """

    def __init__(self, model: KWSModel, detector: dict, record: bool = False) -> None:
        if model.feature_config["kind"] == "pcen":
            raise EdgeError(f"{model.path}: streaming-step models take log-mel features")
        super().__init__(model, detector, record)
        self.features = StreamingFeatures(model.feature_config)
        self.lt, self.st = model.conv_kernel_t, model.conv_stride_t
        self.reset()

    def reset(self) -> None:
        self._reset_common()
        self._buf = np.zeros((0, int(self.model.feature_config["n_mels"])), np.float32)  # unconsumed frames
        self._state = self.model.zero_state(1)
        self._frames = 0
        self._steps = 0
        self._last: Optional[np.ndarray] = None  # posterior of the latest step

    def _frames_to_detections(self, new: np.ndarray) -> List[Detection]:
        first = self._frames
        self._frames += new.shape[0]
        self._buf = np.concatenate([self._buf, new])
        first_step = self._steps
        probs = np.zeros((0, len(self.model.labels)), np.float32)
        if self._buf.shape[0] >= self.lt:
            k = (self._buf.shape[0] - self.lt) // self.st + 1
            post, self._state = self.model.step(self._buf[None, : self.lt + (k - 1) * self.st], self._state)
            probs = post[0]
            self._buf = self._buf[k * self.st:]
            self._steps += k
        hop = self.hop_frames
        ends = np.arange(((first + 1 + hop - 1) // hop) * hop - 1, self._frames, hop)
        dets = []
        fr = self.model.hop_length / self.model.sample_rate
        for e in ends:
            if e + 1 < self.lt:
                continue
            j = (e + 1 - self.lt) // self.st  # the last step whose frames end at or before e
            self._push(probs[j - first_step] if j >= first_step else self._last, float(e * fr), dets)
        if probs.shape[0]:
            self._last = probs[-1]
        return dets


def detect_file(model: KWSModel, path: str, **stream_args) -> List[Detection]:
    stream = model.stream(**stream_args)
    wave = read_audio(path, model.sample_rate)
    dets = stream.accept_waveform(wave)
    return dets + stream.flush()


def pcm16_chunks(fileobj, chunk_samples: int) -> Iterable[np.ndarray]:
    """Raw little-endian 16-bit mono PCM from a binary stream -> float32 chunks."""
    leftover = b""
    while True:
        data = fileobj.read(chunk_samples * 2)
        if not data:
            break
        data = leftover + data
        cut = len(data) - len(data) % 2
        leftover = data[cut:]
        if cut:
            yield np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / 32768.0
