"""Conformer encoder (Gulati et al. 2020), registered as ``conformer``.

Causal convolutional subsampling (:class:`~asr.encoders.ConvSubsampling`), then blocks of
macaron feed-forward (half-step) -> relative-position self-attention -> convolution module
(pointwise, GLU, depthwise, LayerNorm, SiLU, pointwise) -> feed-forward (half-step) ->
LayerNorm, as in torchaudio's ``Conformer`` and icefall's conformer. Attention scores carry
Transformer-XL's relative-position terms (content + position, with the learned biases u, v;
Dai et al. 2019), computed from the query-key distance itself rather than with the
"relative shift" trick, so a streaming chunk with cached keys gets the same scores.

``causal: true`` makes it streamable: attention sees the frame's own chunk of
``chunk_size`` frames (output rate) and ``attention_left_chunks`` chunks before it (WeNet's
chunk mask), and the depthwise convolution only looks back. Its offline forward applies
the same masks, so chunk-by-chunk streaming equals it. The normalisation in the
convolution module is a LayerNorm, not a BatchNorm: it is the same alone or in a padded
batch, in training and in streaming.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.config import EncoderConfig
from asr.encoders import ConvSubsampling, drop_chunk, join_chunks, pack_left
from asr.registry import ENCODERS


def sinusoids(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings of (signed) distances (R,) -> (R, dim)."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32)
                      * (-math.log(10000.0) / dim))
    angles = distances.float()[:, None] * freqs[None, :]
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(1)[:, :dim]


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (Transformer-XL).

    score(i, j) = (q_i + u) . k_j + (q_i + v) . W p(pos_i - pos_j), over sqrt(d_head),
    p the sinusoidal embedding of a signed distance. Keys and values come in projected
    (:meth:`split` of ``k(h)``, ``v(h)``), so a stream can cache them.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder.hidden_size ({dim}) must be a multiple of "
                             f"encoder.attention_heads ({heads})")
        self.heads, self.d_head = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.pos = nn.Linear(dim, dim, bias=False)
        self.u = nn.Parameter(torch.zeros(heads, self.d_head))
        self.v_bias = nn.Parameter(torch.zeros(heads, self.d_head))
        self.dropout = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, d)."""
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                k_pos: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, Tq, D); k, v (B, H, Tk, d) projected keys and values; q_pos (Tq,), k_pos
        (Tk,) positions; allowed (B, Tq, Tk) -> (B, Tq, D)."""
        q = self.split(self.q(x))  # (B, H, Tq, d)
        dist = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
        lo = int(dist.min())
        table = self.pos(sinusoids(torch.arange(lo, int(dist.max()) + 1, device=x.device),
                                   x.shape[-1]).to(x.dtype))  # (R, D)
        table = table.view(-1, self.heads, self.d_head)  # (R, H, d)
        content = torch.einsum("bhqd,bhkd->bhqk", q + self.u[:, None], k)
        by_dist = torch.einsum("bhqd,rhd->bhqr", q + self.v_bias[:, None], table)
        index = (dist - lo).expand(*by_dist.shape[:2], -1, -1)  # (B, H, Tq, Tk)
        position = by_dist.gather(3, index)
        scores = (content + position) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        # a padded query row allows no key: its softmax would be NaN, so give it zeros
        weights = torch.softmax(scores, -1).nan_to_num(0.0)
        context = torch.einsum("bhqk,bhkd->bhqd", self.dropout(weights), v)
        B, H, Tq, d = context.shape
        return self.out(context.transpose(1, 2).reshape(B, Tq, H * d))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (causal or centred), LayerNorm, SiLU,
    pointwise conv. forward(x (B, T, D), valid (B, T)) -> (B, T, D); padded frames are
    zeroed before the depthwise conv, as the zero padding past a lone utterance's end."""

    def __init__(self, dim: int, kernel: int, causal: bool, dropout: float) -> None:
        super().__init__()
        if kernel < 1 or (not causal and kernel % 2 == 0):
            raise ValueError(f"encoder.conv_kernel must be odd (or causal), got {kernel}")
        self.kernel, self.causal = kernel, causal
        self.norm_in = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def gate(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> the depthwise conv's input (B, D, T), padding zeroed."""
        h = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1) * valid.unsqueeze(-1)
        return h.transpose(1, 2)

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """The depthwise conv's output (B, D, T) -> (B, T, D)."""
        return self.dropout(self.pointwise_out(F.silu(self.norm(h.transpose(1, 2)))))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.gate(x, valid)
        left = self.kernel - 1 if self.causal else (self.kernel - 1) // 2
        h = F.pad(h, (left, self.kernel - 1 - left))
        return self.finish(self.depthwise(h))


