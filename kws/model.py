"""The CRNN of Arik et al. 2017, "Convolutional Recurrent Neural Networks for
Small-Footprint Keyword Spotting": one 2-D convolution over (time, mel), recurrent (GRU)
layers, a dense layer and the class outputs.

Input normalisation (per-channel mean and std of the training features) lives inside the
model as buffers, so the exported graph takes raw features.
"""
from __future__ import annotations

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


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (normalisation buffers and BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
