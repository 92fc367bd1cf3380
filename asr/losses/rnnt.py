"""RNN-Transducer loss backends behind one adapter, chosen by name through ``RNNT_LOSSES``.

All losses here are per utterance: shape ``(B,)``, no reduction over the batch (active
learning needs per-utterance gradients; the trainer reduces).

Shape letters: ``B`` batch, ``T`` encoder frames, ``U`` target labels (so the lattice has
``U + 1`` label positions), ``V`` vocabulary including blank, ``S`` prune range,
``De``/``Dp``/``Dj`` encoder / prediction / joiner widths.

Backends
--------
Full-lattice backends take joiner logits ``(B, T, U+1, V)``:

``"torchaudio"``
    ``torchaudio.functional.rnnt_loss`` (C++), the reference for speed and values.
    float32 only; other dtypes are computed in float32.
``"reference"``
    Pure PyTorch forward-variable dynamic programme in float64; autograd gives the
    gradients. Slow; used by the tests.
``"warp_rnnt"``
    The ``warp_rnnt`` CUDA package, when it is installed and the logits are on CUDA.

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

Lattice engine
--------------
Both the simple and the pruned loss reduce the problem to a *lattice* tensor
``(B, T, U+1, 2)`` holding, per node, ``[log P(blank), log P(next target)]``. In float32
the DP runs in torchaudio's C++ kernel: ``rnnt_loss(lattice, targets=all ones, blank=0,
fused_log_softmax=False)`` treats the last axis as a 2-symbol vocabulary of per-node
log-probabilities (verified against the reference DP, values and gradients, in
``tests/test_rnnt_loss.py``). In float64 (tests) a vectorised anti-diagonal DP in pure
PyTorch is used instead.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import torch
from torch import Tensor

from asr.registry import RNNT_LOSSES

__all__ = [
    "TransducerJoiner",
    "PrunedLossOutput",
    "rnnt_loss",
    "torchaudio_rnnt_loss",
    "reference_rnnt_loss",
    "warp_rnnt_loss",
    "pruned_rnnt_loss",
    "simple_lattice",
    "lattice_from_logits",
    "lattice_loss",
    "lattice_loss_reference",
    "pruning_ranges",
]

# Finite stand-in for log(0) in the pure-PyTorch DP: logaddexp(-inf, -inf) has NaN
# gradients, a very negative finite number does not.
_LOG_ZERO = -1.0e30
# The same for torchaudio's float32 kernel (sums of a few of these stay finite).
_TA_LOG_ZERO = -1.0e5


class TransducerJoiner(Protocol):
    """The joiner pieces the loss backends need (``TransducerHead`` implements them)."""

    def join(self, enc: Tensor, dec: Tensor) -> Tensor:
        """Full joiner: enc ``(B,T,De)``, dec ``(B,U+1,Dp)`` -> logits ``(B,T,U+1,V)``."""

    def project_enc(self, enc: Tensor) -> Tensor:
        """``(..., De) -> (..., Dj)``."""

    def project_dec(self, dec: Tensor) -> Tensor:
        """``(..., Dp) -> (..., Dj)``."""

    def join_projected(self, enc_proj: Tensor, dec_proj: Tensor) -> Tensor:
        """Broadcastable ``(..., Dj)`` and ``(..., Dj)`` -> logits ``(..., V)``."""

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


def _backend(takes_joiner: bool) -> Callable[[Callable], Callable]:
    def mark(fn: Callable) -> Callable:
        fn.takes_joiner = takes_joiner
        return fn

    return mark


def _trim(
    enc_or_logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, lattice_axis: bool
) -> tuple[Tensor, Tensor]:
    """Cut padding beyond the longest utterance (torchaudio requires max lengths == sizes)."""
    t_max = int(logit_lengths.max()) if logit_lengths.numel() else 0
    u_max = int(target_lengths.max()) if target_lengths.numel() else 0
    x = enc_or_logits[:, :t_max]
    if lattice_axis:
        x = x[:, :, : u_max + 1]
    return x, targets[:, :u_max]


# ---------------------------------------------------------------------------------------
# Lattice engine: (B, T, U+1, 2) per-node [blank, next-target] log-probabilities -> loss.
# ---------------------------------------------------------------------------------------


def lattice_from_logits(logits: Tensor, targets: Tensor, blank: int = 0) -> Tensor:
    """Per-node log-probabilities of the two arcs leaving each lattice node.

    Args:
        logits: ``(B, T, U+1, V)`` joiner output (unnormalised).
        targets: ``(B, U)`` int, padded with any valid id.
        blank: blank index.

    Returns:
        ``(B, T, U+1, 2)``: ``[..., 0]`` log P(blank | t, u), ``[..., 1]`` log P(y_{u+1} | t, u)
        (``-inf`` at ``u = U``).
    """
    B, T, U1, V = logits.shape
    logp = logits.log_softmax(dim=-1)
    blank_lp = logp[..., blank]
    tg = targets.long().clamp(0, V - 1)
    emit = logp[:, :, : U1 - 1].gather(3, tg[:, None, :, None].expand(B, T, U1 - 1, 1)).squeeze(-1)
    emit = torch.cat([emit, emit.new_full((B, T, 1), float("-inf"))], dim=2)
    return torch.stack([blank_lp, emit], dim=-1)


def lattice_loss_reference(lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """Negative log-likelihood of the RNN-T lattice by an anti-diagonal forward DP.

    Pure PyTorch; runs in the lattice dtype (use float64 for reference values). Autograd
    gives the gradients. Loops over the ``T + U`` anti-diagonals, vectorised over ``B`` and
    ``U``.

    Args:
        lattice: ``(B, T, U+1, 2)`` per-node [log P(blank), log P(next target)].
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.

    Returns:
        ``(B,)`` ``-log P(y | x)``.
    """
    B, T, U1, _ = lattice.shape
    device = lattice.device
    lat = lattice.clamp(min=_LOG_ZERO)
    blank, emit = lat[..., 0], lat[..., 1]
    n_diag = T + U1 - 1
    n = torch.arange(n_diag, device=device)[:, None]
    u = torch.arange(U1, device=device)[None, :]
    t_of = n - u  # (N, U1): frame of node (diagonal n, label position u)
    valid = (t_of >= 0) & (t_of < T)
    t_cl = t_of.clamp(0, T - 1)
    u_full = u.expand(n_diag, U1)
    blank_s = torch.where(valid, blank[:, t_cl, u_full], _LOG_ZERO)  # (B, N, U1)
    emit_s = torch.where(valid, emit[:, t_cl, u_full], _LOG_ZERO)
    alpha = lat.new_full((B, U1), _LOG_ZERO)
    alpha = torch.where(u == 0, torch.zeros_like(alpha), alpha)
    alphas = [alpha]
    pad = lat.new_full((B, 1), _LOG_ZERO)
    for d in range(1, n_diag):
        from_blank = alpha + blank_s[:, d - 1]  # (t-1, u) -> (t, u)
        from_emit = torch.cat([pad, (alpha + emit_s[:, d - 1])[:, :-1]], dim=1)  # (t, u-1) -> (t, u)
        alpha = torch.logaddexp(from_blank, from_emit)
        alpha = torch.where(valid[d][None, :], alpha, _LOG_ZERO)
        alphas.append(alpha)
    alpha_all = torch.stack(alphas, dim=1)  # (B, N, U1)
    t_last = logit_lengths.long().to(device) - 1
    u_last = target_lengths.long().to(device)
    b = torch.arange(B, device=device)
    log_like = alpha_all[b, t_last + u_last, u_last] + blank[b, t_last, u_last]
    return -log_like


def _torchaudio_lattice_loss(lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    from torchaudio.functional import rnnt_loss as ta_rnnt_loss

    B, T, U1, _ = lattice.shape
    ones = torch.ones((B, U1 - 1), dtype=torch.int32, device=lattice.device)
    # The kernel can return NaN when -inf arcs surround reachable nodes; a finite log(0)
    # stand-in (exp underflows to exactly 0 in float32) avoids that.
    return ta_rnnt_loss(
        lattice.float().clamp(min=_TA_LOG_ZERO).contiguous(),
        ones,
        logit_lengths.to(device=lattice.device, dtype=torch.int32),
        target_lengths.to(device=lattice.device, dtype=torch.int32),
        blank=0,
        reduction="none",
        fused_log_softmax=False,
    ).to(lattice.dtype)


def lattice_loss(lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """RNN-T negative log-likelihood of a lattice of per-node arc log-probabilities.

    float64 lattices use :func:`lattice_loss_reference`; other dtypes run torchaudio's C++
    DP in float32 (with ``fused_log_softmax=False`` and a 2-symbol vocabulary). Padding
    beyond the longest utterance is cut off first.

    Args:
        lattice: ``(B, T, U+1, 2)`` per-node [log P(blank), log P(next target)].
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.

    Returns:
        ``(B,)`` per-utterance loss.
    """
    t_max = int(logit_lengths.max())
    u_max = int(target_lengths.max())
    lattice = lattice[:, :t_max, : u_max + 1]
    if lattice.dtype == torch.float64:
        return lattice_loss_reference(lattice, logit_lengths, target_lengths)
    return _torchaudio_lattice_loss(lattice, logit_lengths, target_lengths)


class _AttachGradient(torch.autograd.Function):
    """Returns precomputed per-utterance ``values`` whose gradient w.r.t. ``x`` is ``grad``."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (grad.dim() - 1)
        return grad * grad_out.reshape(shape), None, None


