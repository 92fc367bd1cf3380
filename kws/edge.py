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
"""
from __future__ import annotations

import json
import math
from typing import Iterable, List, Optional, Sequence

import numpy as np
import onnxruntime as ort

from kws.detector import Detection, PosteriorDetector, target_indices
from kws.features_np import StreamingFeatures, compute_features, resample, window_features

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".sph")


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
        outs = [self.session.run(None, {self.input_name: feats[i:i + batch]})[0]
                for i in range(0, feats.shape[0], batch)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)

    def fit_window(self, wave: np.ndarray) -> np.ndarray:
        """Center-crop or zero-pad a clip (N,) to one window (window_samples,)."""
        n, w = wave.shape[0], self.window_samples
        if n >= w:
            start = (n - w) // 2
            return wave[start:start + w]
        left = (w - n) // 2
        return np.pad(wave, (left, w - n - left))

    def features(self, wave: np.ndarray) -> np.ndarray:
        """(N,) waveform -> (T, F) features (numpy, equal to asr.features within 1e-4)."""
        return compute_features(wave, self.feature_config)

    def classify(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Clips [(N_i,)] -> posteriors (B, C), one window per clip (centered)."""
        feats = np.stack([self.features(self.fit_window(np.asarray(w, np.float32))) for w in waves])
        return self.predict(feats)

    # ---------------------------------------------------------------- streams
    def stream(self, threshold: Optional[float] = None, smooth_hops: Optional[int] = None,
               refractory_s: Optional[float] = None, record: bool = False) -> "KeywordStream":
        d = dict(self.detector_config)
        if threshold is not None:
            d["threshold"] = threshold
        if smooth_hops is not None:
            d["smooth_hops"] = smooth_hops
        if refractory_s is not None:
            d["refractory_s"] = refractory_s
        return KeywordStream(self, d, record=record)


class KeywordStream:
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
        self.model = model
        self.hop_frames = max(1, int(round(detector["hop_s"] * model.sample_rate / model.hop_length)))
        self.detector = PosteriorDetector(
            model.labels, threshold=detector["threshold"], smooth_hops=detector["smooth_hops"],
            refractory_hops=int(round(detector["refractory_s"] / detector["hop_s"])))
        self.per_window = model.feature_config["kind"] == "pcen"
        self.features = StreamingFeatures(model.feature_config, mel_only=self.per_window)
        self.record = record
        self.reset()

    def reset(self) -> None:
        W = self.model.window_frames
        self.features.reset()
        self.detector.reset()
        # silence: mel power 0 (PCEN, normalised per window) or its log-mel frame
        silence = (np.zeros_like(self.model.silence_frame) if self.per_window
                   else self.model.silence_frame)
        self._hist = np.tile(silence, (W, 1))
        self._frames = 0  # frames seen so far
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
            t = float(k * fr)
            if self.record:
                self.posteriors.append(p)
                self.times.append(t)
            d = self.detector.push(p, t)
            if d is not None:
                dets.append(d)
        return dets

    def flush(self, seconds: float = 0.3) -> List[Detection]:
        """Feed trailing silence so the end of the input reaches the window."""
        return self.accept_waveform(np.zeros(int(seconds * self.model.sample_rate), np.float32))


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
