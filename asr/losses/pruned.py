"""The pruned RNN-T loss: simple loss -> pruning -> the real joiner on a window.

Shape letters: ``B`` batch, ``T`` encoder frames, ``U`` target labels (so the lattice has
``U + 1`` label positions), ``V`` vocabulary including blank, ``S`` prune range,
``De``/``Dp``/``Dj`` encoder / prediction / joiner widths.

Backend that takes the joiner pieces (see :class:`TransducerJoiner`):

``"pruned"``
    Our memory-efficient pruned RNN-T loss (the idea of k2/icefall's pruned loss,
    Kuang et al. 2022, written here from scratch). A "simple" loss with a trivial additive
    joiner ``am (B,T,V) + lm (B,U+1,V)`` is normalised per lattice node without building
    the ``(B,T,U+1,V)`` tensor (a matmul of exponentiated terms). The gradient of that
    loss with respect to its lattice log-probabilities is minus the edge occupancy; from
    the node occupancy we choose, for every frame, a window of ``S`` label positions.
    The real joiner is then evaluated only on the ``(B,T,S,V)`` window and the RNN-T loss
    is computed on that pruned lattice. ``total = simple_loss_scale * simple + pruned``.
    For a ``TransducerHead`` joiner the window joiner and its log-softmax run fused in
    chunks of frames (nothing of size ``(B,T,S,Dj)`` or ``(B,T,S,V)`` is stored; backward
    recomputes each chunk). ``docs/benchmarks.md`` compares it with torchaudio.

Both lattices go to the engines of :mod:`asr.losses.lattice`. Registered as the
``"pruned"`` backend of :mod:`asr.losses.rnnt`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from asr.losses.lattice import lattice_loss, lattice_loss_and_occupancy, trim_padding

__all__ = ["TransducerJoiner", "PrunedLossOutput", "pruned_rnnt_loss", "simple_lattice", "pruning_ranges"]


class TransducerJoiner(Protocol):
    """The joiner pieces the loss backends need (``TransducerHead`` implements them)."""

    def join(self, enc: Tensor, dec: Tensor) -> Tensor:
        """Full joiner: enc ``(B,T,De)``, dec ``(B,U+1,Dp)`` -> logits ``(B,T,U+1,V)``."""

    def project_enc(self, enc: Tensor) -> Tensor:
        """``(..., De) -> (..., Dj)``."""

    def project_dec(self, dec: Tensor) -> Tensor:
        """``(..., Dp) -> (..., Dj)``."""

    def join_projected(self, enc_proj: Tensor, dec_proj: Tensor) -> Tensor:
        """Broadcastable ``(..., Dj)`` and ``(..., Dj)`` -> logits ``(..., V)``.

        Optional fast path: a joiner with ``join_hidden(enc_proj, dec_proj) -> (..., Dj)``,
        ``activation`` (``nn.Tanh`` or ``nn.ReLU``) and ``output`` (``nn.Linear``), so that
        ``join_projected = output(activation(enc_proj + dec_proj))``, lets the pruned loss
        run the joiner fused and chunked.
        """

    def simple_am(self, enc: Tensor) -> Tensor:
        """Encoder-only logits for the simple loss: ``(B,T,De) -> (B,T,V)``."""

    def simple_lm(self, dec: Tensor) -> Tensor:
        """Prediction-only logits for the simple loss: ``(B,U+1,Dp) -> (B,U+1,V)``."""


class PrunedLossOutput(NamedTuple):
    """Parts of the pruned loss, all per utterance.

    total: ``(B,)`` ``simple_loss_scale * simple + pruned``.
    simple: ``(B,)`` loss of the trivial additive joiner.
    pruned: ``(B,)`` loss of the real joiner on the pruned lattice.
    ranges: ``(B, T)`` int64, first label position of each frame's window of width
        ``min(prune_range, U+1)``.
    """

    total: Tensor
    simple: Tensor
    pruned: Tensor
    ranges: Tensor


# ---------------------------------------------------------------------------------------
# Pruned loss.
# ---------------------------------------------------------------------------------------


def simple_lattice(am: Tensor, lm: Tensor, targets: Tensor, blank: int = 0) -> Tensor:
    """Lattice of the trivial joiner ``log_softmax(am[t] + lm[u])`` without ``(B,T,U+1,V)``.

    The per-node normaliser ``logsumexp_v(am[t,v] + lm[u,v])`` is
    ``am_max[t] + lm_max[u] + log(exp(am - am_max) @ exp(lm - lm_max)^T)``: one batched
    matmul ``(B,T,V) x (B,V,U+1)``, in float64 whatever the input dtype (see below).

    Args:
        am: ``(B, T, V)`` encoder-side logits.
        lm: ``(B, U+1, V)`` prediction-side logits.
        targets: ``(B, U)`` int, padded.
        blank: blank index.

    Returns:
        ``(B, T, U+1, 2)`` per-node [log P(blank), log P(next target)].
    """
    B, T, V = am.shape
    U1 = lm.shape[1]
    U = U1 - 1
    # float64: every product exp(am - am_max) * exp(lm - lm_max) is below exp(-gap) when the
    # two sides' best tokens differ by a gap in nats; float32 underflows to 0 past ~87 nats
    # (the normaliser then comes out too large by the excess), float64 only past ~708.
    am64, lm64 = am.double(), lm.double()
    am_max = am64.detach().amax(dim=-1, keepdim=True)  # (B, T, 1)
    lm_max = lm64.detach().amax(dim=-1, keepdim=True)  # (B, U1, 1)
    probs = torch.matmul((am64 - am_max).exp(), (lm64 - lm_max).exp().transpose(1, 2))  # (B, T, U1)
    norm = (probs + torch.finfo(probs.dtype).tiny).log() + am_max + lm_max.transpose(1, 2)
    norm = norm.to(am.dtype)
    blank_lp = am[:, :, blank, None] + lm[:, None, :, blank] - norm
    tg = targets.long().clamp(0, V - 1)
    am_y = am.gather(2, tg[:, None, :].expand(B, T, U))  # (B, T, U)
    lm_y = lm[:, :U].gather(2, tg[:, :, None]).squeeze(-1)  # (B, U)
    emit = am_y + lm_y[:, None, :] - norm[:, :, :U]
    emit = torch.cat([emit, emit.new_full((B, T, 1), float("-inf"))], dim=2)
    return torch.stack([blank_lp, emit], dim=-1)


def pruning_ranges(
    occupancy_grad: Tensor, logit_lengths: Tensor, target_lengths: Tensor, prune_range: int
) -> Tensor:
    """Per-frame windows of ``S = min(prune_range, U+1)`` label positions.

    For each frame the window start maximises the summed node occupancy of the simple
    loss, then it is made consistent so that the pruned lattice still has a path:
    ``s[0] = 0``, the last frame's window holds ``U_b``, ``s`` is non-decreasing and grows by
    at most ``S - 1`` per frame. Infeasible (loss ``inf``, zero gradient) only
    when ``U_b + 1 - S > (S - 1) (T_b - 1)``, i.e. more than ``S - 1`` labels per frame.

    Args:
        occupancy_grad: ``(B, T, U+1, 2)`` gradient of the simple loss w.r.t. its lattice.
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.
        prune_range: window width ``S`` (>= 2).

    Returns:
        ``(B, T)`` int64 window starts, ``0 <= s <= U + 1 - S``.
    """
    if prune_range < 2:
        raise ValueError(f"prune_range must be >= 2, got {prune_range}")
    B, T, U1, _ = occupancy_grad.shape
    device = occupancy_grad.device
    S = min(prune_range, U1)
    node_occ = -occupancy_grad.sum(dim=-1)  # (B, T, U1), node posteriors
    csum = torch.nn.functional.pad(node_occ.cumsum(dim=-1), (1, 0))
    window = csum[..., S:] - csum[..., :-S]  # (B, T, U1 - S + 1)
    start = window.argmax(dim=-1)  # (B, T)
    t_len = logit_lengths.to(device).long()[:, None]
    u_len = target_lengths.to(device).long()[:, None]
    last = (u_len + 1 - S).clamp(min=0)  # window start that still holds U_b
    t = torch.arange(T, device=device)[None, :]
    # Reachability: from s[0] = 0 and towards s[T_b - 1] = last, at most S - 1 per frame.
    upper = torch.minimum((S - 1) * t, last)
    lower = torch.minimum((last - (S - 1) * (t_len - 1 - t)).clamp(min=0), last)
    start = torch.minimum(torch.maximum(start, lower), upper)
    # Non-decreasing: s[t] = min_{k >= t} s[k] (keeps s >= lower, lower is non-decreasing).
    start = start.flip(1).cummin(dim=1).values.flip(1)
    # Growth <= S - 1 per frame: s[t] = min_{k <= t} (s[k] + (S - 1) (t - k)) (keeps s >= lower).
    step = (S - 1) * t
    start = (start - step).cummin(dim=1).values + step
    return start


class _ArcLogProbs(torch.autograd.Function):
    """``log_softmax(logits)`` at blank and at the next label, without the full log-softmax.

    Forward keeps only ``logits`` and the ``(B, T, S)`` normaliser; backward builds the
    gradient ``softmax * -(g_blank + g_emit) + onehot terms`` in one tensor, in place
    (autograd through ``logsumexp``/``gather``/``select`` would allocate and fill several
    ``(B, T, S, V)`` tensors).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, blank: int, labels: Tensor):  # type: ignore[override]
        # logsumexp with a single (B, T, S, V) temporary (torch.logsumexp makes two)
        top = logits.amax(dim=-1, keepdim=True)
        lse = torch.sub(logits, top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))  # (B, T, S)
        blank_lp = logits[..., blank] - lse
        emit_lp = logits.gather(-1, labels[..., None]).squeeze(-1) - lse
        ctx.blank = blank
        ctx.save_for_backward(logits, lse, labels)
        return blank_lp, emit_lp

    @staticmethod
    def backward(ctx, g_blank: Tensor, g_emit: Tensor):  # type: ignore[override]
        logits, lse, labels = ctx.saved_tensors
        grad = torch.sub(logits, lse[..., None]).exp_()
        grad.mul_(-(g_blank + g_emit)[..., None])
        grad[..., ctx.blank] += g_blank
        grad.scatter_add_(-1, labels[..., None], g_emit[..., None])
        return grad, None, None


