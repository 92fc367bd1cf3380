"""Attention (encoder-decoder) head: an autoregressive decoder over the shared encoder's output.

Two decoders, chosen by ``decoder``:

- ``"lstm"`` (Battenberg et al. 2017, after LAS): a recurrent decoder (LSTM or GRU cells)
  with location-aware content attention (Chorowski et al. 2015): the energies of frame
  ``t`` come from the decoder state, the encoder memory at ``t`` and a convolution of the
  previous step's attention weights around ``t``.
- ``"transformer"``: a small pre-norm transformer decoder (causal self-attention,
  cross-attention over the memory, feed-forward).

Start and end of sentence: the id ``eos`` (default 0, the CTC and RNN-T blank, which is
never a label) is both the start symbol fed first and the end symbol predicted last, so
the head shares the vocabulary ``V`` of the other heads with no extra token.

Training is teacher forced, with label smoothing and optional scheduled sampling
(Bengio et al. 2015: with probability ``sampling_prob`` a step reads a token sampled from
the model's own previous prediction instead of the reference).

Shape letters: ``B`` batch, ``T`` frames, ``U`` labels (``U+1`` with the start or end
symbol), ``V`` vocabulary, ``N`` hypotheses (search), ``De`` encoder width, ``D`` decoder
width, ``A`` attention width, ``K`` location filters, ``L`` layers.

Search interface (what :mod:`asr.search.attention` uses): ``memory(enc, enc_lens)``,
``initial_state(memory)``, ``step(tokens, state, memory)`` and ``max_length(frames)``;
states are tuples of batch-first tensors, so a search selects hypotheses by indexing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.registry import HEADS, SEARCHES
from asr.search import attention as _attention_search  # noqa: F401  (registers the searches)
from asr.search.types import SearchResult

DecoderState = Tuple[Tensor, ...]

__all__ = ["AttentionConfig", "AttentionHead", "Memory", "LocationAwareAttention",
           "RNNAttentionDecoder", "TransformerAttentionDecoder"]


@dataclass
class AttentionConfig:
    """Configuration of :class:`AttentionHead`.

    vocab_size: V, including the id ``eos``.
    enc_dim: width De of the encoder output.
    decoder: ``"lstm"`` (recurrent, location-aware attention) or ``"transformer"``.
    rnn_type: cells of the recurrent decoder, ``"lstm"`` or ``"gru"``.
    dim: decoder width D (embedding, recurrent state, transformer model width).
    layers: recurrent or transformer layers.
    attention_dim: width A of the location-aware attention's energies.
    location_channels: K filters convolving the previous attention weights.
    location_kernel: their width in frames (odd, centred on the frame).
    heads: attention heads of the transformer decoder.
    ff_dim: feed-forward width of the transformer decoder.
    dropout: on embeddings, between layers and before the output.
    label_smoothing: share of each target's probability spread uniformly over V.
    sampling_prob: scheduled sampling, the chance that a training step reads a token
        sampled from the model's previous output instead of the reference (0: off).
    max_length_ratio: search limit, at most ``ceil(max_length_ratio * T)`` labels.
    eos: start and end symbol (0: the blank of the other heads, never a label).
    """

    vocab_size: int
    enc_dim: int
    decoder: str = "lstm"
    rnn_type: str = "lstm"
    dim: int = 256
    layers: int = 1
    attention_dim: int = 128
    location_channels: int = 10
    location_kernel: int = 31
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    label_smoothing: float = 0.1
    sampling_prob: float = 0.0
    max_length_ratio: float = 1.0
    eos: int = 0

    def __post_init__(self) -> None:
        if self.decoder not in ("lstm", "transformer"):
            raise ValueError(f"decoder must be 'lstm' or 'transformer', got {self.decoder!r}")
        if self.rnn_type not in ("lstm", "gru"):
            raise ValueError(f"rnn_type must be 'lstm' or 'gru', got {self.rnn_type!r}")
        if self.location_kernel < 1 or self.location_kernel % 2 == 0:
            raise ValueError(f"location_kernel must be odd, got {self.location_kernel}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.sampling_prob <= 1.0:
            raise ValueError(f"sampling_prob must lie in [0, 1], got {self.sampling_prob}")
        if self.decoder == "transformer" and self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")


@dataclass
class Memory:
    """What the decoder attends to: enc ``(N, T, De)``, mask ``(N, T)`` (True on valid
    frames) and keys ``(N, T, A or D)``, the memory projected once for all steps."""

    enc: Tensor
    mask: Tensor
    keys: Tensor

    def select(self, index: Tensor) -> "Memory":
        """Rows ``index (N',)`` (repeats allowed: one row per hypothesis)."""
        return Memory(self.enc[index], self.mask[index], self.keys[index])


class LocationAwareAttention(nn.Module):
    """Chorowski et al. (2015): ``e_t = w . tanh(W s + V h_t + U (F * a_prev)_t + b)``,
    weights ``a = softmax(e)`` over the valid frames, context ``sum_t a_t h_t``."""

    def __init__(self, enc_dim: int, query_dim: int, att_dim: int, channels: int,
                 kernel: int) -> None:
        super().__init__()
        self.key = nn.Linear(enc_dim, att_dim)  # V h + b, computed once per utterance
        self.query = nn.Linear(query_dim, att_dim, bias=False)
        self.conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False)
        self.location = nn.Linear(channels, att_dim, bias=False)
        self.energy = nn.Linear(att_dim, 1, bias=False)

    def forward(self, query: Tensor, memory: Memory, prev: Tensor) -> Tuple[Tensor, Tensor]:
        """query ``(N, D)``, prev weights ``(N, T)`` -> context ``(N, De)``, weights ``(N, T)``.

        Past each row's frames the previous weights are 0, as the convolution's own zero
        padding is, so a padded row attends exactly as it would alone.
        """
        loc = self.location(self.conv(prev[:, None]).transpose(1, 2))  # (N, T, A)
        e = self.energy(torch.tanh(memory.keys + self.query(query)[:, None] + loc)).squeeze(-1)
        weights = e.masked_fill(~memory.mask, float("-inf")).softmax(dim=-1)
        return torch.bmm(weights[:, None], memory.enc).squeeze(1), weights


