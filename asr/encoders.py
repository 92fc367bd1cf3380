"""Shared acoustic encoders.

Interface (see docs/architecture.md): ``forward(x (B, T, F), x_lens (B,)) ->
(out (B, T', D), out_lens (B,))`` with attributes ``output_dim``,
``subsampling_factor`` and ``right_context`` (frames of lookahead, at the output rate).

Streamable encoders add ``init_state(batch_size) -> State`` and
``streaming_forward(x, x_lens, state, final=None) -> (out, out_lens, state)``: ``x`` holds
each stream's next frames (any number, ``x_lens`` of them), ``final (B,)`` marks the rows
whose utterance ends with this chunk (lookahead is then filled with the offline zero
padding). ``out`` is padded: its width follows from x's, and ``out_lens`` says which
frames are new. Every control value (frames read, buffer fill) lives in the state's
tensors, so the first chunk runs the same code as the others.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, TypeVar

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
        # (channels, frequencies) each conv layer reads: the shape of its streaming cache
        self.input_shapes: List[Tuple[int, int]] = []
        c, f = 1, in_features
        for _ in range(self.num_layers):
            self.input_shapes.append((c, f))
            c, f = channels, (f - 1) // 2 + 1

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        y = x.unsqueeze(1)  # (B, 1, T, F)
        for layer in self.convs:
            if isinstance(layer, nn.Conv2d):
                y = F.pad(y, (0, 0, 2, 0))  # causal in time
                lens = (lens - 1) // 2 + 1
            y = layer(y)
        B, C, T, Fr = y.shape
        return y.permute(0, 2, 1, 3).reshape(B, T, C * Fr), lens

    def init_cache(self, batch_size: int, device=None) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
        """Zeros (the causal padding): per layer (B, C_l, 2, F_l), and frames read (B, L)."""
        cache = tuple(torch.zeros(batch_size, c, 2, f, device=device) for c, f in self.input_shapes)
        return cache, torch.zeros(batch_size, self.num_layers, dtype=torch.long, device=device)

    def streaming_forward(self, x: torch.Tensor, lens: torch.Tensor,
                          cache: Tuple[torch.Tensor, ...], frames: torch.Tensor):
        """The next frames of each stream.

        x: (B, T, F) with lens (B,) new frames; cache: per layer (B, C_l, 2, F_l), the
        last two frames it read; frames: (B, L) frames each layer has read.
        Returns (y (B, T', C * F'), lens' (B,), cache, frames).

        Offline, output j of a layer reads its input frames 2j-2..2j. Here every new
        input frame gets a stride-1 candidate over itself and the two before it, and the
        candidates at even global frame indices are kept.
        """
        y = x.unsqueeze(1)  # (B, 1, T, F)
        new_cache, new_frames = [], []
        arange2 = torch.arange(2, device=x.device)
        layer_index = 0
        for layer in self.convs:
            if not isinstance(layer, nn.Conv2d):
                y = layer(y)
                continue
            B, C, T, Fr = y.shape
            seq = torch.cat([cache[layer_index], y], dim=2)  # (B, C, 2 + T, F)
            last_two = (lens[:, None] + arange2)[:, None, :, None].expand(B, C, 2, Fr)
            new_cache.append(seq.gather(2, last_two))
            cand = F.conv2d(seq, layer.weight, layer.bias, stride=(1, 2), padding=(0, 1))
            read = frames[:, layer_index]
            first = read % 2  # the first new frame with an even global index
            width = (T + 1) // 2
            idx = (first[:, None] + 2 * torch.arange(width, device=x.device)).clamp(max=T - 1)
            Bc, Co, _, Fo = cand.shape
            y = cand.gather(2, idx[:, None, :, None].expand(Bc, Co, width, Fo))
            new_frames.append(read + lens)
            lens = (read + lens + 1) // 2 - (read + 1) // 2  # even indices in [read, read + lens)
            layer_index += 1
        B, C, T, Fr = y.shape
        frames = torch.stack(new_frames, 1) if new_frames else frames
        return y.permute(0, 2, 1, 3).reshape(B, T, C * Fr), lens, tuple(new_cache), frames


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

    def streaming_forward(self, h: torch.Tensor, lens: torch.Tensor, buffer: torch.Tensor,
                          filled: torch.Tensor, final: torch.Tensor):
        """The next frames of each stream.

        h: (B, T, D) with lens (B,) new frames; buffer: (B, K, D) frames still waiting
        for their lookahead, right-aligned, the last ``filled`` (B,) slots in use;
        final: (B,) bool, rows whose utterance ends here (K zero frames follow, as offline).
        Returns (out (B, T + K, D), out_lens (B,), buffer, filled).
        """
        K = self.lookahead
        B, T, D = h.shape
        valid = torch.arange(T, device=h.device)[None, :] < lens[:, None]
        zeros = h.new_zeros(B, K, D)
        seq = torch.cat([buffer, h * valid.unsqueeze(-1), zeros], dim=1)  # (B, K + T + K, D)
        n = lens + final.long() * K  # frames after the buffer, the end's zeros included
        out_all = self.conv(seq.transpose(1, 2)).transpose(1, 2)  # position p reads p..p+K
        start = K - filled  # position of the oldest waiting frame
        idx = (start[:, None] + torch.arange(T + K, device=h.device)).clamp(max=T + K - 1)
        out = out_all.gather(1, idx.unsqueeze(-1).expand(B, T + K, D))
        out_lens = (n + filled - K).clamp(min=0)
        keep = (n[:, None] + torch.arange(K, device=h.device))  # the last K frames
        buffer = seq.gather(1, keep.unsqueeze(-1).expand(B, K, D))
        filled = torch.where(final, torch.zeros_like(filled), (filled + n).clamp(max=K))
        return out, out_lens, buffer, filled


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

    def streaming_forward(self, x: torch.Tensor, lens: torch.Tensor, hidden: torch.Tensor,
                          cell: torch.Tensor):
        """Forward-only layers from carried states.

        x: (B, T, D), lens (B,) new frames; hidden: (B, N, H) the N layers' states; cell:
        (B, N, H) their LSTM cells ((B, N, 0) for GRU) -> (out (B, T, H), hidden, cell).
        """
        if self.backward_layers is not None:
            raise ValueError("streaming needs forward-only GRU or LSTM layers (encoder."
                             "bidirectional: false); encoder lc_bgru streams a bidirectional GRU")
        h, states, cells = x, [], []
        for i, fwd in enumerate(self.forward_layers):
            if i > 0:
                h = self.dropout(h)
            if isinstance(fwd, nn.LSTM):
                h, (h_n, c_n) = self._lstm_rows(fwd, h, lens, hidden[:, i], cell[:, i])
                states.append(h_n)
                cells.append(c_n)
            else:
                h, _ = fwd(h, hidden[:, i][None].contiguous())
                states.append(last_valid(h, lens, hidden[:, i]))
        cell = torch.stack(cells, 1) if cells else cell
        return h, torch.stack(states, 1), cell

    @staticmethod
    def _lstm_rows(lstm: nn.LSTM, x: torch.Tensor, lens: torch.Tensor, h0: torch.Tensor,
                   c0: torch.Tensor):
        """An LSTM over each row's valid frames (packed: nn.LSTM gives no per-step cells),
        rows without frames keeping their state. x: (B, T, D); h0, c0: (B, H)."""
        B, T, _ = x.shape
        out = x.new_zeros(B, T, lstm.hidden_size)
        h_n, c_n = h0.clone(), c0.clone()
        rows = (lens > 0).nonzero().flatten()
        if rows.numel():
            packed = nn.utils.rnn.pack_padded_sequence(x[rows], lens[rows].cpu(), batch_first=True,
                                                       enforce_sorted=False)
            o, (h, c) = lstm(packed, (h0[rows][None].contiguous(), c0[rows][None].contiguous()))
            out[rows] = nn.utils.rnn.pad_packed_sequence(o, batch_first=True, total_length=T)[0]
            h_n[rows], c_n[rows] = h[0], c[0]
        return out, (h_n, c_n)


def last_valid(h: torch.Tensor, lens: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """Each row's output at its last valid frame: a one-layer RNN's state there.

    h: (B, T, H), lens: (B,), default: (B, H), kept where a row has no frames -> (B, H).
    """
    idx = (lens - 1).clamp(min=0)[:, None, None].expand(-1, 1, h.shape[-1])
    return torch.where((lens > 0)[:, None], h.gather(1, idx)[:, 0], default)


def pack_left(x: torch.Tensor, valid: torch.Tensor):
    """Move each row's valid frames to its front, in order.

    x: (B, T, D), valid: (B, T) bool -> (packed (B, T, D), lens (B,)).
    """
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    return x.gather(1, order.unsqueeze(-1).expand_as(x)), valid.sum(1)


def drop_chunk(buf: torch.Tensor, buf_len: torch.Tensor, ready: torch.Tensor, chunk: int):
    """After a chunk step: the rows that ran (ready (B,) bool) lose their first ``chunk``
    frames of buf (B, W, D), whose lengths buf_len (B,) shrink; the others keep theirs."""
    shifted = F.pad(buf[:, chunk:], (0, 0, 0, chunk))
    return (torch.where(ready[:, None, None], shifted, buf),
            torch.where(ready, (buf_len - chunk).clamp(min=0), buf_len))


def join_chunks(outs: List[torch.Tensor], valid: List[torch.Tensor], like: torch.Tensor,
                dim: int):
    """The chunk steps' outputs (each (B, C, D)) and valid masks (each (B, C)) as one
    left-packed (B, T', D) batch and its lengths (B,); no step: (B, 0, D) and zeros."""
    if outs:
        return pack_left(torch.cat(outs, 1), torch.cat(valid, 1))
    B = like.shape[0]
    return like.new_zeros(B, 0, dim), torch.zeros(B, dtype=torch.long, device=like.device)


S = TypeVar("S")


def stack_states(states: Sequence[S]) -> S:
    """One batched state from states of the same class (tensor or tuple-of-tensor fields,
    batch first), so several streams run as one batch."""
    def cat(values):
        if isinstance(values[0], tuple):
            return tuple(torch.cat(v, 0) for v in zip(*values))
        return torch.cat(values, 0)
    cls = type(states[0])
    return cls(**{f.name: cat([getattr(s, f.name) for s in states])
                  for f in dataclasses.fields(cls)})


def split_state(state: S) -> List[S]:
    """The inverse of :func:`stack_states`: one state of batch 1 per row."""
    def row(value, b):
        if isinstance(value, tuple):
            return tuple(v[b:b + 1] for v in value)
        return value[b:b + 1]
    fields = dataclasses.fields(state)
    batch = getattr(state, fields[0].name)
    batch = (batch[0] if isinstance(batch, tuple) else batch).shape[0]
    return [type(state)(**{f.name: row(getattr(state, f.name), b) for f in fields})
            for b in range(batch)]


@dataclass
class ConvRNNState:
    """Streaming state of a forward-only :class:`ConvRNNEncoder` for B streams.

    conv_cache: per subsampling layer l, (B, C_l, 2, F_l): the last two frames it read
        (zeros before the first: its causal padding).
    conv_frames: (B, L) int64, frames each subsampling layer has read (their parity
        picks its stride-2 outputs).
    rnn_hidden: (B, N, H), the N recurrent layers' states; rnn_cell: (B, N, H) their LSTM
        cells, (B, N, 0) for GRU layers.
    lookahead: (B, K, D), GRU outputs waiting for their K frames of lookahead,
        right-aligned; lookahead_filled: (B,) int64, how many of the K slots are in use.
    """

    conv_cache: Tuple[torch.Tensor, ...]
    conv_frames: torch.Tensor
    rnn_hidden: torch.Tensor
    rnn_cell: torch.Tensor
    lookahead: torch.Tensor
    lookahead_filled: torch.Tensor


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

    def init_state(self, batch_size: int, device=None) -> ConvRNNState:
        """The state before any audio (see :class:`ConvRNNState`)."""
        cache, frames = self.subsampling.init_cache(batch_size, device)
        H, K = self.cfg.hidden_size, self.cfg.lookahead
        return ConvRNNState(
            conv_cache=cache, conv_frames=frames,
            rnn_hidden=torch.zeros(batch_size, self.cfg.num_layers, H, device=device),
            rnn_cell=torch.zeros(batch_size, self.cfg.num_layers,
                                 H if self.cfg.rnn_type == "lstm" else 0, device=device),
            lookahead=torch.zeros(batch_size, K, self.output_dim, device=device),
            lookahead_filled=torch.zeros(batch_size, dtype=torch.long, device=device))

    def streaming_forward(self, x: torch.Tensor, x_lens: torch.Tensor, state: ConvRNNState,
                          final: Optional[torch.Tensor] = None):
        """x: (B, T, F) next frames, x_lens: (B,), final: (B,) bool (None: no row ends)
        -> (out (B, T', D), out_lens (B,), state). Chunk by chunk the frames equal
        :meth:`forward` over the whole utterance (forward-only configurations)."""
        if final is None:
            final = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        h, lens, cache, frames = self.subsampling.streaming_forward(
            x, x_lens, state.conv_cache, state.conv_frames)
        h = self.dropout(torch.relu(self.input_proj(h)))
        out, hidden, cell = self.rnn.streaming_forward(h, lens, state.rnn_hidden, state.rnn_cell)
        buffer, filled = state.lookahead, state.lookahead_filled
        if self.row_conv is not None:
            out, lens, buffer, filled = self.row_conv.streaming_forward(out, lens, buffer, filled,
                                                                        final)
        return self.dropout(out), lens, ConvRNNState(cache, frames, hidden, cell, buffer, filled)


class LatencyControlledBiGRU(nn.Module):
    """Bidirectional GRU layers read in windows of ``chunk + right`` frames ("Reducing Bias
    in Production Speech Models"; Zhang et al. 2016, LC-BLSTM). The forward direction
    carries its state from chunk to chunk (taken after the chunk's ``chunk`` frames); the
    backward direction starts from zero in every window, so a frame's output waits for at
    most ``chunk - 1 + right`` frames. The right-context frames' outputs feed the next
    layer and are then dropped: each chunk is its own computation, offline or streaming.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, chunk: int,
                 right: int, dropout: float) -> None:
        super().__init__()
        if chunk < 1 or right < 0:
            raise ValueError(f"encoder.chunk_size must be >= 1 and chunk_right_context >= 0, "
                             f"got {chunk} and {right}")
        self.chunk, self.right, self.hidden_size = chunk, right, hidden_size
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.GRU(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(nn.GRU(n, hidden_size, batch_first=True) for n in sizes)
        self.dropout = nn.Dropout(dropout)

    def window(self, x: torch.Tensor, lens: torch.Tensor, hidden: torch.Tensor):
        """One window per row: x (B, W, D), W <= chunk + right, lens (B,) valid frames,
        hidden (B, N, H) forward states -> (out (B, W, 2H), hidden after ``chunk`` frames)."""
        carry_at = torch.minimum(lens, torch.full_like(lens, self.chunk))
        h, states = x, []
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i > 0:
                h = self.dropout(h)
            f, _ = fwd(h, hidden[:, i][None].contiguous())
            states.append(last_valid(f, carry_at, hidden[:, i]))
            b, _ = bwd(reverse_padded(h, lens))  # zero start: the backward state is reset
            h = torch.cat([f, reverse_padded(b, lens)], dim=-1)
        return h, torch.stack(states, 1)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D), lens (B,) -> (B, T, 2H): the windows one after another."""
        B, T, _ = x.shape
        C, W = self.chunk, self.chunk + self.right
        chunks = -(-T // C)
        x = F.pad(x, (0, 0, 0, chunks * C + self.right - T))
        hidden = x.new_zeros(B, len(self.forward_layers), self.hidden_size)
        outs = []
        for k in range(chunks):
            out, hidden = self.window(x[:, k * C: k * C + W], (lens - k * C).clamp(0, W), hidden)
            outs.append(out[:, :C])
        return torch.cat(outs, 1)[:, :T]


@dataclass
class LCBiGRUState:
    """Streaming state of an :class:`LCBiGRUEncoder` for B streams.

    conv_cache, conv_frames: as in :class:`ConvRNNState`.
    rnn_hidden: (B, N, H), forward states after the last finished chunk.
    pending: (B, W, D) input frames of the next window (W = chunk + right), left-aligned;
    pending_len: (B,) int64, how many are in.
    """

    conv_cache: Tuple[torch.Tensor, ...]
    conv_frames: torch.Tensor
    rnn_hidden: torch.Tensor
    pending: torch.Tensor
    pending_len: torch.Tensor


@ENCODERS.register("lc_bgru")
class LCBiGRUEncoder(nn.Module):
    """Causal convolutional front end, then latency-controlled bidirectional GRU layers
    (:class:`LatencyControlledBiGRU`); ``chunk_size`` and ``chunk_right_context`` are in
    frames after subsampling."""

    def __init__(self, input_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsampling = ConvSubsampling(input_dim, cfg.conv_channels, cfg.subsampling)
        self.input_proj = nn.Linear(self.subsampling.output_dim, cfg.hidden_size)
        self.rnn = LatencyControlledBiGRU(cfg.hidden_size, cfg.hidden_size, cfg.num_layers,
                                          cfg.chunk_size, cfg.chunk_right_context, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_dim = 2 * cfg.hidden_size
        self.subsampling_factor = cfg.subsampling
        self.right_context = cfg.chunk_size - 1 + cfg.chunk_right_context  # at most

    def _front(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.input_proj(h)))

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        """x: (B, T, F) features; x_lens: (B,) -> (out (B, T', D), out_lens (B,))."""
        h, lens = self.subsampling(x, x_lens)
        lens = lens.clamp(min=1, max=h.shape[1])
        return self.dropout(self.rnn(self._front(h), lens)), lens

    def init_state(self, batch_size: int, device=None) -> LCBiGRUState:
        cache, frames = self.subsampling.init_cache(batch_size, device)
        H, W = self.cfg.hidden_size, self.cfg.chunk_size + self.cfg.chunk_right_context
        return LCBiGRUState(
            conv_cache=cache, conv_frames=frames,
            rnn_hidden=torch.zeros(batch_size, self.cfg.num_layers, H, device=device),
            pending=torch.zeros(batch_size, W, H, device=device),
            pending_len=torch.zeros(batch_size, dtype=torch.long, device=device))

    def streaming_forward(self, x: torch.Tensor, x_lens: torch.Tensor, state: LCBiGRUState,
                          final: Optional[torch.Tensor] = None):
        """x: (B, T, F) next frames, x_lens: (B,), final: (B,) bool (None: no row ends)
        -> (out (B, T', D), out_lens (B,), state). Equal to :meth:`forward` frame by frame:
        a window runs once its ``chunk + right`` frames are in, or the utterance ended."""
        B = x.shape[0]
        if final is None:
            final = torch.zeros(B, dtype=torch.bool, device=x.device)
        h, lens, cache, frames = self.subsampling.streaming_forward(
            x, x_lens, state.conv_cache, state.conv_frames)
        h = self._front(h)
        W, C = state.pending.shape[1], self.rnn.chunk
        both = torch.cat([state.pending, h], 1)
        t = torch.arange(both.shape[1], device=x.device)[None, :]
        buf, buf_len = pack_left(both, (t < state.pending_len[:, None]) |
                                 ((t >= W) & (t < W + lens[:, None])))
        hidden = state.rnn_hidden
        outs, valid = [], []
        while True:  # one pass per window that some row has complete
            ready = (buf_len >= W) | (final & (buf_len > 0))
            if not bool(ready.any()):
                break
            win_len = torch.where(ready, buf_len.clamp(max=W), torch.zeros_like(buf_len))
            out, new_hidden = self.rnn.window(buf[:, :W], win_len, hidden)
            hidden = torch.where(ready[:, None, None], new_hidden, hidden)
            emitted = torch.where(ready, buf_len.clamp(max=C), torch.zeros_like(buf_len))
            outs.append(out[:, :C])
            valid.append(torch.arange(C, device=x.device)[None, :] < emitted[:, None])
            buf, buf_len = drop_chunk(buf, buf_len, ready, C)
        out, out_lens = join_chunks(outs, valid, x, self.output_dim)
        state = LCBiGRUState(cache, frames, hidden, buf[:, :W], buf_len)
        return self.dropout(out), out_lens, state


def build_encoder(input_dim: int, cfg: EncoderConfig) -> nn.Module:
    import asr.conformer  # noqa: F401  (registers "conformer"; it builds on this module)

    return ENCODERS.get(cfg.name)(input_dim, cfg)