class _FusedJoinerArcLogProbs(torch.autograd.Function):
    """The whole joiner on the pruned window plus the two arc log-probabilities, in chunks.

    For each chunk of frames: ``hidden = act(enc_p[t] + dec_rows[idx])``,
    ``logits = hidden @ weight.T + bias``, normaliser, blank and next-label log-probs.
    Nothing of size ``(B, T, S, Dj)`` or ``(B, T, S, V)`` is kept: backward recomputes
    each chunk's hidden layer and logits (one extra GEMM) and forms
    ``grad_logits = softmax * -(g_blank + g_emit) + onehot terms`` in place. Peak memory is
    one chunk. ``act`` is ``tanh`` or ``relu``.
    """

    @staticmethod
    def forward(ctx, enc_p: Tensor, dec_rows: Tensor, weight: Tensor, bias: Optional[Tensor],  # type: ignore[override]
                flat_idx: Tensor, labels: Tensor, blank: int, activation: str, frames: int):
        B, T, S = flat_idx.shape
        lse = enc_p.new_empty(B, T, S)
        blank_lp = enc_p.new_empty(B, T, S)
        emit_lp = enc_p.new_empty(B, T, S)
        for t0 in range(0, T, frames):
            sl = slice(t0, min(T, t0 + frames))
            hidden = _hidden(enc_p[:, sl], dec_rows, flat_idx[:, sl], activation)
            logits = _linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias)  # (rows, V)
            lab = labels[:, sl].reshape(-1, 1)
            picked_blank = logits[:, blank].clone()
            picked_emit = logits.gather(1, lab).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            norm = logits.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))
            shape = lse[:, sl].shape
            lse[:, sl] = norm.reshape(shape)
            blank_lp[:, sl] = (picked_blank - norm).reshape(shape)
            emit_lp[:, sl] = (picked_emit - norm).reshape(shape)
        ctx.blank, ctx.activation, ctx.frames, ctx.has_bias = blank, activation, frames, bias is not None
        ctx.save_for_backward(enc_p, dec_rows, weight, bias if bias is not None else weight.new_empty(0),
                              flat_idx, labels, lse)
        return blank_lp, emit_lp

    @staticmethod
    def backward(ctx, g_blank: Tensor, g_emit: Tensor):  # type: ignore[override]
        enc_p, dec_rows, weight, bias, flat_idx, labels, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        B, T, S = flat_idx.shape
        U1 = dec_rows.shape[0] // B
        grad_enc = torch.zeros_like(enc_p)
        grad_dec = torch.zeros_like(dec_rows)
        grad_w = torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None else None
        for t0 in range(0, T, ctx.frames):
            sl = slice(t0, min(T, t0 + ctx.frames))
            idx = flat_idx[:, sl]
            pre = enc_p[:, sl, None, :] + dec_rows[idx]  # (B, Tc, S, Dj)
            hidden = torch.tanh(pre) if ctx.activation == "tanh" else torch.relu(pre)
            h2 = hidden.reshape(-1, hidden.shape[-1])
            gb, ge = g_blank[:, sl].reshape(-1), g_emit[:, sl].reshape(-1)
            grad = _linear(h2, weight, bias).sub_(lse[:, sl].reshape(-1, 1)).exp_()  # softmax
            grad.mul_(-(gb + ge)[:, None])
            grad[:, ctx.blank] += gb
            rows, V = grad.shape
            at_label = torch.arange(rows, device=grad.device) * V + labels[:, sl].reshape(-1)
            flat = grad.view(-1)
            flat[at_label] += ge  # one label per row: no duplicate positions
            grad_w.addmm_(grad.t(), h2)  # grad is now d loss / d logits
            if grad_b is not None:
                grad_b.addmv_(grad.t(), torch.ones(rows, dtype=grad.dtype, device=grad.device))
            grad_pre = torch.mm(grad, weight).reshape(pre.shape)  # d loss / d hidden
            if ctx.activation == "tanh":
                grad_pre.mul_(1.0 - hidden.square_())
            else:
                grad_pre.mul_(pre > 0)
            grad_enc[:, sl] = grad_pre.sum(dim=2)
            # d loss / d dec rows: a batched one-hot matmul; index_add_ on CPU falls back to
            # an elementwise scatter that was ~10x slower here.
            Tc = idx.shape[1]
            local = (idx - U1 * torch.arange(B, device=idx.device)[:, None, None]).reshape(B, 1, Tc * S)
            onehot = torch.zeros(B, U1, Tc * S, dtype=grad.dtype, device=grad.device)
            onehot.scatter_(1, local, 1.0)
            grad_dec.view(B, U1, -1).baddbmm_(onehot, grad_pre.reshape(B, Tc * S, -1))
        return grad_enc, grad_dec, grad_w, grad_b, None, None, None, None, None


