"""Log-mel filterbanks and PCEN, computed in torch.

The mel filters are Slaney-style (librosa's default) and PCEN follows
Wang et al. 2017, "Trainable Frontend For Robust and Far-Field Keyword Spotting";
both are checked against librosa in the tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torchaudio.functional as AF


@dataclass
class FeatureConfig:
    kind: str = "logmel"  # "logmel" | "pcen"
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 80
    f_min: float = 20.0
    f_max: Optional[float] = None
    center: bool = True
    log_floor: float = 1e-6
    # subtract each frame's mean sample (over the window's support) before windowing, as
    # Kaldi does: a recording's DC offset is the channel's, not the speaker's, and a Hann
    # window leaks it into the lowest mel band, where it dominates the quiet frames
    remove_dc: bool = False
    # keep only each frame's `cepstral_lifter` lowest cosine components across the bands (the
    # spectral envelope, as MFCCs do), mapped back to bands: narrow low mel bands resolve the
    # pitch harmonics, which say who speaks, not what. None keeps the full spectrum.
    cepstral_lifter: Optional[int] = None
    # PCEN (defaults are librosa's)
    pcen_time_constant: float = 0.4
    pcen_alpha: float = 0.98
    pcen_delta: float = 2.0
    pcen_r: float = 0.5
    pcen_eps: float = 1e-6
    pcen_trainable: bool = False
    pcen_input_scale: float = 2.0**31  # librosa's docs scale magnitudes like int32 audio


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                f_max: Optional[float] = None) -> torch.Tensor:
    """Slaney mel filterbank, equal to ``librosa.filters.mel`` defaults.

    Returns:
        (n_fft // 2 + 1, n_mels) matrix F, so that mel = power_spec (..., T, F) @ F.
    """
    return AF.melscale_fbanks(
        n_freqs=n_fft // 2 + 1, f_min=f_min, f_max=f_max or sample_rate / 2.0,
        n_mels=n_mels, sample_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )


def dct_basis(num_bands: int, order: int, device=None, dtype=None) -> torch.Tensor:
    """The ``order`` lowest orthonormal DCT-II vectors over ``num_bands`` bands: (K, D) rows.

    ``x @ B.T @ B`` projects x (..., D) onto its K smoothest cosine components.
    """
    n = torch.arange(num_bands, device=device, dtype=dtype)
    k = torch.arange(min(order, num_bands), device=device, dtype=dtype)
    basis = torch.cos(torch.pi / num_bands * (n[None, :] + 0.5) * k[:, None])
    return basis / basis.norm(dim=1, keepdim=True)


def reflect_pad_within_lengths(wave: torch.Tensor, wave_lens: Optional[torch.Tensor],
                               pad: int) -> torch.Tensor:
    """Reflect-pad each row of wave (B, N) by ``pad`` samples on both sides, the right side
    reflected about the row's own last valid sample (wave_lens (B,); None: N) -> (B, N + 2 pad).

    For a full-length row this is ``F.pad(..., mode="reflect")`` (torch.stft's center=True
    padding). A row too short to reflect ``pad`` samples is clamped at its ends instead of
    failing. Samples past ``wave_lens + pad`` fill no valid frame; they repeat the ends.
    """
    B, N = wave.shape
    if wave_lens is None:
        wave_lens = torch.full((B,), N, dtype=torch.long, device=wave.device)
    last = (wave_lens.to(wave.device).long() - 1).clamp(min=0)[:, None]  # (B, 1)
    i = torch.arange(-pad, N + pad, device=wave.device)[None, :]  # (1, N + 2 pad)
    idx = torch.where(i < 0, -i, torch.where(i > last, 2 * last - i, i))
    idx = torch.minimum(idx.clamp(min=0), last)
    return wave.gather(1, idx)


class MelSpectrogram(nn.Module):
    """Power mel spectrogram.

    forward(wave (B, N), wave_lens (B,) or None) -> (B, T, n_mels), T = 1 + N // hop
    (center) or 1 + (N - n_fft) // hop (no centering). A frame within an utterance's
    ``num_frames`` depends only on that utterance's samples.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.register_buffer(
            "fbank", mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max),
            persistent=False,
        )

    def forward(self, wave: torch.Tensor, wave_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """wave (B, N), wave_lens (B,) valid samples (None: all N) -> power mel (B, T, n_mels)."""
        c = self.cfg
        if c.center:
            # pad each utterance by reflection at its own end, not at the batch's: a frame
            # within an utterance then reads only its samples, the same alone or batched
            wave = reflect_pad_within_lengths(wave, wave_lens, c.n_fft // 2)
        return self.from_padded(wave)

    def from_padded(self, wave: torch.Tensor) -> torch.Tensor:
        """Frames of an already padded wave (B, N') -> power mel (B, T, n_mels), T = 1 +
        (N' - n_fft) // hop: the step after padding, which streaming reuses on its windows."""
        c = self.cfg
        if c.remove_dc:
            spec = self._stft_without_dc(wave)
        else:
            spec = torch.stft(
                wave, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                window=self.window, center=False, return_complex=True,
            ).transpose(1, 2)  # (B, T, F)
        power = spec.real.square() + spec.imag.square()
        return power @ self.fbank  # (B, T, n_mels)

    def _stft_without_dc(self, wave: torch.Tensor) -> torch.Tensor:
        """torch.stft's frames of an already padded wave (B, N'), each less the mean of the
        samples under its window -> complex (B, T, F)."""
        c = self.cfg
        frames = wave.unfold(-1, c.n_fft, c.hop_length)  # (B, T, n_fft)
        left = (c.n_fft - c.win_length) // 2
        support = frames[..., left:left + c.win_length]
        windowed = (support - support.mean(-1, keepdim=True)) * self.window
        return torch.fft.rfft(windowed, n=c.n_fft)  # same bins: only the phase's origin moves

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames produced for (B,) sample counts."""
        c = self.cfg
        if c.center:
            return num_samples // c.hop_length + 1
        return torch.clamp((num_samples - c.n_fft) // c.hop_length + 1, min=0)


def pcen_smoothing_coef(time_constant: float, sample_rate: int, hop_length: int) -> float:
    """The EMA coefficient s for a time constant in seconds (librosa's formula)."""
    t_frames = time_constant * sample_rate / hop_length
    return (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)


class PCEN(nn.Module):
    """Per-channel energy normalization.

    PCEN(E) = (E / (eps + M)^alpha + delta)^r - delta^r,  M[t] = (1 - s) M[t-1] + s E[t],
    with M[-1] = 1 as librosa's default ``zi`` gives. With ``trainable=True`` alpha, delta, r and s
    are learned per channel (kept positive through a log parameterisation).

    forward(energy (B, T, C)) -> (B, T, C).
    """

    def __init__(self, num_channels: int, s: float, alpha: float = 0.98, delta: float = 2.0,
                 r: float = 0.5, eps: float = 1e-6, trainable: bool = False) -> None:
        super().__init__()
        self.eps = eps
        init = {
            "log_s": math.log(s), "log_alpha": math.log(alpha),
            "log_delta": math.log(delta), "log_r": math.log(r),
        }
        for name, value in init.items():
            tensor = torch.full((num_channels,), value)
            if trainable:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)

    def smooth(self, energy: torch.Tensor) -> torch.Tensor:
        """The EMA M over time. energy: (B, T, C) -> (B, T, C)."""
        s = self.log_s.exp().clamp(max=1.0)
        x = energy.transpose(1, 2)  # (B, C, T)
        # Zero-state response (lfilter is C++ and differentiable) plus the decay of the
        # initial state M[-1] = 1: (1 - s)^(t + 1).
        a = torch.stack([torch.ones_like(s), s - 1.0], dim=-1)  # (C, 2)
        b = torch.stack([s, torch.zeros_like(s)], dim=-1)
        m = AF.lfilter(x, a, b, clamp=False, batching=True)
        t = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
        m = m + torch.pow((1.0 - s)[:, None], t)
        return m.transpose(1, 2)

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        m = self.smooth(energy)
        alpha, delta, r = self.log_alpha.exp(), self.log_delta.exp(), self.log_r.exp()
        smooth = torch.exp(-alpha * (math.log(self.eps) + torch.log1p(m / self.eps)))
        return (energy * smooth + delta).pow(r) - delta.pow(r)


class FeatureExtractor(nn.Module):
    """Waveform -> features, the front end shared by ASR and KWS.

    forward(wave (B, N), wave_lens (B,) or None) -> (feats (B, T, D), feat_lens (B,)).
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = MelSpectrogram(cfg)
        self.pcen: Optional[PCEN] = None
        if cfg.kind == "pcen":
            s = pcen_smoothing_coef(cfg.pcen_time_constant, cfg.sample_rate, cfg.hop_length)
            self.pcen = PCEN(cfg.n_mels, s, cfg.pcen_alpha, cfg.pcen_delta, cfg.pcen_r,
                             cfg.pcen_eps, trainable=cfg.pcen_trainable)
        elif cfg.kind != "logmel":
            raise ValueError(f"features.kind must be 'logmel' or 'pcen', got {cfg.kind!r}")
        lifter = None
        if cfg.cepstral_lifter is not None:
            if not 1 <= cfg.cepstral_lifter <= cfg.n_mels:
                raise ValueError(f"features.cepstral_lifter must lie in [1, n_mels={cfg.n_mels}], "
                                 f"got {cfg.cepstral_lifter}")
            basis = dct_basis(cfg.n_mels, cfg.cepstral_lifter)
            lifter = basis.T @ basis  # (D, D) projection onto the smooth components
        self.register_buffer("lifter", lifter, persistent=False)

    @property
    def dim(self) -> int:
        return self.cfg.n_mels

    def forward(self, wave: torch.Tensor, wave_lens: Optional[torch.Tensor] = None):
        if wave_lens is None:
            wave_lens = torch.full((wave.shape[0],), wave.shape[-1], dtype=torch.long,
                                   device=wave.device)
        feats = self.from_mel(self.mel(wave, wave_lens))
        lens = torch.clamp(self.mel.num_frames(wave_lens), max=feats.shape[1])
        return feats, lens

    def from_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Power mel (B, T, n_mels) -> features (B, T, D)."""
        if self.pcen is not None:
            # PCEN works on magnitudes: sqrt of power, scaled like int32 audio (librosa docs).
            feats = self.pcen(mel.clamp(min=0).sqrt() * self.cfg.pcen_input_scale)
        else:
            feats = torch.log(mel + self.cfg.log_floor)
        if self.lifter is not None:
            feats = feats @ self.lifter
        return feats
