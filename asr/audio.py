"""Audio loading with resampling, and an explicit policy for bad files.

soundfile does all I/O (torchaudio's I/O is deprecated); torchaudio only resamples.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


class AudioError(ValueError):
    """Raised when an audio file cannot be used; the message names the file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    import torchaudio.transforms as T

    g = math.gcd(orig, new)
    return T.Resample(orig // g, new // g)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample a waveform.

    Args:
        wave: (..., N) float waveform.
        orig_sr, new_sr: sample rates in Hz.
    Returns:
        (..., N') waveform at ``new_sr``.
    """
    if orig_sr == new_sr:
        return wave
    with torch.no_grad():
        return _resampler(int(orig_sr), int(new_sr))(wave)


def load_audio(
    path: PathLike,
    sample_rate: Optional[int] = 16000,
    offset: float = 0.0,
    duration: Optional[float] = None,
    min_samples: int = 1,
) -> torch.Tensor:
    """Read a mono float32 waveform, resampled to ``sample_rate``.

    Any soundfile-readable format works (wav, flac, ogg, ...). Multi-channel audio is
    averaged to mono. Raises :class:`AudioError` naming the file when it is missing,
    unreadable, empty, or not finite.

    Args:
        path: audio file.
        sample_rate: target rate in Hz; ``None`` keeps the file's rate.
        offset, duration: optional segment in seconds.
        min_samples: fewer samples than this (after resampling) is an error.
    Returns:
        (N,) float32 tensor in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    try:
        info = sf.info(str(path))
        start = int(round(offset * info.samplerate))
        frames = -1 if duration is None else int(round(duration * info.samplerate))
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(path, f"cannot decode audio ({exc})") from None
    wave = checked_mono(data, path)
    if sample_rate is not None and sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    if wave.numel() < min_samples:
        raise AudioError(path, f"too short ({wave.numel()} samples)")
    return wave


def checked_mono(data: np.ndarray, where) -> torch.Tensor:
    """Decoded samples (N, C) -> (N,) float32 mono; AudioError naming ``where`` when there
    are none or any is not finite."""
    if data.size == 0:
        raise AudioError(where, "empty audio (0 samples)")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(wave).all():
        raise AudioError(where, "audio contains NaN or Inf samples")
    return wave


def audio_info(path: PathLike) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the header; AudioError names a bad file."""
    if not Path(path).is_file():
        raise AudioError(path, "no such file")
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise AudioError(path, f"cannot read header ({exc})") from None
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    return info.frames / info.samplerate, info.samplerate


def save_audio(path: PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform (N,) as 16-bit PCM (format from the suffix)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