def _hidden(enc_p: Tensor, dec_rows: Tensor, flat_idx: Tensor, activation: str) -> Tensor:
    pre = enc_p[:, :, None, :] + dec_rows[flat_idx]
    return pre.tanh_() if activation == "tanh" else pre.relu_()


def _fused_activation(joiner: object) -> Optional[str]:
    """``"tanh"``/``"relu"`` when the joiner is ``output(act(enc_proj + dec_proj))`` with
    known pieces (``TransducerHead`` is), else ``None``."""
    output = getattr(joiner, "output", None)
    activation = getattr(joiner, "activation", None)
    if not hasattr(joiner, "join_hidden") or not isinstance(output, torch.nn.Linear):
        return None
    if isinstance(activation, torch.nn.Tanh):
        return "tanh"
    if isinstance(activation, torch.nn.ReLU):
        return "relu"
    return None


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.addmm(bias, x, weight.t()) if bias is not None else torch.mm(x, weight.t())


def _window_arc_logprobs(
    joiner: TransducerJoiner, enc_p: Tensor, dec_rows: Tensor, flat_idx: Tensor, labels: Tensor, blank: int
) -> tuple[Tensor, Tensor]:
    """Joiner on the pruned window and the two arc log-probabilities per node.

    Args:
        joiner: the joiner pieces.
        enc_p: ``(B, Tc, Dj)`` projected encoder frames.
        dec_rows: ``(B*(U+1), Dj)`` projected prediction outputs, flattened.
        flat_idx: ``(B, Tc, S)`` rows of ``dec_rows`` in each frame's window.
        labels: ``(B, Tc, S)`` next label at each window node.
        blank: blank index.

    Returns:
        blank and next-label log-probabilities, each ``(B, Tc, S)``.
    """
    logits = joiner.join_projected(enc_p[:, :, None, :], dec_rows[flat_idx])  # (B, Tc, S, V)
    return _ArcLogProbs.apply(logits, blank, labels)