def _lattice_loss_and_occupancy(
    lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Lattice loss plus its gradient w.r.t. the lattice (minus the arc occupancies).

    One DP serves both: the loss keeps its autograd connection to ``lattice`` through
    :class:`_AttachGradient`. Works under ``torch.no_grad`` too (the occupancies are needed
    for pruning during validation).

    Returns:
        loss ``(B,)`` and occupancy gradient ``(B, T, U+1, 2)`` (detached, ``<= 0``).
    """
    detached = lattice.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = lattice_loss(detached, logit_lengths, target_lengths)
        (grad,) = torch.autograd.grad(loss.sum(), detached)
    if lattice.requires_grad and torch.is_grad_enabled():
        return _AttachGradient.apply(lattice, loss.detach(), grad), grad
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------
# Full-lattice backends.
# ---------------------------------------------------------------------------------------


@RNNT_LOSSES.register("torchaudio")
@_backend(takes_joiner=False)
def torchaudio_rnnt_loss(
    logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int = 0
) -> Tensor:
    """``torchaudio.functional.rnnt_loss`` with ``reduction="none"``.

    Args:
        logits: ``(B, T, U+1, V)`` joiner output (log-softmax is fused in the kernel).
        targets: ``(B, U)`` int, padded.
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.
        blank: blank index.

    Returns:
        ``(B,)`` per-utterance loss, in the dtype of ``logits`` (computed in float32).
    """
    from torchaudio.functional import rnnt_loss as ta_rnnt_loss

    logits, targets = _trim(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
    dtype = logits.dtype
    if dtype != torch.float32:
        logits = logits.float()
    loss = ta_rnnt_loss(
        logits.contiguous(),
        targets.to(torch.int32).contiguous(),
        logit_lengths.to(device=logits.device, dtype=torch.int32),
        target_lengths.to(device=logits.device, dtype=torch.int32),
        blank=blank,
        reduction="none",
    )
    return loss.to(dtype)


@RNNT_LOSSES.register("reference")
@_backend(takes_joiner=False)
def reference_rnnt_loss(
    logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int = 0
) -> Tensor:
    """Pure PyTorch RNN-T loss in float64 (slow; for tests and debugging).

    Args:
        logits: ``(B, T, U+1, V)`` joiner output.
        targets: ``(B, U)`` int, padded.
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.
        blank: blank index.

    Returns:
        ``(B,)`` per-utterance loss, in the dtype of ``logits``.
    """
    logits, targets = _trim(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
    lattice = lattice_from_logits(logits.double(), targets, blank)
    return lattice_loss_reference(lattice, logit_lengths, target_lengths).to(logits.dtype)


@RNNT_LOSSES.register("warp_rnnt")
@_backend(takes_joiner=False)
def warp_rnnt_loss(
    logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int = 0
) -> Tensor:
    """The ``warp_rnnt`` package (CUDA only).

    Args:
        logits: ``(B, T, U+1, V)`` joiner output on a CUDA device.
        targets: ``(B, U)`` int, padded.
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.
        blank: blank index.

    Returns:
        ``(B,)`` per-utterance loss.

    Raises:
        RuntimeError: when ``warp_rnnt`` is not installed or the logits are not on CUDA.
    """
    try:
        import warp_rnnt  # type: ignore[import-not-found]
    except ImportError as err:
        raise RuntimeError(
            "rnnt loss backend 'warp_rnnt' needs the warp_rnnt package (pip install warp_rnnt, "
            "CUDA build); use 'pruned' or 'torchaudio' instead"
        ) from err
    if not logits.is_cuda:
        raise RuntimeError("rnnt loss backend 'warp_rnnt' runs on CUDA tensors only; got " + str(logits.device))
    logits, targets = _trim(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
    dtype = logits.dtype
    log_probs = logits.float().log_softmax(dim=-1)
    loss = warp_rnnt.rnnt_loss(
        log_probs,
        targets.int().contiguous(),
        logit_lengths.int().to(logits.device),
        target_lengths.int().to(logits.device),
        average_frames=False,
        reduction="none",
        blank=blank,
    )
    return loss.to(dtype)


# ---------------------------------------------------------------------------------------
# Pruned loss.
# ---------------------------------------------------------------------------------------


def simple_lattice(am: Tensor, lm: Tensor, targets: Tensor, blank: int = 0) -> Tensor:
    """Lattice of the trivial joiner ``log_softmax(am[t] + lm[u])`` without ``(B,T,U+1,V)``.

    The per-node normaliser ``logsumexp_v(am[t,v] + lm[u,v])`` is
    ``am_max[t] + lm_max[u] + log(exp(am - am_max) @ exp(lm - lm_max)^T)``: one batched
    matmul ``(B,T,V) x (B,V,U+1)``.

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
    am_max = am.detach().amax(dim=-1, keepdim=True)  # (B, T, 1)
    lm_max = lm.detach().amax(dim=-1, keepdim=True)  # (B, U1, 1)
    probs = torch.matmul((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))  # (B, T, U1)
    norm = (probs + torch.finfo(probs.dtype).tiny).log() + am_max + lm_max.transpose(1, 2)
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
    at most ``S - 1`` per frame. Infeasible (a huge finite loss, about ``1e5`` in float32) only
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


@RNNT_LOSSES.register("pruned")
@_backend(takes_joiner=True)
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
) -> PrunedLossOutput:
    """Memory-efficient pruned RNN-T loss (simple loss -> pruning -> pruned joiner loss).

    Peak extra memory is ``O(B*T*S*V + B*T*U)`` instead of ``O(B*T*U*V)``.

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

    Returns:
        :class:`PrunedLossOutput` with ``total``, ``simple``, ``pruned`` ``(B,)`` and ``ranges``.
    """
    enc, targets = _trim(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    targets = targets.long()
    B, T, _ = enc.shape
    U1 = targets.shape[1] + 1

    # 1. Simple loss and its node occupancies.
    am = joiner.simple_am(enc)  # (B, T, V)
    lm = joiner.simple_lm(dec)  # (B, U1, V)
    V = am.shape[-1]
    simple, occupancy = _lattice_loss_and_occupancy(simple_lattice(am, lm, targets, blank), enc_lens, target_lens)

    # 2. Pruning windows.
    ranges = pruning_ranges(occupancy, enc_lens, target_lens, prune_range)  # (B, T)
    S = min(prune_range, U1)
    u_idx = ranges[:, :, None] + torch.arange(S, device=enc.device)  # (B, T, S), <= U
    # 3. Real joiner on the (B, T, S) window.
    enc_p = joiner.project_enc(enc)  # (B, T, Dj)
    dec_p = joiner.project_dec(dec)  # (B, U1, Dj)
    Dj = dec_p.shape[-1]
    dec_win = torch.gather(dec_p[:, None].expand(B, T, U1, Dj), 2, u_idx[..., None].expand(B, T, S, Dj))
    logits = joiner.join_projected(enc_p[:, :, None, :], dec_win)  # (B, T, S, V)
    lse = logits.logsumexp(dim=-1)  # (B, T, S)
    next_label = torch.nn.functional.pad(targets.clamp(0, V - 1), (0, 1), value=blank)  # (B, U1)
    y_win = torch.gather(next_label, 1, u_idx.reshape(B, T * S)).reshape(B, T, S)
    blank_lp = logits[..., blank] - lse
    emit_lp = logits.gather(3, y_win[..., None]).squeeze(-1) - lse
    u_len = target_lens.to(enc.device).long()[:, None, None]
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    blank_lp = torch.where(u_idx <= u_len, blank_lp, neg_inf)
    emit_lp = torch.where(u_idx < u_len, emit_lp, neg_inf)
    window = torch.stack([blank_lp, emit_lp], dim=-1)  # (B, T, S, 2)
    lattice = logits.new_full((B, T, U1, 2), float("-inf"))
    lattice = lattice.scatter(2, u_idx[..., None].expand(B, T, S, 2), window)
    pruned = lattice_loss(lattice, enc_lens, target_lens)
    total = simple_loss_scale * simple + pruned
    return PrunedLossOutput(total=total, simple=simple, pruned=pruned, ranges=ranges)


# ---------------------------------------------------------------------------------------
# Adapter.
# ---------------------------------------------------------------------------------------


def rnnt_loss(
    backend: str,
    joiner: TransducerJoiner,
    enc: Tensor,
    dec: Tensor,
    targets: Tensor,
    enc_lens: Tensor,
    target_lens: Tensor,
    blank: int = 0,
    *,
    prune_range: int = 5,
    simple_loss_scale: float = 0.5,
) -> Tensor:
    """Per-utterance RNN-T loss by backend name.

    Full-lattice backends (``"torchaudio"``, ``"reference"``, ``"warp_rnnt"``) get
    ``logits = joiner.join(enc, dec)`` of shape ``(B, T, U+1, V)``; the ``"pruned"``
    backend gets the joiner pieces and never builds that tensor.

    Args:
        backend: a name registered in ``RNNT_LOSSES``.
        joiner: object with the :class:`TransducerJoiner` methods (a ``TransducerHead``).
        enc: ``(B, T, De)`` encoder output.
        dec: ``(B, U+1, Dp)`` prediction network output (blank/SOS prepended).
        targets: ``(B, U)`` int, padded.
        enc_lens: ``(B,)`` frames per utterance.
        target_lens: ``(B,)`` labels per utterance.
        blank: blank index.
        prune_range: ``"pruned"`` only: window width ``S``.
        simple_loss_scale: ``"pruned"`` only: weight of the simple loss.

    Returns:
        ``(B,)`` per-utterance loss (no batch reduction).
    """
    fn = RNNT_LOSSES.get(backend)
    if getattr(fn, "takes_joiner", False):
        out = fn(
            joiner, enc, dec, targets, enc_lens, target_lens, blank=blank,
            prune_range=prune_range, simple_loss_scale=simple_loss_scale,
        )
        return out.total if isinstance(out, PrunedLossOutput) else out
    enc, targets = _trim(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    logits = joiner.join(enc, dec)
    return fn(logits, targets, enc_lens, target_lens, blank=blank)