class RNNAttentionDecoder(nn.Module):
    """Recurrent decoder with location-aware attention.

    Step i: cells read ``[embed(y_{i-1}); c_{i-1}]`` -> state ``s_i``; attention with query
    ``s_i`` and the previous weights -> context ``c_i``; output ``W [s_i; c_i]``.
    State: ``(h (N, L, D), c (N, L, D), context (N, De), weights (N, T))`` (``c`` stays 0
    for GRU cells).
    """

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        cell = nn.LSTMCell if cfg.rnn_type == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList([cell(cfg.dim + cfg.enc_dim if i == 0 else cfg.dim, cfg.dim)
                                    for i in range(cfg.layers)])
        self.attention = LocationAwareAttention(cfg.enc_dim, cfg.dim, cfg.attention_dim,
                                                cfg.location_channels, cfg.location_kernel)
        self.pre_output = nn.Linear(cfg.dim + cfg.enc_dim, cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def memory(self, enc: Tensor, mask: Tensor) -> Memory:
        return Memory(enc, mask, self.attention.key(enc))

    def initial_state(self, memory: Memory) -> DecoderState:
        """Zero states and context; the first step's "previous" weights are uniform over
        the valid frames (as ESPnet's location-aware attention starts)."""
        N, _, De = memory.enc.shape
        zeros = memory.enc.new_zeros(N, self.cfg.layers, self.cfg.dim)
        uniform = memory.mask.to(memory.enc.dtype)
        uniform = uniform / uniform.sum(1, keepdim=True).clamp(min=1)
        return zeros, zeros.clone(), memory.enc.new_zeros(N, De), uniform

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory
             ) -> Tuple[Tensor, Tensor, DecoderState]:
        """tokens ``(N,)`` -> logits ``(N, V)``, attention weights ``(N, T)``, new state."""
        h, c, context, prev = state
        x = torch.cat([self.dropout(self.embedding(tokens)), context], dim=-1)
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            if self.cfg.rnn_type == "lstm":
                h_l, c_l = cell(x, (h[:, layer], c[:, layer]))
            else:
                h_l, c_l = cell(x, h[:, layer]), c[:, layer]
            hs.append(h_l)
            cs.append(c_l)
            x = self.dropout(h_l)
        context, weights = self.attention(hs[-1], memory, prev)
        hidden = torch.tanh(self.pre_output(torch.cat([hs[-1], context], dim=-1)))
        logits = self.output(self.dropout(hidden))
        return logits, weights, (torch.stack(hs, 1), torch.stack(cs, 1), context, weights)

    def forward(self, inputs: Tensor, memory: Memory, sampling_prob: float = 0.0
                ) -> Tuple[Tensor, Tensor]:
        """Teacher forcing: inputs ``(B, U+1)`` -> logits ``(B, U+1, V)``, weights
        ``(B, U+1, T)``. With ``sampling_prob``, each step after the first reads, per row
        with that chance, a token sampled from the previous step's output."""
        state = self.initial_state(memory)
        logits, weights = [], []
        for i in range(inputs.shape[1]):
            tokens = inputs[:, i]
            if i > 0 and sampling_prob > 0.0:
                sampled = torch.multinomial(logits[-1].detach().float().softmax(-1), 1)[:, 0]
                coin = torch.rand(tokens.shape, device=tokens.device) < sampling_prob
                tokens = torch.where(coin, sampled, tokens)
            step_logits, w, state = self.step(tokens, state, memory)
            logits.append(step_logits)
            weights.append(w)
        return torch.stack(logits, 1), torch.stack(weights, 1)


