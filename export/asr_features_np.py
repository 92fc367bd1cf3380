"""The ASR streaming front end in numpy: :class:`asr.streaming.features.StreamingFeatures`
without torch, for the onnxruntime recognizer.

The same frames as the torch form: audio in pieces of any size, each frame released once
its window's samples are in, the end reflected at :meth:`StreamingFeatures.flush` as the
offline centered STFT does. The mel, log and DC steps are ``kws.features_np``'s; the
cepstral lifter is added here. CMVN is not applied (``encoder.onnx`` holds it).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from kws.features_np import _frames, _Frontend


def dct_basis(num_bands: int, order: int) -> np.ndarray:
    """``asr.features.dct_basis``: the ``order`` lowest orthonormal DCT-II rows (K, D)."""
    n = np.arange(num_bands, dtype=np.float64)
    k = np.arange(min(order, num_bands), dtype=np.float64)
    basis = np.cos(np.pi / num_bands * (n[None, :] + 0.5) * k[:, None])
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


class StreamingFeatures:
    """Feature state of one utterance.

    ``accept(samples (N,)) -> frames (T, D)``, the frames that became computable;
    ``flush() -> frames (T, D)``, the rest. ``feature_config``: the fields of
    :class:`asr.features.FeatureConfig` as a dict (the ONNX metadata's ``feature_config``).
    """

    def __init__(self, feature_config: dict) -> None:
        if feature_config.get("kind", "logmel") != "logmel":
            raise ValueError("streaming features support features.kind 'logmel', not "
                             f"{feature_config.get('kind')!r}")
        self.fe = _Frontend(feature_config)
        self.dim = int(feature_config["n_mels"])
        lifter = feature_config.get("cepstral_lifter")
        basis = dct_basis(self.dim, int(lifter)) if lifter is not None else None
        self.lifter = basis.T @ basis if basis is not None else None  # (D, D)
        self.hop, self.n_fft = self.fe.hop, self.fe.n_fft
        self.pad = self.n_fft // 2 if feature_config.get("center", True) else 0
        self.center = bool(feature_config.get("center", True))
        self.buffer = np.zeros(0, dtype=np.float64)
        self.buffer_start = 0  # global index of buffer[0]
        self.received = 0
        self.next_frame = 0
        self.finished = False

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """samples: (N,) float audio at the model's rate -> new frames (T, D) float32."""
        if self.finished:
            raise RuntimeError("accept() after flush(): reset the stream first")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1).astype(np.float64)
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.size
        if self.received <= self.pad:  # the start's reflection needs samples 1..pad
            return self._empty()
        end = (self.received - self.n_fft + self.pad) // self.hop + 1
        return self._frames(end, last=None)

    def flush(self) -> np.ndarray:
        """The frames left at the end of the utterance, (T, D)."""
        self.finished = True
        if self.received == 0:
            return self._empty()
        if self.center:
            total = self.received // self.hop + 1
        else:
            total = max(0, (self.received - self.n_fft) // self.hop + 1)
        return self._frames(total, last=self.received - 1)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def _frames(self, end: int, last: Optional[int]) -> np.ndarray:
        """Frames next_frame..end-1; ``last``: the final sample's index once known."""
        if end <= self.next_frame:
            return self._empty()
        first = self.next_frame * self.hop - self.pad
        i = np.arange(first, (end - 1) * self.hop - self.pad + self.n_fft)
        top = self.received - 1 if last is None else last
        i = np.where(i < 0, -i, np.where(i > top, 2 * top - i, i))  # reflect at both ends
        i = np.minimum(np.maximum(i, 0), top)
        local = i - self.buffer_start
        if (local < 0).any():
            raise RuntimeError("streaming features trimmed samples a frame still needs")
        segment = np.ascontiguousarray(self.buffer[local])
        count = end - self.next_frame
        mel = self.fe.mel_power(_frames(segment, self.n_fft, self.hop, count))
        feats, _ = self.fe.finish(mel, None)
        if self.lifter is not None:
            feats = feats @ self.lifter
        self.next_frame = end
        keep_from = max(0, self.next_frame * self.hop - self.pad - 1)
        self.buffer = self.buffer[keep_from - self.buffer_start:]
        self.buffer_start = keep_from
        return feats.astype(np.float32)


class RunningMean:
    """``asr.model.RunningMeanNormalization`` in numpy, for cmvn "running": each frame minus
    the causal running mean m_t = m_{t-1} + (x_t - m_{t-1}) / min(t, frames), carried
    across calls. ``(T, D) -> (T, D)``; the global statistics follow in the graph."""

    def __init__(self, dim: int, frames: int) -> None:
        self.frames = int(frames)
        self.mean = np.zeros(dim, dtype=np.float32)
        self.count = 0

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        out = np.empty_like(feats, dtype=np.float32)
        for t in range(feats.shape[0]):
            self.count += 1
            rate = np.float32(1.0 / min(self.count, self.frames))
            self.mean = self.mean + (feats[t] - self.mean) * rate
            out[t] = feats[t] - self.mean
        return out
