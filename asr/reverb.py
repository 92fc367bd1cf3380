"""Room reverberation from synthetic impulse responses (no recorded rooms needed).

An impulse response is a direct-path impulse followed, after a short pre-delay, by a few
sparse early reflections and exponentially decaying Gaussian noise whose decay gives the
chosen RT60 (the time for the energy to fall by 60 dB). The direct-to-reverberant energy
ratio is drawn too, so some rooms sound near (dry) and some far (wet).
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch

__all__ = ["synthetic_rir", "reverberate"]


def synthetic_rir(rng: random.Random, sample_rate: int = 16000, rt60_s: Sequence[float] = (0.2, 0.9),
                  drr_db: Sequence[float] = (-3.0, 12.0)) -> torch.Tensor:
    """An impulse response (L,) with RT60 uniform in ``rt60_s`` and direct-to-reverberant
    ratio uniform in ``drr_db``; the direct path is sample 0 with amplitude 1."""
    rt60 = rng.uniform(*rt60_s)
    n = max(2, int(rt60 * sample_rate))  # -60 dB at the end
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=g) * torch.exp(-6.908 * t / rt60)  # ln(1000) = 6.908
    predelay = int(rng.uniform(0.002, 0.02) * sample_rate)
    tail[:predelay] = 0.0
    for _ in range(rng.randint(2, 6)):  # early reflections
        k = rng.randint(predelay, min(n - 1, predelay + int(0.05 * sample_rate)))
        tail[k] += rng.uniform(-1.0, 1.0) * 3.0 * float(tail.abs().max())
    energy = float(tail.square().sum())
    drr = rng.uniform(*drr_db)
    tail = tail * math.sqrt(10 ** (-drr / 10) / max(energy, 1e-12))
    tail[0] = 1.0
    return tail


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """wave (N,) convolved with rir (L,) -> (N + L - 1,), rescaled to the input's peak."""
    n = wave.numel() + rir.numel() - 1
    size = 1 << (n - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(wave, size) * torch.fft.rfft(rir, size), size)[:n]
    peak_in, peak_out = float(wave.abs().max()), float(out.abs().max())
    return out * (peak_in / peak_out) if peak_out > 1e-9 else out