def feed_forward(dim: int, expansion: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, expansion * dim), nn.SiLU(),
                         nn.Dropout(dropout), nn.Linear(expansion * dim, dim), nn.Dropout(dropout))


class ConformerLayer(nn.Module):
    """One block: x + FF/2, + MHSA, + Conv, + FF/2, LayerNorm."""

    def __init__(self, dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ff1 = feed_forward(dim, cfg.ff_expansion, cfg.dropout)
        self.norm_att = nn.LayerNorm(dim)
        self.attention = RelPositionAttention(dim, cfg.attention_heads, cfg.dropout)
        self.conv = ConvModule(dim, cfg.conv_kernel, cfg.causal, cfg.dropout)
        self.ff2 = feed_forward(dim, cfg.ff_expansion, cfg.dropout)
        self.norm_out = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), valid (B, T), allowed (B, T, T) -> (B, T, D)."""
        x = x + 0.5 * self.ff1(x)
        h = self.norm_att(x)
        att = self.attention
        pos = torch.arange(x.shape[1], device=x.device)
        x = x + self.dropout(att(h, att.split(att.k(h)), att.split(att.v(h)), pos, pos, allowed))
        x = x + self.conv(x, valid)
        return self.norm_out(x + 0.5 * self.ff2(x))

    def chunk_forward(self, x: torch.Tensor, valid: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, cache_valid: torch.Tensor, conv_cache: torch.Tensor):
        """One chunk of a causal layer. x (B, C, D), valid (B, C) (a prefix of each row);
        k_cache, v_cache (B, H, M, d): the projected keys and values of the M frames
        before, right-aligned, cache_valid (B, M); conv_cache (B, D, K - 1): the depthwise
        conv's last K - 1 inputs. Returns (out (B, C, D), the chunk's keys and values
        (B, H, C, d) and its depthwise inputs with the cache before them (B, D, K - 1 + C))."""
        B, C, _ = x.shape
        M = k_cache.shape[2]
        x = x + 0.5 * self.ff1(x)
        h = self.norm_att(x)
        att = self.attention
        k_new, v_new = att.split(att.k(h)), att.split(att.v(h))
        keys, values = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        k_pos = torch.arange(M + C, device=x.device)
        allowed = torch.cat([cache_valid, valid], 1)[:, None, :].expand(B, C, M + C)
        x = x + self.dropout(att(h, keys, values, k_pos[M:], k_pos, allowed))
        conv_in = torch.cat([conv_cache, self.conv.gate(x, valid)], 2)  # (B, D, K - 1 + C)
        x = x + self.conv.finish(self.conv.depthwise(conv_in))
        return self.norm_out(x + 0.5 * self.ff2(x)), k_new, v_new, conv_in


@dataclass
class ConformerState:
    """Streaming state of a causal :class:`ConformerEncoder` for B streams (N layers,
    H heads of d dims, M = chunk_size * attention_left_chunks cached frames, K the
    depthwise kernel).

    conv_cache, conv_frames: the subsampling's, as in :class:`~asr.encoders.ConvRNNState`.
    pending: (B, C, D) subsampled frames of the next chunk, left-aligned; pending_len: (B,)
        int64, how many are in.
    key_cache, value_cache: (B, N, H, M, d) each layer's keys and values of the last M
        frames, right-aligned; cache_len: (B,) int64, how many of the M are real frames.
    depthwise_cache: (B, N, D, K - 1) each layer's last depthwise-conv inputs (zeros
        before the first frame: the causal padding).
    """

    conv_cache: Tuple[torch.Tensor, ...]
    conv_frames: torch.Tensor
    pending: torch.Tensor
    pending_len: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    cache_len: torch.Tensor
    depthwise_cache: torch.Tensor


@ENCODERS.register("conformer")
class ConformerEncoder(nn.Module):
    """Subsampling, a linear projection to ``hidden_size``, ``num_layers`` conformer
    blocks. With ``causal``, streamable in chunks of ``chunk_size`` output frames."""

    def __init__(self, input_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsampling = ConvSubsampling(input_dim, cfg.conv_channels, cfg.subsampling)
        self.input_proj = nn.Linear(self.subsampling.output_dim, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg.hidden_size, cfg)
                                    for _ in range(cfg.num_layers))
        self.output_dim = cfg.hidden_size
        self.subsampling_factor = cfg.subsampling
        if cfg.causal and cfg.chunk_size < 1:
            raise ValueError(f"encoder.chunk_size must be >= 1, got {cfg.chunk_size}")
        # lookahead at the output rate: the rest of a frame's chunk; offline, all of it
        self.right_context = cfg.chunk_size - 1 if cfg.causal else math.inf

    def attention_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """Which keys each query may see: valid keys, and with ``causal`` only those of
        its own chunk and ``attention_left_chunks`` before it. valid (B, T) -> (B, T, T)."""
        allowed = valid[:, None, :].expand(-1, valid.shape[1], -1)
        if self.cfg.causal:
            chunk = torch.arange(valid.shape[1], device=valid.device) // self.cfg.chunk_size
            near = chunk[None, :] <= chunk[:, None]
            if self.cfg.attention_left_chunks >= 0:
                near = near & (chunk[None, :] >= chunk[:, None] - self.cfg.attention_left_chunks)
            allowed = allowed & near
        return allowed

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        """x: (B, T, F) features; x_lens: (B,) -> (out (B, T', D), out_lens (B,))."""
        h, lens = self.subsampling(x, x_lens)
        lens = lens.clamp(min=1, max=h.shape[1])
        h = self.dropout(self.input_proj(h))
        valid = torch.arange(h.shape[1], device=h.device)[None, :] < lens[:, None]
        allowed = self.attention_mask(valid)
        for layer in self.layers:
            h = layer(h, valid, allowed)
        return h * valid.unsqueeze(-1), lens

    # ------------------------------------------------------------- streaming
    def _cache_frames(self) -> int:
        if not self.cfg.causal or self.cfg.attention_left_chunks < 0:
            raise ValueError("conformer streams only with encoder.causal: true and "
                             "attention_left_chunks >= 0 (a bounded attention cache)")
        return self.cfg.chunk_size * self.cfg.attention_left_chunks

    def init_state(self, batch_size: int, device=None) -> ConformerState:
        M, C, D = self._cache_frames(), self.cfg.chunk_size, self.cfg.hidden_size
        N, H = len(self.layers), self.cfg.attention_heads
        cache, frames = self.subsampling.init_cache(batch_size, device)
        zeros = lambda *shape, **kw: torch.zeros(*shape, device=device, **kw)
        return ConformerState(
            conv_cache=cache, conv_frames=frames,
            pending=zeros(batch_size, C, D), pending_len=zeros(batch_size, dtype=torch.long),
            key_cache=zeros(batch_size, N, H, M, D // H),
            value_cache=zeros(batch_size, N, H, M, D // H),
            cache_len=zeros(batch_size, dtype=torch.long),
            depthwise_cache=zeros(batch_size, N, D, self.cfg.conv_kernel - 1))

    def _chunk(self, h: torch.Tensor, n: torch.Tensor, key_cache: torch.Tensor,
               value_cache: torch.Tensor, cache_len: torch.Tensor, depthwise_cache: torch.Tensor):
        """All layers over one chunk h (B, C, D) with n (B,) real frames, from the caches of
        :class:`ConformerState` -> (out (B, C, D), key_cache, value_cache, depthwise_cache)."""
        C, M = h.shape[1], key_cache.shape[3]
        valid = torch.arange(C, device=h.device)[None, :] < n[:, None]
        cache_valid = torch.arange(M, device=h.device)[None, :] >= M - cache_len[:, None]
        keys, values, depthwise = [], [], []
        K1 = depthwise_cache.shape[-1]
        for i, layer in enumerate(self.layers):
            h, k_new, v_new, conv_in = layer.chunk_forward(
                h, valid, key_cache[:, i], value_cache[:, i], cache_valid, depthwise_cache[:, i])
            # the last M real frames: the chunk's n after the cache's, right-aligned
            both_k = torch.cat([key_cache[:, i], k_new], 2)
            both_v = torch.cat([value_cache[:, i], v_new], 2)
            idx = (n[:, None] + torch.arange(M, device=h.device))[:, None, :, None]
            idx = idx.expand(-1, both_k.shape[1], -1, both_k.shape[-1])
            keys.append(both_k.gather(2, idx))
            values.append(both_v.gather(2, idx))
            last = (n[:, None] + torch.arange(K1, device=h.device))[:, None, :]
            depthwise.append(conv_in.gather(2, last.expand(-1, conv_in.shape[1], -1)))
        return h, torch.stack(keys, 1), torch.stack(values, 1), torch.stack(depthwise, 1)

    def streaming_forward(self, x: torch.Tensor, x_lens: torch.Tensor, state: ConformerState,
                          final: Optional[torch.Tensor] = None):
        """x: (B, T, F) next frames, x_lens: (B,), final: (B,) bool (None: no row ends)
        -> (out (B, T', D), out_lens (B,), state). Equal to :meth:`forward` frame by frame:
        a chunk runs once its ``chunk_size`` frames are in, or the utterance ended."""
        M = self._cache_frames()
        B = x.shape[0]
        if final is None:
            final = torch.zeros(B, dtype=torch.bool, device=x.device)
        h, lens, cache, frames = self.subsampling.streaming_forward(
            x, x_lens, state.conv_cache, state.conv_frames)
        h = self.dropout(self.input_proj(h))
        C = self.cfg.chunk_size
        both = torch.cat([state.pending, h], 1)
        t = torch.arange(both.shape[1], device=x.device)[None, :]
        buf, buf_len = pack_left(both, (t < state.pending_len[:, None]) |
                                 ((t >= C) & (t < C + lens[:, None])))
        keys, values, cache_len = state.key_cache, state.value_cache, state.cache_len
        depthwise = state.depthwise_cache
        outs, valid = [], []
        while True:  # one pass per chunk that some row has complete
            ready = (buf_len >= C) | (final & (buf_len > 0))
            if not bool(ready.any()):
                break
            n = torch.where(ready, buf_len.clamp(max=C), torch.zeros_like(buf_len))
            out, k2, v2, d2 = self._chunk(buf[:, :C], n, keys, values, cache_len, depthwise)
            r = ready[:, None, None, None, None]
            keys, values = torch.where(r, k2, keys), torch.where(r, v2, values)
            depthwise = torch.where(ready[:, None, None, None], d2, depthwise)
            cache_len = torch.where(ready, (cache_len + n).clamp(max=M), cache_len)
            outs.append(out)
            valid.append(torch.arange(C, device=x.device)[None, :] < n[:, None])
            buf, buf_len = drop_chunk(buf, buf_len, ready, C)
        out, out_lens = join_chunks(outs, valid, x, self.output_dim)
        state = ConformerState(cache, frames, buf[:, :C], buf_len, keys, values, cache_len,
                               depthwise)
        return out * (torch.arange(out.shape[1], device=x.device)[None, :]
                      < out_lens[:, None]).unsqueeze(-1), out_lens, state
