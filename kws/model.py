"""The CRNN of Arik et al. 2017, "Convolutional Recurrent Neural Networks for
Small-Footprint Keyword Spotting": one 2-D convolution over (time, mel), recurrent (GRU)
layers, a dense layer and the class outputs.

Input normalisation (per-channel mean and std of the training features) lives inside the
model as buffers, so the exported graph takes raw features.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kws.config import CRNNConfig


def conv_out(n: int, kernel: int, stride: int) -> int:
    """Length after a 'valid' convolution (inputs shorter than the kernel are padded)."""
    return max(n - kernel, 0) // stride + 1


class CRNN(nn.Module):
    """forward(feats (B, T, F)) -> logits (B, C).

    The convolution has no padding in frequency and pads time only up to one kernel, so
    ``T`` may be any length >= 1; the number of recurrent steps is
    ``conv_out(max(T, LT), LT, ST)``.

    Streaming (:meth:`step`, :class:`CRNNStream`) needs a model whose output at a step
    depends on the past alone: a unidirectional GRU, ``pool: last`` and no per-window
    mean subtraction (``can_stream``). For such a model the logits of ``forward`` on
    frames ``0..T-1`` equal the last step of :meth:`step` run over the same frames in any
    number of pieces, carrying the GRU state and the convolution's frame context.
    """

    def __init__(self, cfg: CRNNConfig, n_mels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.num_classes = num_classes
        lt, lf = cfg.conv_kernel
        st, sf = cfg.conv_stride
        self.register_buffer("feat_mean", torch.zeros(n_mels))
        self.register_buffer("feat_std", torch.ones(n_mels))
        self.conv = nn.Conv2d(1, cfg.conv_channels, (lt, lf), (st, sf), bias=not cfg.conv_batchnorm)
        self.bn = nn.BatchNorm2d(cfg.conv_channels) if cfg.conv_batchnorm else nn.Identity()
        self.freq_out = conv_out(n_mels, lf, sf)
        self.rnn_in = cfg.conv_channels * self.freq_out
        self.gru = nn.GRU(self.rnn_in, cfg.gru_size, num_layers=cfg.gru_layers, batch_first=True,
                          bidirectional=cfg.bidirectional,
                          dropout=cfg.dropout if cfg.gru_layers > 1 else 0.0)
        dirs = 2 if cfg.bidirectional else 1
        self.dense = nn.Linear(cfg.gru_size * dirs, cfg.dense_size)
        self.out = nn.Linear(cfg.dense_size, num_classes)
        self.drop = nn.Dropout(cfg.dropout)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std: (F,) statistics of the training features."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp(min=1e-3))

    def conv_features(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, F) -> recurrent input (B, T', C * F')."""
        if self.cfg.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        x = (feats - self.feat_mean) / self.feat_std
        lt = self.cfg.conv_kernel[0]
        if x.shape[1] < lt:
            x = F.pad(x, (0, 0, 0, lt - x.shape[1]))
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        x = F.relu(self.bn(x))
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f)

    @property
    def can_stream(self) -> bool:
        """Whether the model's output at a step depends only on frames up to that step."""
        return not self.cfg.bidirectional and self.cfg.pool == "last" and not self.cfg.cmn

    @property
    def state_shape(self) -> tuple:
        """(L, H): the GRU state of one stream (its batch axis goes in the middle)."""
        return (self.cfg.gru_layers * (2 if self.cfg.bidirectional else 1), self.cfg.gru_size)

    def step(self, feats: torch.Tensor, state: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One streaming step over K convolution steps.

        Args:
            feats: (B, T, F) raw features, T = LT + (K - 1) * ST: the frames of K new
                convolution steps, the previous steps' overlapping frames (conv context)
                included.
            state: (L, B, H) GRU state after the previous step, or None (zeros: the start
                of a stream).
        Returns:
            logits (B, K, C) at each of the K steps, and the new state (L, B, H).
        """
        if not self.can_stream:
            raise ValueError("streaming needs a unidirectional GRU, pool 'last' and cmn off "
                             f"(model: bidirectional={self.cfg.bidirectional}, pool={self.cfg.pool!r}, "
                             f"cmn={self.cfg.cmn})")
        lt, st = self.cfg.conv_kernel[0], self.cfg.conv_stride[0]
        if feats.shape[1] < lt or (feats.shape[1] - lt) % st:
            raise ValueError(f"step needs LT + (K - 1) * ST frames (LT={lt}, ST={st}), got {feats.shape[1]}")
        y, h = self.gru(self.conv_features(feats), state)  # y (B, K, H)
        return self.out(self.drop(F.relu(self.dense(self.drop(y))))), h

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv_features(feats)
        y, h = self.gru(x)  # y (B, T', H * dirs); h (layers * dirs, B, H)
        if self.cfg.pool == "mean":
            pooled = y.mean(dim=1)
        elif self.cfg.bidirectional:
            pooled = torch.cat([h[-2], h[-1]], dim=-1)  # last layer: forward end, backward end
        else:
            pooled = h[-1]
        z = self.drop(F.relu(self.dense(self.drop(pooled))))
        return self.out(z)


class CRNNStream:
    """Hop-to-hop inference with a streamable :class:`CRNN` (torch; the edge runtime has
    its own, on the exported step): accept(frames (T, F)) -> logits (K, C) of the K
    convolution steps those frames complete (K may be 0).

    Carries the GRU state and the frames not yet consumed by the convolution (the last
    ``LT - ST`` frames of the previous step, plus any remainder), so nothing is
    recomputed. The logits of step k equal ``model(all frames up to that step)``.
    """

    def __init__(self, model: CRNN) -> None:
        if not model.can_stream:
            model.step(torch.zeros(1, model.cfg.conv_kernel[0], model.n_mels))  # raises, naming why
        self.model = model.eval()
        self.lt, self.st = model.cfg.conv_kernel[0], model.cfg.conv_stride[0]
        self.reset()

    def reset(self) -> None:
        self.buf = torch.zeros(0, self.model.n_mels)  # frames from the next step's first on
        self.state: Optional[torch.Tensor] = None
        self.steps = 0

    @torch.no_grad()
    def accept(self, frames: torch.Tensor) -> torch.Tensor:
        self.buf = torch.cat([self.buf, frames.to(self.buf.dtype)])
        if self.buf.shape[0] < self.lt:
            return torch.zeros(0, self.model.num_classes)
        k = (self.buf.shape[0] - self.lt) // self.st + 1
        logits, self.state = self.model.step(self.buf[None, : self.lt + (k - 1) * self.st], self.state)
        self.buf = self.buf[k * self.st:]
        self.steps += k
        return logits[0]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (normalisation buffers and BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class CRNNStepWithSoftmax(nn.Module):
    """The exported streaming step: forward(features (B, T, F), state (L, B, H)) ->
    (posteriors (B, K, C), state_out (L, B, H)), softmax inside."""

    def __init__(self, model: CRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, h = self.model.step(feats, state)
        return torch.softmax(logits, dim=-1), h


class CRNNWithSoftmax(nn.Module):
    """The exported form: forward(feats (B, T, F)) -> posteriors (B, C), softmax inside."""

    def __init__(self, model: CRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(feats), dim=-1)


def model_summary(cfg: CRNNConfig, n_mels: int, num_classes: int, window_frames: int) -> dict:
    """Parameter count and multiply-accumulates per window, for docs and checks."""
    m = CRNN(cfg, n_mels, num_classes)
    steps = conv_out(max(window_frames, cfg.conv_kernel[0]), cfg.conv_kernel[0], cfg.conv_stride[0])
    conv_macs = steps * m.freq_out * cfg.conv_channels * cfg.conv_kernel[0] * cfg.conv_kernel[1]
    dirs = 2 if cfg.bidirectional else 1
    gru_macs = 0
    d_in = m.rnn_in
    for _ in range(cfg.gru_layers):
        gru_macs += steps * dirs * 3 * cfg.gru_size * (d_in + cfg.gru_size)
        d_in = cfg.gru_size * dirs
    dense_macs = cfg.gru_size * dirs * cfg.dense_size + cfg.dense_size * num_classes
    return {"params": count_parameters(m), "macs": conv_macs + gru_macs + dense_macs,
            "rnn_steps": steps, "rnn_input": m.rnn_in}
