"""Data augmentation: SpecAugment, speed perturbation, additive noise at a set SNR (real
recordings or generated), and silence margins. Room reverberation: :mod:`asr.reverb`."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn

from asr.audio import AudioError, load_audio, resample

log = logging.getLogger(__name__)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mix ``noise`` into ``wave`` at ``snr_db`` (signal power over noise power).

    Args:
        wave: (N,) speech.
        noise: (M,) noise; tiled when shorter, a random window is taken when longer.
        snr_db: target signal-to-noise ratio in dB.
    Returns:
        (N,) mixture.
    """
    n = wave.numel()
    if noise.numel() < n:
        noise = noise.repeat(n // noise.numel() + 1)
    start = 0
    if noise.numel() > n:
        start = int(torch.randint(0, noise.numel() - n + 1, (1,), generator=generator))
    noise = noise[start:start + n]
    p_signal = wave.square().mean().clamp(min=1e-10)
    p_noise = noise.square().mean().clamp(min=1e-10)
    scale = torch.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return wave + scale * noise


def speech_span(wave: torch.Tensor, sample_rate: int, threshold_db: float = 35.0):
    """(start, end) samples of the speech in ``wave`` (N,): from the first to the last 10 ms
    frame whose energy is within ``threshold_db`` of the loudest frame's. Energies are taken
    about the clip's mean, so a recording's DC offset does not count as speech."""
    hop = max(1, sample_rate // 100)
    n = wave.numel() // hop * hop
    if n == 0:
        return 0, wave.numel()
    energy = (wave[:n] - wave.mean()).reshape(-1, hop).square().mean(1) + 1e-12
    db = 10.0 * torch.log10(energy)
    active = torch.nonzero(db > db.max() - threshold_db).flatten()
    return int(active[0]) * hop, min(wave.numel(), (int(active[-1]) + 1) * hop)


def set_margins(wave: torch.Tensor, sample_rate: int, lead_s: float, trail_s: float,
                threshold_db: float = 35.0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The speech in ``wave`` (N,) with ``lead_s`` / ``trail_s`` seconds of margin around it.

    A margin is cut from the clip's own surroundings where it has them; where it has less
    (a tightly trimmed clip), white noise at the level of the clip's quietest 10 ms frame,
    on the clip's own DC offset, makes up the rest, so the join is not a jump to digital
    silence. Corpora differ in
    how much silence they leave around a word (FSDD: almost none; synthetic or Speech
    Commands clips: 0.1-0.2 s), and a model trained on one kind learns that as a cue.
    Returns (M,).
    """
    start, end = speech_span(wave, sample_rate, threshold_db)
    lead, trail = int(round(lead_s * sample_rate)), int(round(trail_s * sample_rate))
    out = wave[max(0, start - lead):min(wave.numel(), end + trail)]
    pad_lead, pad_trail = max(0, lead - start), max(0, end + trail - wave.numel())
    if pad_lead or pad_trail:
        hop = max(1, sample_rate // 100)
        n = wave.numel() // hop * hop
        dc = wave.mean()
        floor = ((wave[:n] - dc).reshape(-1, hop).square().mean(1).min().sqrt() if n
                 else wave.new_zeros(()))
        noise = lambda k: dc + floor * torch.randn(k, generator=generator, dtype=wave.dtype)  # noqa: E731
        out = torch.cat([noise(pad_lead), out, noise(pad_trail)])
    return out


def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int = 16000) -> torch.Tensor:
    """Change speed and pitch together by ``factor`` (Kaldi-style, by resampling).

    wave: (N,) -> (~N / factor,).
    """
    if factor == 1.0:
        return wave
    # Playing sample_rate*factor samples per second = resample from sr*factor to sr.
    return resample(wave, int(round(sample_rate * factor)), sample_rate)


def band_limit(wave: torch.Tensor, sample_rate: int, rate: Optional[int]) -> torch.Tensor:
    """Down- and up-sample through ``rate`` to mimic narrow-band audio. (N,) -> (N,)."""
    if not rate or rate >= sample_rate:
        return wave
    return resample(resample(wave, sample_rate, rate), rate, sample_rate)[: wave.numel()]


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width_ratio: float = 0.05  # max mask width as a fraction of the utterance
    time_width_max: int = 40
    # vocal-tract-length-style warp: each utterance's frequency axis is stretched by a
    # factor drawn from [1 - freq_warp, 1 + freq_warp] (0 = off), so new voices with
    # shorter or longer vocal tracts look like ones heard in training
    freq_warp: float = 0.0


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019), applied per utterance in training.

    forward(feats (B, T, D), lens (B,)) -> (B, T, D); masked bins are set to each
    utterance's mean so that normalised features stay centred.
    """

    def __init__(self, cfg: SpecAugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        c = self.cfg
        B, T, D = feats.shape
        feats = warp_frequency(feats, c.freq_warp) if c.freq_warp > 0 else feats.clone()
        for b in range(B):
            length = int(lens[b])
            fill = feats[b, :length].mean()
            for _ in range(c.freq_masks):
                w = int(torch.randint(0, c.freq_width + 1, (1,)))
                f0 = int(torch.randint(0, max(1, D - w), (1,)))
                feats[b, :, f0:f0 + w] = fill
            max_w = min(c.time_width_max, int(length * c.time_width_ratio))
            for _ in range(c.time_masks):
                w = int(torch.randint(0, max_w + 1, (1,)))
                t0 = int(torch.randint(0, max(1, length - w), (1,)))
                feats[b, t0:t0 + w, :] = fill
        return feats


def warp_frequency(feats: torch.Tensor, max_warp: float,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stretch each utterance's feature axis by its own factor (VTLP-like augmentation).

    feats (B, T, D) -> (B, T, D); alpha uniform in [1 - max_warp, 1 + max_warp] per
    utterance (see ``warp_features``).
    """
    alpha = 1.0 + max_warp * (2 * torch.rand(feats.shape[0], generator=generator) - 1)
    return warp_features(feats, alpha)


def warp_features(feats: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Stretch the feature (frequency) axis by ``alpha``: a vocal-tract-length warp.

    feats (B, T, D), alpha a float or (B,) -> (B, T, D). Output bin d reads input bin
    d / alpha (linear interpolation, clamped at the top bin): alpha > 1 moves formants
    up, as a shorter vocal tract does. alpha = 1 returns the features unchanged.
    """
    B, T, D = feats.shape
    alpha = torch.as_tensor(alpha, dtype=feats.dtype).reshape(-1, 1).expand(B, 1)
    src = (torch.arange(D, dtype=feats.dtype)[None, :] / alpha).clamp(max=D - 1)  # (B, D)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=D - 1)
    frac = (src - lo)[:, None, :]
    gather = lambda idx: feats.gather(2, idx[:, None, :].expand(B, T, D))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(hi) * frac


def colored_noise(num_samples: int, color: str = "white",
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Unit-variance white, pink or brown noise, (num_samples,), made on the spot so that
    nothing needs downloading."""
    white = torch.randn(num_samples, generator=generator)
    if color == "white":
        return white
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.numel(), dtype=torch.float32).clamp(min=1.0)
    exponent = {"pink": 0.5, "brown": 1.0}.get(color)
    if exponent is None:
        raise ValueError(f"noise color must be white, pink or brown, got {color!r}")
    noise = torch.fft.irfft(spec / f.pow(exponent), n=num_samples)
    return noise / noise.std().clamp(min=1e-8)


def choose(seq: Sequence, generator: Optional[torch.Generator] = None):
    """A random element of ``seq``."""
    return seq[int(torch.randint(0, len(seq), (1,), generator=generator))]


class NoiseBank:
    """Real noise recordings plus generated white/pink/brown noise."""

    def __init__(self, waves: Sequence[torch.Tensor] = (), colored_prob: float = 0.3) -> None:
        self.waves = [w for w in waves if w.numel() > 0]
        self.colored_prob = colored_prob

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], sample_rate: int = 16000,
                   colored_prob: float = 0.3) -> "NoiseBank":
        """The recordings of ``paths``; a file that cannot be read is left out after a
        warning naming it."""
        waves = []
        for path in paths:
            try:
                waves.append(load_audio(path, sample_rate))
            except AudioError as exc:
                log.warning("skipping noise %s", exc)
        return cls(waves, colored_prob)

    def sample(self, n: int, rng: random.Random) -> torch.Tensor:
        """(n,) noise."""
        if not self.waves or rng.random() < self.colored_prob:
            g = torch.Generator().manual_seed(rng.randrange(2**31))
            return colored_noise(n, rng.choice(["white", "pink", "brown"]), generator=g)
        w = rng.choice(self.waves)
        if w.numel() < n:
            w = w.repeat(n // w.numel() + 1)
        s = rng.randrange(0, w.numel() - n + 1)
        return w[s:s + n]