def pruned_rnnt_loss(
    joiner: TransducerJoiner,
    enc: Tensor,
    dec: Tensor,
    targets: Tensor,
    enc_lens: Tensor,
    target_lens: Tensor,
    blank: int = 0,
    prune_range: int = 5,
    simple_loss_scale: float = 0.5,
    lattice_engine: str = "auto",
    joiner_chunk_elements: Optional[int] = None,
) -> PrunedLossOutput:
    """Memory-efficient pruned RNN-T loss (simple loss -> pruning -> pruned joiner loss).

    Peak extra memory is ``O(B*T*S*Dj + B*T*U + chunk)`` instead of ``O(B*T*U*V)``.

    Args:
        joiner: the joiner pieces (``project_enc``, ``project_dec``, ``join_projected``,
            ``simple_am``, ``simple_lm``).
        enc: ``(B, T, De)`` encoder output.
        dec: ``(B, U+1, Dp)`` prediction network output (blank/SOS prepended).
        targets: ``(B, U)`` int, padded.
        enc_lens: ``(B,)`` frames per utterance.
        target_lens: ``(B,)`` labels per utterance.
        blank: blank index.
        prune_range: window width ``S``; ``S >= U + 1`` gives exactly the full loss of the
            joiner (plus the simple term).
        simple_loss_scale: weight of the simple loss in ``total``.
        lattice_engine: DP engine for both lattices (see :func:`lattice_loss`).
        joiner_chunk_elements: memory bound for the joiner, in elements of its largest
            per-chunk tensor (``chunk * max(Dj, V)``). When the joiner is
            ``output(act(enc_proj + dec_proj))`` with ``join_hidden``, an ``output``
            ``nn.Linear`` and ``activation`` ``nn.Tanh``/``nn.ReLU`` (``TransducerHead``), the
            whole joiner and the log-softmax run fused in chunks of frames and nothing of
            size ``(B, T, S, Dj)`` or ``(B, T, S, V)`` is stored (backward recomputes each
            chunk: one extra GEMM). Other joiners run in chunks of frames with activation
            checkpointing when ``B*T*S*max(Dj, V)`` exceeds it. ``None`` (default): at most
            about 8 chunks of at least ``2**18`` elements (fewer, larger chunks cost less
            per-op overhead; the bound still keeps the joiner far below the full lattice).
            0: one pass.

    Returns:
        :class:`PrunedLossOutput` with ``total``, ``simple``, ``pruned`` ``(B,)`` and ``ranges``.
    """
    enc, targets = trim_padding(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    targets = targets.long()
    B, T, _ = enc.shape
    U1 = targets.shape[1] + 1

    # 1. Simple loss and its node occupancies.
    am = joiner.simple_am(enc)  # (B, T, V)
    lm = joiner.simple_lm(dec)  # (B, U1, V)
    V = am.shape[-1]
    simple, occupancy = lattice_loss_and_occupancy(
        simple_lattice(am, lm, targets, blank), enc_lens, target_lens, lattice_engine
    )

    # 2. Pruning windows.
    ranges = pruning_ranges(occupancy, enc_lens, target_lens, prune_range)  # (B, T)
    S = min(prune_range, U1)
    u_idx = ranges[:, :, None] + torch.arange(S, device=enc.device)  # (B, T, S), <= U
    # 3. Real joiner on the (B, T, S) window.
    enc_p = joiner.project_enc(enc)  # (B, T, Dj)
    dec_p = joiner.project_dec(dec)  # (B, U1, Dj)
    next_label = torch.nn.functional.pad(targets.clamp(0, V - 1), (0, 1), value=blank)  # (B, U1)
    y_win = torch.gather(next_label, 1, u_idx.reshape(B, T * S)).reshape(B, T, S)
    # Row lookup into (B*(U+1), Dj) (its backward is an index_add); a gather on an expanded
    # (B, T, U+1, Dj) view would allocate that full tensor for its gradient.
    flat_idx = u_idx + U1 * torch.arange(B, device=enc.device)[:, None, None]
    dec_rows = dec_p.reshape(B * U1, dec_p.shape[-1])
    Dj = dec_p.shape[-1]
    if joiner_chunk_elements is None:  # auto: at most ~8 chunks, each >= 2**18 elements
        chunk = max(1 << 18, -(-B * T * S * max(Dj, V) // 8))
    else:
        chunk = joiner_chunk_elements
    activation = _fused_activation(joiner)
    if activation is not None:
        # Fused path: joiner hidden layer, output layer and log-softmax in chunks of frames;
        # neither (B, T, S, Dj) activations nor (B, T, S, V) logits are stored.
        frames = max(1, chunk // (B * S * max(Dj, V))) if chunk else T
        output = joiner.output  # type: ignore[attr-defined]
        blank_lp, emit_lp = _FusedJoinerArcLogProbs.apply(
            enc_p, dec_rows, output.weight, output.bias, flat_idx, y_win, blank, activation, frames
        )
    elif chunk and B * T * S * max(Dj, V) > chunk:
        # Generic joiner: frames in chunks, each recomputed in backward (activation
        # checkpointing), so one chunk's logits and activations live at a time.
        frames = max(1, chunk // (B * S * max(Dj, V)))
        parts = [
            checkpoint(_window_arc_logprobs, joiner, e, dec_rows, i, y, blank, use_reentrant=False)
            for e, i, y in zip(enc_p.split(frames, 1), flat_idx.split(frames, 1), y_win.split(frames, 1))
        ]
        blank_lp = torch.cat([p[0] for p in parts], dim=1)
        emit_lp = torch.cat([p[1] for p in parts], dim=1)
    else:
        blank_lp, emit_lp = _window_arc_logprobs(joiner, enc_p, dec_rows, flat_idx, y_win, blank)
    u_len = target_lens.to(enc.device).long()[:, None, None]
    neg_inf = torch.tensor(float("-inf"), dtype=blank_lp.dtype, device=blank_lp.device)
    blank_lp = torch.where(u_idx <= u_len, blank_lp, neg_inf)
    emit_lp = torch.where(u_idx < u_len, emit_lp, neg_inf)
    window = torch.stack([blank_lp, emit_lp], dim=-1)  # (B, T, S, 2)
    lattice = blank_lp.new_full((B, T, U1, 2), float("-inf"))
    lattice = lattice.scatter(2, u_idx[..., None].expand(B, T, S, 2), window)
    pruned = lattice_loss(lattice, enc_lens, target_lens, lattice_engine)
    total = simple_loss_scale * simple + pruned
    return PrunedLossOutput(total=total, simple=simple, pruned=pruned, ranges=ranges)
