"""Log-mel and PCEN features in numpy alone, matching :mod:`asr.features` (torch).

Used by the edge runtime, which must not import torch. ``feature_config`` is a plain dict
with the fields of :class:`asr.features.FeatureConfig` (it travels in the ONNX metadata).

Two forms:
- :func:`compute_features` - a whole waveform, centered STFT with reflect padding, the same
  frames as ``asr.features.FeatureExtractor``.
- :class:`StreamingFeatures` - the same frames, produced as samples arrive. The start is
  reflect-padded like the offline form, so every frame but the last ``n_fft // 2 / hop``
  ones equals the offline frame; PCEN's smoother carries its state across chunks.
  ``mel_only=True`` returns mel power frames instead, for callers that normalise windows
  themselves (:func:`window_features`).
- :func:`window_features` - features of windows of mel power frames, each computed as if
  the window were the whole input: for PCEN the smoother starts afresh in every window,
  as it does for the 1 s training windows (the keyword stream uses this for PCEN models).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    mel = f / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                f_max: Optional[float] = None) -> np.ndarray:
    """Slaney mel filterbank (torchaudio ``melscale_fbanks(norm='slaney', mel_scale='slaney')``).

    Returns:
        (n_fft // 2 + 1, n_mels) float32 matrix.
    """
    f_max = f_max or sample_rate / 2.0
    n_freqs = n_fft // 2 + 1
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]
    return fb.astype(np.float32)


def pcen_smoothing_coef(time_constant: float, sample_rate: int, hop_length: int) -> float:
    t_frames = time_constant * sample_rate / hop_length
    return (math.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2)


class _Frontend:
    """Shared constants: window, filterbank, PCEN parameters."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = dict(cfg)
        self.kind = cfg["kind"]
        if self.kind not in ("logmel", "pcen"):
            raise ValueError(f"features.kind must be 'logmel' or 'pcen', got {self.kind!r}")
        if cfg.get("pcen_trainable") and self.kind == "pcen" and "pcen_params" not in cfg:
            raise ValueError("trainable PCEN needs its learned 'pcen_params' in the config")
        self.n_fft = int(cfg["n_fft"])
        self.hop = int(cfg["hop_length"])
        win_length = int(cfg["win_length"])
        # periodic Hann (torch.hann_window default), zero-padded to n_fft in the middle
        n = np.arange(win_length)
        win = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
        left = (self.n_fft - win_length) // 2
        self.window = np.zeros(self.n_fft, dtype=np.float64)
        self.window[left:left + win_length] = win
        # Kaldi-style: each frame less the mean of the samples under its window
        self.dc_support = slice(left, left + win_length) if cfg.get("remove_dc") else None
        self.fbank = mel_filters(int(cfg["sample_rate"]), self.n_fft, int(cfg["n_mels"]),
                                 float(cfg["f_min"]), cfg.get("f_max")).astype(np.float64)
        self.log_floor = float(cfg.get("log_floor", 1e-6))
        if self.kind == "pcen":
            p = cfg.get("pcen_params")  # learned per-channel values, when trainable
            n_mels = int(cfg["n_mels"])
            if p:
                self.s = np.asarray(p["s"], dtype=np.float64)
                self.alpha = np.asarray(p["alpha"], dtype=np.float64)
                self.delta = np.asarray(p["delta"], dtype=np.float64)
                self.r = np.asarray(p["r"], dtype=np.float64)
            else:
                s = pcen_smoothing_coef(float(cfg["pcen_time_constant"]), int(cfg["sample_rate"]),
                                        self.hop)
                self.s = np.full(n_mels, s)
                self.alpha = np.full(n_mels, float(cfg["pcen_alpha"]))
                self.delta = np.full(n_mels, float(cfg["pcen_delta"]))
                self.r = np.full(n_mels, float(cfg["pcen_r"]))
            self.s = np.minimum(self.s, 1.0)
            self.eps = float(cfg["pcen_eps"])
            self.scale = float(cfg["pcen_input_scale"])

    def mel_power(self, frames: np.ndarray) -> np.ndarray:
        """frames (T, n_fft) -> mel power (T, n_mels)."""
        if self.dc_support is not None:
            frames = frames - frames[:, self.dc_support].mean(axis=-1, keepdims=True)
        spec = np.fft.rfft(frames * self.window, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2
        return power @ self.fbank

    def pcen(self, mel: np.ndarray, m_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mel (..., T, C) power, m_prev (..., C) smoother state -> (pcen (..., T, C),
        new state (..., C)); leading dimensions are independent inputs (windows)."""
        energy = np.sqrt(np.maximum(mel, 0.0)) * self.scale
        m = np.empty_like(energy)
        s, prev = self.s, m_prev
        for t in range(energy.shape[-2]):  # the EMA M[t] = (1 - s) M[t-1] + s E[t]
            prev = (1.0 - s) * prev + s * energy[..., t, :]
            m[..., t, :] = prev
        smooth = np.exp(-self.alpha * (math.log(self.eps) + np.log1p(m / self.eps)))
        out = (energy * smooth + self.delta) ** self.r - self.delta ** self.r
        return out, prev

    def finish(self, mel: np.ndarray, state: Optional[np.ndarray]):
        """mel power (..., T, C) -> features (..., T, C) and the PCEN state (None: a fresh
        start, M[-1] = 1 as in asr.features)."""
        if self.kind == "pcen":
            if state is None:
                state = np.ones(mel.shape[:-2] + mel.shape[-1:])
            return self.pcen(mel, state)
        return np.log(mel + self.log_floor), state


def _frames(padded: np.ndarray, n_fft: int, hop: int, count: int) -> np.ndarray:
    """(count, n_fft) strided view of frames starting every ``hop`` samples."""
    st = padded.strides[0]
    return np.lib.stride_tricks.as_strided(padded, shape=(count, n_fft), strides=(hop * st, st))


def compute_features(wave: np.ndarray, cfg: dict) -> np.ndarray:
    """Whole-waveform features, equal to ``asr.features.FeatureExtractor`` (center=True).

    Args:
        wave: (N,) float waveform at ``cfg['sample_rate']``.
        cfg: feature config dict.
    Returns:
        (T, n_mels) float32 features, T = 1 + N // hop.
    """
    fe = _Frontend(cfg)
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    pad = fe.n_fft // 2
    if wave.size <= pad:  # reflect needs more samples than the pad; torch raises here too
        raise ValueError(f"need more than {pad} samples for features, got {wave.size}")
    padded = np.pad(wave, (pad, pad), mode="reflect") if cfg.get("center", True) else wave
    count = 1 + (padded.size - fe.n_fft) // fe.hop
    mel = fe.mel_power(_frames(padded, fe.n_fft, fe.hop, count))
    out, _ = fe.finish(mel, None)
    return out.astype(np.float32)


def window_features(mel_windows: np.ndarray, fe: "_Frontend") -> np.ndarray:
    """mel power windows (K, W, C) -> features (K, W, C) float32, each window on its own
    (PCEN smoother restarted per window, like the training windows)."""
    out, _ = fe.finish(np.asarray(mel_windows, dtype=np.float64), None)
    return out.astype(np.float32)


class StreamingFeatures:
    """Incremental features: ``accept(samples (n,)) -> new frames (k, n_mels)``.

    Frame ``i`` is centered at sample ``i * hop``; it is emitted once samples up to
    ``i * hop + n_fft // 2`` have arrived. The first ``n_fft // 2`` samples are reflected to
    the left, as the offline centered STFT does. ``mel_only=True``: the frames are mel
    power (no log, no PCEN).
    """

    def __init__(self, cfg: dict, mel_only: bool = False) -> None:
        self.fe = _Frontend(cfg)
        self.mel_only = mel_only
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float64)  # samples from the next frame's start on
        self._started = False
        self._pcen_state: Optional[np.ndarray] = None
        self.frames_out = 0

    def accept(self, samples: np.ndarray) -> np.ndarray:
        fe = self.fe
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        self._buf = np.concatenate([self._buf, samples]) if self._buf.size else samples.copy()
        pad = fe.n_fft // 2
        if not self._started:
            if self._buf.size <= pad:
                return np.zeros((0, fe.fbank.shape[1]), dtype=np.float32)
            self._buf = np.concatenate([self._buf[1:pad + 1][::-1], self._buf])
            self._started = True
        if self._buf.size < fe.n_fft:
            return np.zeros((0, fe.fbank.shape[1]), dtype=np.float32)
        count = 1 + (self._buf.size - fe.n_fft) // fe.hop
        mel = fe.mel_power(_frames(self._buf, fe.n_fft, fe.hop, count))
        if self.mel_only:
            out = mel
        else:
            out, self._pcen_state = fe.finish(mel, self._pcen_state)
        self._buf = self._buf[count * fe.hop:]
        self.frames_out += count
        return out.astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling by FFT (numpy only), for files at another rate.

    wave: (N,) -> (round(N * new_sr / orig_sr),).
    """
    if orig_sr == new_sr:
        return wave
    n = wave.shape[0]
    m = int(round(n * new_sr / orig_sr))
    spec = np.fft.rfft(wave)
    keep = min(spec.size, m // 2 + 1)
    out = np.zeros(m // 2 + 1, dtype=complex)
    out[:keep] = spec[:keep]
    return (np.fft.irfft(out, n=m) * (m / n)).astype(np.float32)
