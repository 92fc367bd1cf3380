"""Shared acoustic encoders.

Interface (see docs/architecture.md): ``forward(x (B, T, F), x_lens (B,)) ->
(out (B, T', D), out_lens (B,))`` with attributes ``output_dim``,
``subsampling_factor`` and ``right_context`` (frames of lookahead, at the output rate).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.config import EncoderConfig
from asr.registry import ENCODERS


class ConvSubsampling(nn.Module):
    """Stacked stride-2 3x3 convolutions over (time, frequency).

    Time padding is causal (two frames on the left), so a frame never looks ahead and a
    forward-only encoder built on it can stream. Each layer maps T -> (T - 1) // 2 + 1.

    forward(x (B, T, F), lens (B,)) -> (y (B, T', C * F'), lens' (B,)).
    """

    def __init__(self, in_features: int, channels: int, factor: int) -> None:
        super().__init__()
        if factor not in (1, 2, 4, 8):
            raise ValueError(f"encoder.subsampling must be 1, 2, 4 or 8, got {factor}")
        self.num_layers = int(math.log2(factor))
        layers = []
        c_in, f = 1, in_features
        for _ in range(self.num_layers):
            layers += [nn.Conv2d(c_in, channels, kernel_size=3, stride=2, padding=(0, 1)),
                       nn.ReLU()]
            c_in, f = channels, (f - 1) // 2 + 1
        self.convs = nn.ModuleList(layers)
        self.output_dim = c_in * f

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        y = x.unsqueeze(1)  # (B, 1, T, F)
        for layer in self.convs:
            if isinstance(layer, nn.Conv2d):
                y = F.pad(y, (0, 0, 2, 0))  # causal in time
                lens = (lens - 1) // 2 + 1
            y = layer(y)
        B, C, T, Fr = y.shape
        return y.permute(0, 2, 1, 3).reshape(B, T, C * Fr), lens


class RowConvolution(nn.Module):
    """Lookahead (row) convolution of DeepSpeech 2: out[t] = sum_k w_k * h[t + k], k = 0..K.

    forward(h (B, T, D)) -> (B, T, D).
    """

    def __init__(self, dim: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv = nn.Conv1d(dim, dim, kernel_size=lookahead + 1, groups=dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = F.pad(h.transpose(1, 2), (0, self.lookahead))
        return self.conv(y).transpose(1, 2)


@ENCODERS.register("conv_rnn")
class ConvRNNEncoder(nn.Module):
    """Convolutional front end, then GRU/LSTM layers (bi- or uni-directional), then an
    optional lookahead convolution for forward-only models ("Reducing Bias in Production
    Speech Models": a forward-only encoder with a bounded right context streams).
    """

    def __init__(self, input_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.lookahead and cfg.bidirectional:
            raise ValueError("encoder.lookahead is for forward-only models; "
                             "set encoder.bidirectional: false")
        self.subsampling = ConvSubsampling(input_dim, cfg.conv_channels, cfg.subsampling)
        self.input_proj = nn.Linear(self.subsampling.output_dim, cfg.hidden_size)
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cfg.rnn_type)
        if rnn_cls is None:
            raise ValueError(f"encoder.rnn_type must be 'gru' or 'lstm', got {cfg.rnn_type!r}")
        self.rnn = rnn_cls(cfg.hidden_size, cfg.hidden_size, num_layers=cfg.num_layers,
                           batch_first=True, bidirectional=cfg.bidirectional,
                           dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.output_dim = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.row_conv = RowConvolution(self.output_dim, cfg.lookahead) if cfg.lookahead else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.subsampling_factor = cfg.subsampling
        self.right_context = cfg.lookahead

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        """x: (B, T, F) features; x_lens: (B,) -> (out (B, T', D), out_lens (B,))."""
        h, lens = self.subsampling(x, x_lens)
        h = self.dropout(torch.relu(self.input_proj(h)))
        lens = lens.clamp(min=1, max=h.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(h, lens.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        if self.row_conv is not None:
            # zero the padding first so lookahead never reads past an utterance's end
            mask = torch.arange(out.shape[1], device=out.device)[None, :] < lens[:, None]
            out = self.row_conv(out * mask.unsqueeze(-1))
        return self.dropout(out), lens


def build_encoder(input_dim: int, cfg: EncoderConfig) -> nn.Module:
    return ENCODERS.get(cfg.name)(input_dim, cfg)
