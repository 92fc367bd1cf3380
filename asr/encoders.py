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


def reverse_padded(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length, leaving the padding at the end.

    x: (B, T, D), lens: (B,) -> (B, T, D). Applying it twice gives x back.
    """
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]
    idx = torch.where(t < lens[:, None], lens[:, None] - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class StackedRNN(nn.Module):
    """GRU/LSTM layers run on padded batches, bidirectional by reversing each sequence
    within its length.

    PyTorch's CPU kernels for packed sequences run the input projection step by step and
    were 3x slower here than the padded path, which projects the whole sequence at once.
    Padding sits at the end, so the forward direction never sees it before a valid frame,
    and the backward direction reads the reversed sequence, so neither is changed by it.

    forward(x (B, T, D), lens (B,)) -> (B, T, H * directions).
    """

    def __init__(self, rnn_type: str, input_size: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, dropout: float) -> None:
        super().__init__()
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(rnn_type)
        if rnn_cls is None:
            raise ValueError(f"encoder.rnn_type must be 'gru' or 'lstm', got {rnn_type!r}")
        dirs = 2 if bidirectional else 1
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList() if bidirectional else None
        for i in range(num_layers):
            size = input_size if i == 0 else hidden_size * dirs
            self.forward_layers.append(rnn_cls(size, hidden_size, batch_first=True))
            if bidirectional:
                self.backward_layers.append(rnn_cls(size, hidden_size, batch_first=True))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        h = x
        for i, fwd in enumerate(self.forward_layers):
            if i > 0:
                h = self.dropout(h)
            out, _ = fwd(h)
            if self.backward_layers is not None:
                back, _ = self.backward_layers[i](reverse_padded(h, lens))
                out = torch.cat([out, reverse_padded(back, lens)], dim=-1)
            h = out
        return h


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
        self.rnn = StackedRNN(cfg.rnn_type, cfg.hidden_size, cfg.hidden_size, cfg.num_layers,
                              cfg.bidirectional, cfg.dropout)
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
        out = self.rnn(h, lens)
        if self.row_conv is not None:
            # zero the padding first so lookahead never reads past an utterance's end
            mask = torch.arange(out.shape[1], device=out.device)[None, :] < lens[:, None]
            out = self.row_conv(out * mask.unsqueeze(-1))
        return self.dropout(out), lens


def build_encoder(input_dim: int, cfg: EncoderConfig) -> nn.Module:
    return ENCODERS.get(cfg.name)(input_dim, cfg)
