"""Audio loading with resampling, and an explicit policy for bad files.

soundfile does all I/O (torchaudio's I/O is deprecated); torchaudio only resamples.
"""
from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: a file that decodes to less than this share of the frames its header promises is truncated
MIN_DECODED_SHARE = 0.9

#: headerless audio (this suffix, any case) is read as CMU AN4's raw release has it
#: (an4_raw.bigendian): 16 kHz, 16-bit signed, big-endian, mono
RAW_SUFFIX = ".raw"
RAW_FORMAT = {"format": "RAW", "samplerate": 16000, "channels": 1, "subtype": "PCM_16",
              "endian": "BIG"}


def _raw_args(path: PathLike) -> dict:
    """soundfile's format arguments for ``path``: :data:`RAW_FORMAT` for ``.raw``, else none."""
    return dict(RAW_FORMAT) if Path(path).suffix.lower() == RAW_SUFFIX else {}


def _info(path: PathLike):
    """``sf.info`` of ``path``; for headerless ``.raw``, the same fields from :data:`RAW_FORMAT`."""
    raw = _raw_args(path)
    if not raw:
        return sf.info(str(path))
    with sf.SoundFile(str(path), **raw) as f:
        return SimpleNamespace(samplerate=f.samplerate, frames=f.frames, channels=f.channels,
                               format="RAW")


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
    unreadable, empty, not finite, or truncated: fewer than :data:`MIN_DECODED_SHARE` of the
    frames its header promises decode (checked where the header counts them exactly, see
    :func:`frame_count_is_exact`; e.g. an MP3 cut short, whose header still holds its length).

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
        info = _info(path)
        start = int(round(offset * info.samplerate))
        frames = -1 if duration is None else int(round(duration * info.samplerate))
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True,
                           **_raw_args(path))
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(path, f"cannot decode audio ({exc})") from None
    promised = info.frames - start if frames < 0 else min(frames, info.frames - start)
    if len(data) < MIN_DECODED_SHARE * promised and frame_count_is_exact(path, info):
        raise AudioError(path, f"truncated: {len(data)} of the {promised} frames its header "
                         f"promises decode ({len(data) / sr:.2f} of {promised / sr:.2f} s)")
    wave = checked_mono(data, path)
    if sample_rate is not None and sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    if wave.numel() < min_samples:
        raise AudioError(path, f"too short ({wave.numel()} samples)")
    return wave


def frame_count_is_exact(path: PathLike, info) -> bool:
    """Whether ``info.frames`` (``sf.info`` of ``path``) is the count the file states, not an
    estimate. MP3 states it only in a Xing/Info/VBRI header in its first frame; without one,
    libmpg123 estimates it from the file size and the first frame's bit rate (far off for
    variable bit rate), so such a file is never called truncated."""
    if info.format != "MP3":
        return True
    with open(path, "rb") as f:
        head, skip = f.read(10), 0
        if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: skip it
            for byte in head[6:10]:  # its size, 7 bits a byte
                skip = skip << 7 | byte & 0x7F
            skip += 10 + (10 if head[5] & 0x10 else 0)  # its header, and footer if flagged
        f.seek(skip)
        start = f.read(8192)
    sync = re.search(rb"\xff[\xe0-\xff]", start)  # the first frame header
    return sync is not None and any(
        tag in start[sync.start(): sync.start() + 200] for tag in (b"Xing", b"Info", b"VBRI"))


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
        info = _info(path)
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