class _TransformerDecoderLayer(nn.Module):
    """Pre-norm decoder layer that also returns its cross-attention weights (for times)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, keys: Tensor, pad: Tensor, causal: Tensor
                ) -> Tuple[Tensor, Tensor]:
        """x ``(B, U, D)``, keys ``(B, T, D)``, pad ``(B, T)`` and causal ``(U, U)``
        True where attention is barred -> x ``(B, U, D)``, cross-attention weights ``(B, U, T)``."""
        y = self.norms[0](x)
        x = x + self.dropout(self.self_attn(y, y, y, attn_mask=causal, need_weights=False)[0])
        y = self.norms[1](x)
        att, weights = self.cross_attn(y, keys, keys, key_padding_mask=pad, need_weights=True)
        x = x + self.dropout(att)
        return x + self.dropout(self.ff(self.norms[2](x))), weights


class TransformerAttentionDecoder(nn.Module):
    """Transformer decoder over the memory. A search step re-reads the whole prefix (no
    cache): the step is then the teacher-forced forward itself, exactly.
    State: ``(prefix (N, u) int64,)``, the tokens read so far."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.memory_proj = nn.Linear(cfg.enc_dim, cfg.dim)
        self.layers = nn.ModuleList([_TransformerDecoderLayer(cfg.dim, cfg.heads, cfg.ff_dim,
                                                              cfg.dropout)
                                     for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def memory(self, enc: Tensor, mask: Tensor) -> Memory:
        return Memory(enc, mask, self.memory_proj(enc))

    def initial_state(self, memory: Memory) -> DecoderState:
        return (torch.zeros(memory.enc.shape[0], 0, dtype=torch.long, device=memory.enc.device),)

    def _positions(self, length: int, device: torch.device) -> Tensor:
        """Sinusoidal position codes ``(U, D)``."""
        D = self.cfg.dim
        pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, D, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / D))
        codes = torch.zeros(length, D, device=device)
        codes[:, 0::2] = torch.sin(pos * freq)
        codes[:, 1::2] = torch.cos(pos * freq[: D // 2])
        return codes

    def forward(self, inputs: Tensor, memory: Memory, sampling_prob: float = 0.0
                ) -> Tuple[Tensor, Tensor]:
        """inputs ``(B, U+1)`` -> logits ``(B, U+1, V)``, last layer's cross-attention
        weights ``(B, U+1, T)``. Scheduled sampling takes two passes (Duckworth et al.
        2019): the first, without gradient, gives the tokens to mix into the second's input."""
        if sampling_prob > 0.0 and inputs.shape[1] > 1:
            with torch.no_grad():
                logits, _ = self._run(inputs, memory)
            sampled = torch.multinomial(logits[:, :-1].float().softmax(-1).flatten(0, 1), 1)
            sampled = sampled.view(inputs.shape[0], -1)
            coin = torch.rand(sampled.shape, device=inputs.device) < sampling_prob
            inputs = torch.cat([inputs[:, :1], torch.where(coin, sampled, inputs[:, 1:])], 1)
        return self._run(inputs, memory)

    def _run(self, inputs: Tensor, memory: Memory) -> Tuple[Tensor, Tensor]:
        U = inputs.shape[1]
        x = self.embedding(inputs) * math.sqrt(self.cfg.dim) + self._positions(U, inputs.device)
        x = self.dropout(x)
        causal = torch.ones(U, U, dtype=torch.bool, device=inputs.device).triu(diagonal=1)
        weights = None
        for layer in self.layers:
            x, weights = layer(x, memory.keys, ~memory.mask, causal)
        return self.output(self.norm(x)), weights

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory
             ) -> Tuple[Tensor, Tensor, DecoderState]:
        """tokens ``(N,)`` -> logits ``(N, V)``, cross-attention weights ``(N, T)``, state."""
        prefix = torch.cat([state[0], tokens.long()[:, None]], dim=1)
        logits, weights = self._run(prefix, memory)
        return logits[:, -1], weights[:, -1], (prefix,)


@HEADS.register("attention")
class AttentionHead(nn.Module):
    """Attention encoder-decoder head over encoder output.

    >>> head = AttentionHead(AttentionConfig(vocab_size=8, enc_dim=16, dim=12, attention_dim=8))
    >>> enc, enc_lens = torch.randn(2, 7, 16), torch.tensor([7, 5])
    >>> targets, target_lens = torch.tensor([[3, 4, 5], [2, 6, 0]]), torch.tensor([3, 2])
    >>> head.loss(enc, enc_lens, targets, target_lens).shape
    torch.Size([2])
    """

    search_methods = ("attention_greedy", "attention_beam")

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.eos = config.eos
        self.decoder: nn.Module = (RNNAttentionDecoder(config) if config.decoder == "lstm"
                                   else TransformerAttentionDecoder(config))

    @classmethod
    def from_options(cls, enc_dim: int, vocab_size: int, options: Optional[dict] = None
                     ) -> "AttentionHead":
        """Build from a config's free ``options`` dict (the keys of :class:`AttentionConfig`)."""
        return cls(AttentionConfig(vocab_size=vocab_size, enc_dim=enc_dim, **(options or {})))

    # ---- search interface ------------------------------------------------------------
    def memory(self, enc: Tensor, enc_lens: Tensor) -> Memory:
        """enc ``(B, T, De)``, enc_lens ``(B,)`` -> the decoder's :class:`Memory`."""
        mask = torch.arange(enc.shape[1], device=enc.device)[None] < enc_lens.to(enc.device)[:, None]
        return self.decoder.memory(enc, mask)

    def initial_state(self, memory: Memory) -> DecoderState:
        return self.decoder.initial_state(memory)

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory
             ) -> Tuple[Tensor, Tensor, DecoderState]:
        """tokens ``(N,)`` (``eos`` first, as the start symbol) -> logits ``(N, V)``,
        attention weights ``(N, T)`` and the new state."""
        return self.decoder.step(tokens, state, memory)

    def max_length(self, frames: int) -> int:
        """Labels a search may emit for ``frames`` encoder frames."""
        return max(1, math.ceil(self.config.max_length_ratio * frames))

    # ---- training --------------------------------------------------------------------
    def token_log_probs(self, enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor,
                        sampling_prob: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced log-probabilities.

        enc ``(B, T, De)``, enc_lens ``(B,)``, targets ``(B, U)`` padded, target_lens ``(B,)``
        -> log_probs ``(B, U+1, V)`` (float32), outputs ``(B, U+1)`` (the labels then
        ``eos``) and valid ``(B, U+1)`` (True up to and including each row's ``eos``).
        """
        targets = targets.long().clamp(0, self.config.vocab_size - 1)
        lens = target_lens.to(targets.device).long()
        B, U = targets.shape
        positions = torch.arange(U + 1, device=targets.device)[None]
        outputs = F.pad(targets, (0, 1), value=self.eos)
        outputs = torch.where(positions == lens[:, None], self.eos, outputs)
        inputs = F.pad(targets, (1, 0), value=self.eos)  # the start symbol, then the labels
        logits, _ = self.decoder(inputs, self.memory(enc, enc_lens), sampling_prob)
        return logits.float().log_softmax(-1), outputs, positions <= lens[:, None]

    def loss(self, enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Per-utterance label-smoothed cross entropy ``(B,)``, summed over each
        utterance's labels and its ``eos`` (as the CTC loss sums over frames)."""
        sampling = self.config.sampling_prob if self.training else 0.0
        log_probs, outputs, valid = self.token_log_probs(enc, enc_lens, targets, target_lens, sampling)
        nll = -log_probs.gather(-1, outputs[..., None]).squeeze(-1)
        smooth = self.config.label_smoothing
        per_token = (1.0 - smooth) * nll - smooth * log_probs.mean(-1)
        return (per_token * valid).sum(1)

    def sequence_log_probs(self, enc: Tensor, enc_lens: Tensor, targets: Tensor,
                           target_lens: Tensor) -> Tensor:
        """``log P(labels, eos | x)`` per row ``(B,)``, no smoothing or sampling (rescoring)."""
        log_probs, outputs, valid = self.token_log_probs(enc, enc_lens, targets, target_lens)
        return (log_probs.gather(-1, outputs[..., None]).squeeze(-1) * valid).sum(1)

    def decode(self, enc: Tensor, enc_lens: Tensor, method: str = "attention_greedy",
               **options) -> List[SearchResult]:
        """enc ``(B, T, De)``, enc_lens ``(B,)`` -> one :class:`SearchResult` per utterance."""
        if method not in self.search_methods:
            raise ValueError(f"attention head decodes with {self.search_methods}, not {method!r}")
        return SEARCHES.get(method)(self, enc, enc_lens, **options)
