"""RNN-Transducer head: prediction network + joiner over a shared encoder's output.

The split follows torchaudio's ``RNNT``: :meth:`TransducerHead.predict` runs the
prediction network over the labels, :meth:`TransducerHead.join` combines encoder and
prediction outputs into logits. The head also exposes the joiner *pieces*
(``project_enc``, ``project_dec``, ``join_projected``, ``simple_am``, ``simple_lm``) that
the memory-efficient ``"pruned"`` loss and the searches use.

Shape letters: ``B`` batch, ``T`` frames, ``U`` labels (``U+1`` with the prepended blank),
``V`` vocabulary including blank, ``De`` encoder width, ``Dp`` prediction width, ``Dj``
joiner width, ``L`` prediction layers, ``C`` stateless context size.

Prediction state (``PredictorState``) is a tuple of tensors, batch first, so searches can
select and concatenate hypotheses without knowing the network type:

- ``"lstm"``: ``(h (B, L, Dp), c (B, L, Dp))``
- ``"gru"``: ``(h (B, L, Dp),)``
- ``"stateless"``: ``(context (B, C-1) int64,)``, the last ``C-1`` labels fed.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from asr.losses import rnnt as rnnt_losses
from asr.registry import HEADS, RNNT_LOSSES, SEARCHES
from asr.search import transducer as _transducer_search  # noqa: F401  (registers the searches)
from asr.search import vocab as _vocab_search  # noqa: F401  (closed-vocabulary search)
from asr.search.types import SearchResult

PredictorState = Tuple[Tensor, ...]

log = logging.getLogger(__name__)

__all__ = ["TransducerConfig", "TransducerHead", "PredictorState", "RNNPredictor", "StatelessPredictor"]


@dataclass
class TransducerConfig:
    """Configuration of :class:`TransducerHead`.

    vocab_size: V, including blank.
    enc_dim: width De of the encoder output.
    pred_type: prediction network, ``"lstm"``, ``"gru"`` or ``"stateless"``.
    pred_dim: width Dp of the prediction network (embedding and hidden).
    pred_layers: recurrent layers (``"lstm"``/``"gru"``).
    pred_dropout: dropout on the embedding and between recurrent layers.
    context_size: labels the stateless prediction network looks at (C >= 1).
    joiner_dim: width Dj of the joiner.
    joiner_activation: ``"tanh"`` or ``"relu"``.
    blank: blank index (0 across the toolkit).
    loss: ``RNNT_LOSSES`` backend: ``"pruned"``, ``"torchaudio"``, ``"reference"``, ``"warp_rnnt"``.
    prune_range: window width S of the pruned loss.
    simple_loss_scale: weight of the simple (trivial joiner) loss in the pruned loss.
    max_symbols_per_frame: greedy search limit on labels emitted per frame.
    """

    vocab_size: int
    enc_dim: int
    pred_type: str = "lstm"
    pred_dim: int = 256
    pred_layers: int = 1
    pred_dropout: float = 0.0
    context_size: int = 2
    joiner_dim: int = 256
    joiner_activation: str = "tanh"
    blank: int = 0
    loss: str = "pruned"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    max_symbols_per_frame: int = 3

    def __post_init__(self) -> None:
        if self.pred_type not in ("lstm", "gru", "stateless"):
            raise ValueError(f"pred_type must be 'lstm', 'gru' or 'stateless', got {self.pred_type!r}")
        if self.joiner_activation not in ("tanh", "relu"):
            raise ValueError(f"joiner_activation must be 'tanh' or 'relu', got {self.joiner_activation!r}")
        if not 0 <= self.blank < self.vocab_size:
            raise ValueError(f"blank {self.blank} outside the vocabulary of size {self.vocab_size}")
        if self.context_size < 1:
            raise ValueError("context_size must be >= 1")
        if self.loss not in RNNT_LOSSES:
            raise ValueError(f"unknown rnnt loss backend {self.loss!r}; known: {RNNT_LOSSES.names()}")
        if self.loss == "pruned" and self.prune_range < 2:  # else the first training step fails
            raise ValueError(f"prune_range must be >= 2 (a one-position window cannot emit a label), "
                             f"got {self.prune_range}")


@contextmanager
def _mkldnn_rnn(enabled: bool, device: torch.device):
    """Scope oneDNN for CPU recurrent layers (only the ``enabled`` flag is touched)."""
    if device.type != "cpu" or torch.backends.mkldnn.enabled == enabled:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.set_flags(enabled, None, None, None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before, None, None, None)


class RNNPredictor(nn.Module):
    """Embedding + LSTM/GRU prediction network.

    ``use_mkldnn`` (class attribute, default ``False``): on the CPUs we measured, torch's
    oneDNN LSTM was slower than the native kernel (forward+backward at B=32, U=81, D=256:
    2.0 s vs 0.8 s; at tiny sizes 40x slower), so CPU runs use the native kernel.
    """

    use_mkldnn = False

    def __init__(self, vocab_size: int, dim: int, layers: int, rnn_type: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn_type = rnn_type
        self.layers = layers
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)
        rnn_cls = nn.LSTM if rnn_type == "lstm" else nn.GRU
        self.rnn = rnn_cls(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def initial_state(self, batch_size: int, device: torch.device) -> PredictorState:
        """Zero state: ``(h, c)`` or ``(h,)``, each ``(B, L, Dp)``."""
        zeros = torch.zeros(batch_size, self.layers, self.dim, device=device, dtype=self.embedding.weight.dtype)
        return (zeros, zeros.clone()) if self.rnn_type == "lstm" else (zeros,)

    def forward(
        self, tokens: Tensor, lengths: Tensor, state: Optional[PredictorState]
    ) -> Tuple[Tensor, PredictorState]:
        """Run over label sequences.

        Args:
            tokens: ``(B, L')`` int64 labels.
            lengths: ``(B,)`` valid labels per row (the returned state is taken there).
            state: previous state or ``None`` for zeros.

        Returns:
            output ``(B, L', Dp)`` and the state after each row's last valid label.
        """
        B, L = tokens.shape
        x = self.dropout(self.embedding(tokens))
        hx = None
        if state is not None:
            hx = tuple(s.transpose(0, 1).contiguous() for s in state)
            if self.rnn_type == "gru":
                hx = hx[0]
        with _mkldnn_rnn(self.use_mkldnn, x.device):
            if L > 0 and bool((lengths < L).any()):
                packed = nn.utils.rnn.pack_padded_sequence(
                    x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
                )
                out, hn = self.rnn(packed, hx)
                out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=L)
            else:
                out, hn = self.rnn(x, hx)
        hn = hn if isinstance(hn, tuple) else (hn,)
        return out, tuple(h.transpose(0, 1) for h in hn)


class StatelessPredictor(nn.Module):
    """Embedding + 1-D convolution over the last ``C`` labels (icefall-style stateless decoder).

    The left context before the first label is filled with blanks.
    """

    def __init__(self, vocab_size: int, dim: int, context_size: int, blank: int = 0) -> None:
        super().__init__()
        self.context_size = context_size
        self.blank = blank
        self.embedding = nn.Embedding(vocab_size, dim)
        self.conv: Optional[nn.Conv1d] = None
        if context_size > 1:
            groups = dim // 4 if dim % 4 == 0 and dim >= 4 else 1
            self.conv = nn.Conv1d(dim, dim, kernel_size=context_size, groups=groups, bias=False)

    def initial_state(self, batch_size: int, device: torch.device) -> PredictorState:
        """``(context (B, C-1) int64,)`` filled with blanks."""
        return (torch.full((batch_size, self.context_size - 1), self.blank, dtype=torch.long, device=device),)

    def forward(
        self, tokens: Tensor, lengths: Tensor, state: Optional[PredictorState]
    ) -> Tuple[Tensor, PredictorState]:
        """Run over label sequences.

        Args:
            tokens: ``(B, L')`` int64 labels.
            lengths: ``(B,)`` valid labels per row (the returned context ends there).
            state: ``(context (B, C-1),)`` or ``None`` for blanks.

        Returns:
            output ``(B, L', Dp)`` and the state ``(context (B, C-1),)``.
        """
        B, L = tokens.shape
        if state is None:
            state = self.initial_state(B, tokens.device)
        context = torch.cat([state[0], tokens], dim=1)  # (B, C-1+L')
        x = self.embedding(context)
        if self.conv is not None:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out = torch.relu(x)
        c1 = self.context_size - 1
        idx = lengths.to(tokens.device).long()[:, None] + torch.arange(c1, device=tokens.device)
        return out, (torch.gather(context, 1, idx),)


@HEADS.register("transducer")
class TransducerHead(nn.Module):
    """RNN-T head over encoder output.

    >>> head = TransducerHead(TransducerConfig(vocab_size=8, enc_dim=16, pred_dim=12, joiner_dim=10))
    >>> enc, enc_lens = torch.randn(2, 7, 16), torch.tensor([7, 5])
    >>> targets, target_lens = torch.tensor([[3, 4, 5], [2, 6, 0]]), torch.tensor([3, 2])
    >>> head.loss(enc, enc_lens, targets, target_lens).shape
    torch.Size([2])
    >>> len(head.decode(enc, enc_lens, "greedy"))
    2
    """

    search_methods = ("transducer_greedy", "transducer_beam", "transducer_vocab")

    def __init__(self, config: TransducerConfig) -> None:
        super().__init__()
        self.config = config
        self.blank = config.blank
        if config.pred_type == "stateless":
            self.predictor: nn.Module = StatelessPredictor(
                config.vocab_size, config.pred_dim, config.context_size, config.blank
            )
        else:
            self.predictor = RNNPredictor(
                config.vocab_size, config.pred_dim, config.pred_layers, config.pred_type, config.pred_dropout
            )
        self.enc_proj = nn.Linear(config.enc_dim, config.joiner_dim)
        self.dec_proj = nn.Linear(config.pred_dim, config.joiner_dim)
        self.activation = nn.Tanh() if config.joiner_activation == "tanh" else nn.ReLU()
        self.output = nn.Linear(config.joiner_dim, config.vocab_size)
        # Trivial-joiner projections of the pruned loss (only built when that loss is used,
        # so other backends leave no unused parameters).
        self.simple_am_proj: Optional[nn.Linear] = None
        self.simple_lm_proj: Optional[nn.Linear] = None
        if config.loss == "pruned":
            self.simple_am_proj = nn.Linear(config.enc_dim, config.vocab_size)
            self.simple_lm_proj = nn.Linear(config.pred_dim, config.vocab_size)

    @classmethod
    def from_options(cls, enc_dim: int, vocab_size: int, options: Optional[dict] = None) -> "TransducerHead":
        """Build from a config's free ``options`` dict (the keys of :class:`TransducerConfig`)."""
        return cls(TransducerConfig(vocab_size=vocab_size, enc_dim=enc_dim, **(options or {})))

    # ---- prediction network ---------------------------------------------------------
    def initial_state(self, batch_size: int, device: Optional[torch.device] = None) -> PredictorState:
        """State before any label (see the module docstring for the layout)."""
        device = device if device is not None else self.output.weight.device
        return self.predictor.initial_state(batch_size, device)

    def predict(
        self,
        targets: Tensor,
        target_lengths: Tensor,
        state: Optional[PredictorState] = None,
        prepend_blank: bool = True,
    ) -> Tuple[Tensor, Tensor, PredictorState]:
        """Prediction network over label sequences.

        Args:
            targets: ``(B, U)`` int labels, padded with any valid id.
            target_lengths: ``(B,)`` labels per row.
            state: state to continue from, or ``None`` for the initial state.
            prepend_blank: prepend the blank (start) symbol, so ``U' = U + 1``.

        Returns:
            dec ``(B, U', Dp)``, lengths ``(B,)`` (``target_lengths + 1`` with the blank),
            and the state after each row's last valid label.
        """
        targets = targets.long().clamp(0, self.config.vocab_size - 1)
        lengths = target_lengths.to(targets.device).long()
        if prepend_blank:
            targets = nn.functional.pad(targets, (1, 0), value=self.blank)
            lengths = lengths + 1
        dec, state = self.predictor(targets, lengths, state)
        return dec, lengths, state

    def step(self, tokens: Tensor, state: PredictorState) -> Tuple[Tensor, PredictorState]:
        """One prediction step for search.

        Args:
            tokens: ``(N,)`` int64 last label of each hypothesis (blank at the start).
            state: state of the ``N`` hypotheses.

        Returns:
            dec ``(N, Dp)`` and the new state.
        """
        ones = torch.ones(tokens.shape[0], dtype=torch.long, device=tokens.device)
        dec, state = self.predictor(tokens.long()[:, None], ones, state)
        return dec[:, 0], state

    # ---- joiner ----------------------------------------------------------------------
    def project_enc(self, enc: Tensor) -> Tensor:
        """``(..., De) -> (..., Dj)``."""
        return self.enc_proj(enc)

    def project_dec(self, dec: Tensor) -> Tensor:
        """``(..., Dp) -> (..., Dj)``."""
        return self.dec_proj(dec)

    def join_hidden(self, enc_proj: Tensor, dec_proj: Tensor) -> Tensor:
        """Joiner hidden layer: ``activation(enc_proj + dec_proj)``, broadcast ``(..., Dj)``."""
        return self.activation(enc_proj + dec_proj)

    def join_projected(self, enc_proj: Tensor, dec_proj: Tensor) -> Tensor:
        """Joiner on projected inputs of broadcastable shapes ``(..., Dj)`` -> logits ``(..., V)``.

        Equals ``self.output(self.join_hidden(enc_proj, dec_proj))``.
        """
        return self.output(self.join_hidden(enc_proj, dec_proj))

    def join(self, enc: Tensor, dec: Tensor) -> Tensor:
        """Joiner logits.

        Args:
            enc: ``(B, T, De)`` encoder output, or any shape ``(..., De)`` that broadcasts
                with ``dec`` after projection (e.g. ``(B, T, 1, De)``).
            dec: ``(B, U+1, Dp)`` prediction output, or ``(..., Dp)`` (e.g. ``(B, 1, U+1, Dp)``).

        Returns:
            ``(B, T, U+1, V)`` when both inputs are 3-D, otherwise the broadcast shape
            ``(..., V)``. Unnormalised (apply ``log_softmax`` for log-probabilities).
        """
        enc_p = self.project_enc(enc)
        dec_p = self.project_dec(dec)
        if enc.dim() == 3 and dec.dim() == 3:
            enc_p, dec_p = enc_p[:, :, None, :], dec_p[:, None, :, :]
        return self.join_projected(enc_p, dec_p)

    def simple_am(self, enc: Tensor) -> Tensor:
        """Encoder-only logits of the pruned loss's simple joiner: ``(B,T,De) -> (B,T,V)``."""
        if self.simple_am_proj is None:
            raise RuntimeError("this TransducerHead was built without the pruned loss (config.loss != 'pruned')")
        return self.simple_am_proj(enc)

    def simple_lm(self, dec: Tensor) -> Tensor:
        """Prediction-only logits of the pruned loss's simple joiner: ``(B,U+1,Dp) -> (B,U+1,V)``."""
        if self.simple_lm_proj is None:
            raise RuntimeError("this TransducerHead was built without the pruned loss (config.loss != 'pruned')")
        return self.simple_lm_proj(dec)

    # ---- head interface ----------------------------------------------------------------
    def loss(self, enc: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Per-utterance RNN-T loss with the configured backend.

        Args:
            enc: ``(B, T, De)`` encoder output.
            enc_lens: ``(B,)`` frames per utterance.
            targets: ``(B, U)`` int64 labels, padded.
            target_lens: ``(B,)`` labels per utterance.

        Returns:
            ``(B,)`` losses, no batch reduction. Utterances whose loss is not finite (the
            ``"pruned"`` loss gives ``inf`` when the window of ``prune_range`` labels
            leaves no path, e.g. more than ``prune_range - 1`` labels per frame) get 0,
            and their gradient with it, as the CTC head's ``zero_infinity`` does, rather
            than poisoning the batch; a warning says how many.
        """
        # No packing here: outputs past each row's length are unused by the loss, and the
        # final state (the only reason to pack) is not needed.
        tokens = nn.functional.pad(targets.long().clamp(0, self.config.vocab_size - 1), (1, 0), value=self.blank)
        full = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        dec, _ = self.predictor(tokens, full, None)
        # the joiner and loss in fp32 under autocast: the lattice's log-sums lose too much
        # in 16 bits, and the pruned loss's own backward mixes dtypes
        dtype = next(self.parameters()).dtype  # fp32 (or what the head itself is in)
        with torch.autocast(enc.device.type, enabled=False):
            loss = rnnt_losses.rnnt_loss(
                self.config.loss,
                self,
                enc.to(dtype),
                dec.to(dtype),
                targets,
                enc_lens,
                target_lens,
                blank=self.blank,
                prune_range=self.config.prune_range,
                simple_loss_scale=self.config.simple_loss_scale,
            )
        finite = torch.isfinite(loss)
        if not bool(finite.all()):
            log.warning("RNN-T loss (%s): %d of %d utterances have a non-finite loss (no path in the "
                        "pruned lattice?); set to 0 with no gradient", self.config.loss,
                        int((~finite).sum()), loss.shape[0])
            loss = torch.where(finite, loss, torch.zeros_like(loss))
        return loss

    def decode(
        self, enc: Tensor, enc_lens: Tensor, method: str = "greedy", beam: int = 4, nbest: int = 1, **kw
    ) -> List[SearchResult]:
        """Decode encoder output.

        Args:
            enc: ``(B, T, De)`` encoder output.
            enc_lens: ``(B,)`` frames per utterance.
            method: ``"greedy"``/``"transducer_greedy"`` or ``"beam"``/``"transducer_beam"``
                (any ``SEARCHES`` name taking a transducer head).
            beam: beam width.
            nbest: hypotheses returned per utterance (beam search).
            **kw: passed to the search (e.g. ``max_symbols_per_frame``, ``lm_score``, ``lm_weight``).

        Returns:
            one :class:`SearchResult` per utterance.
        """
        name = method if method in SEARCHES else f"transducer_{method}"
        search = SEARCHES.get(name)
        if name == "transducer_greedy":
            kw.setdefault("max_symbols_per_frame", self.config.max_symbols_per_frame)
        return search(self, enc, enc_lens, beam=beam, nbest=nbest, **kw)
