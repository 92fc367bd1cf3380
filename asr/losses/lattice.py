"""The RNN-T lattice engines: a lattice tensor ``(B, T, U+1, 2)`` of per-node
``[log P(blank), log P(next target)]`` -> per-utterance loss and gradient.

Shape letters: ``B`` batch, ``T`` encoder frames, ``U`` target labels (so the lattice has
``U + 1`` label positions), ``V`` vocabulary including blank.

Lattice engine
--------------
Both the simple and the pruned loss reduce the problem to a *lattice* tensor
``(B, T, U+1, 2)`` holding, per node, ``[log P(blank), log P(next target)]``. These
engines compute its loss and gradient (``lattice_loss(..., engine=)``), all checked
against each other in ``tests/test_rnnt_loss.py``:

- ``"dp"``: :func:`lattice_dp`, our forward-backward over the anti-diagonals
  ``t + u = n``, vectorised over ``B`` and ``U``, returning loss and arc occupancies in
  one pass without an autograd graph. Any float dtype. About ``7 (T + U)`` small tensor
  ops, so its cost is mostly per-op overhead on small lattices.
- ``"torchaudio"``: torchaudio's C++ kernel via ``rnnt_loss(lattice, targets=all ones,
  blank=0, fused_log_softmax=False)``, which treats the last axis as a 2-symbol vocabulary
  of per-node log-probabilities. Correct (values and gradients); one call, but about
  1.5 us per lattice node on our 2-core CPU (2-3x slower than ``"dp"`` at B=32, T=500,
  U=80; faster below ~1e5 nodes).
- ``"auto"`` (default): ``"torchaudio"`` for float32 lattices under
  ``AUTO_TORCHAUDIO_MAX_NODES`` nodes, otherwise ``"dp"``.
- ``"reference"``: autograd through :func:`lattice_loss_reference` (float64 tests).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "lattice_from_logits",
    "lattice_loss",
    "lattice_loss_and_occupancy",
    "lattice_loss_reference",
    "lattice_dp",
    "LATTICE_ENGINES",
    "AUTO_TORCHAUDIO_MAX_NODES",
    "trim_padding",
]

# Finite stand-in for log(0) in the pure-PyTorch DP: logaddexp(-inf, -inf) has NaN
# gradients, a very negative finite number does not.
_LOG_ZERO = -1.0e30


def trim_padding(
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
    # stand-in avoids that (sums of a few hundred stay finite in float32), and a loss of
    # that size means no path: report inf, as the "dp" engine does.
    loss = ta_rnnt_loss(
        lattice.float().clamp(min=_LOG_ZERO).contiguous(),
        ones,
        logit_lengths.to(device=lattice.device, dtype=torch.int32),
        target_lengths.to(device=lattice.device, dtype=torch.int32),
        blank=0,
        reduction="none",
        fused_log_softmax=False,
    ).to(lattice.dtype)
    return torch.where(loss < -_LOG_ZERO / 2, loss, float("inf"))


@torch.no_grad()
def lattice_dp(lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Loss and gradient of an RNN-T lattice in one pass (vectorised forward-backward).

    Forward variables ``alpha`` and backward variables ``beta`` are computed along the
    ``T + U`` anti-diagonals ``t + u = n`` (each step is a few tensor ops over ``(B, U+1)``),
    then the gradient of ``-log P`` w.r.t. every arc log-probability is minus its occupancy,
    ``-exp(alpha + arc + beta_next - log P)``. No autograd graph is kept: memory is
    ``O(B (T+U) U)``. Works in the lattice dtype (float32 or float64).

    Args:
        lattice: ``(B, T, U+1, 2)`` per-node [log P(blank), log P(next target)]; ``-inf`` allowed.
        logit_lengths: ``(B,)`` frames per utterance (``<= T``).
        target_lengths: ``(B,)`` labels per utterance (``<= U``).

    Returns:
        loss ``(B,)`` (``inf`` where no path exists) and gradient ``(B, T, U+1, 2)`` (``<= 0``,
        zero for impossible utterances).
    """
    if lattice.dtype not in (torch.float32, torch.float64):  # half types: -1e30 would overflow
        loss, grad = lattice_dp(lattice.float(), logit_lengths, target_lengths)
        return loss, grad.to(lattice.dtype)
    B, T, U1, _ = lattice.shape
    device, dtype = lattice.device, lattice.dtype
    neg = _LOG_ZERO
    lat = lattice.clamp(min=neg)
    n_diag = T + U1 - 1
    n = torch.arange(n_diag, device=device)[:, None]
    u = torch.arange(U1, device=device)[None, :]
    t_of = n - u  # (N, U1)
    t_cl = t_of.clamp(0, T - 1)
    t_len = logit_lengths.to(device).long()[:, None, None]
    u_len = target_lengths.to(device).long()[:, None, None]
    # nodes (t, u) of each utterance: 0 <= t < T_b, u <= U_b   -> (B, N, U1)
    node_ok = (t_of >= 0)[None] & (t_of[None] < t_len) & (u[None] <= u_len)
    terminal = (n[None] == t_len - 1 + u_len) & (u[None] == u_len)  # (B, N, U1)
    u_full = u.expand(n_diag, U1)
    blank_s = torch.where(node_ok, lat[:, t_cl, u_full, 0], neg)  # skewed: [b, n, u] = lat[b, n-u, u]
    emit_s = torch.where(node_ok & (u[None] < u_len), lat[:, t_cl, u_full, 1], neg)

    # Arcs out of invalid nodes are log(0), so invalid nodes never feed valid ones and the
    # loops need no masking (values at invalid nodes are junk, masked in the gradient).
    # Three or four ops per diagonal, written in place.
    alpha = torch.full((B, n_diag, U1), neg, dtype=dtype, device=device)
    alpha[:, 0, 0] = 0.0
    for d in range(1, n_diag):
        prev, cur = alpha[:, d - 1], alpha[:, d]
        torch.add(prev, blank_s[:, d - 1], out=cur)  # (t-1, u) -> (t, u)
        torch.logaddexp(cur[:, 1:], prev[:, :-1] + emit_s[:, d - 1, :-1], out=cur[:, 1:])  # (t, u-1) -> (t, u)
    beta = torch.full((B, n_diag + 1, U1), neg, dtype=dtype, device=device)  # row N: beyond the end
    final_blank = torch.where(terminal, blank_s, neg)  # the last blank, out of (T_b - 1, U_b)
    for d in range(n_diag - 1, -1, -1):
        nxt, cur = beta[:, d + 1], beta[:, d]
        torch.add(blank_s[:, d], nxt, out=cur)  # (t, u) -> (t+1, u)
        torch.logaddexp(cur[:, :-1], emit_s[:, d, :-1] + nxt[:, 1:], out=cur[:, :-1])  # (t, u) -> (t, u+1)
        torch.logaddexp(cur, final_blank[:, d], out=cur)
    log_like = beta[:, 0, 0]
    feasible = log_like > neg / 2
    log_like_safe = torch.where(feasible, log_like, torch.zeros_like(log_like))[:, None, None]
    beta_next_blank = torch.where(terminal, torch.zeros_like(blank_s), beta[:, 1:])
    beta_next_emit = torch.nn.functional.pad(beta[:, 1:, 1:], (0, 1), value=neg)
    keep = node_ok & feasible[:, None, None]
    # float32: occupancies below exp(-50) ~ 2e-22 become exactly 0. Left in, they turn into
    # denormal numbers in the joiner's backward matmuls, which then run ~7x slower on x86.
    floor = -50.0 if dtype == torch.float32 else -math.inf
    t_idx = torch.arange(T, device=device)[:, None]
    diag_of = (t_idx + u).expand(T, U1)
    u_of = u.expand(T, U1)
    grad = torch.empty((B, T, U1, 2), dtype=dtype, device=device)
    for k, (arc, beta_next) in enumerate(((blank_s, beta_next_blank), (emit_s, beta_next_emit))):
        log_occ = alpha + arc  # in place from here on: one (B, N, U+1) buffer per arc type
        log_occ += beta_next
        log_occ -= log_like_safe
        drop = ~(keep & (log_occ > floor))
        occ = log_occ.clamp_(max=0.0).exp_().neg_().masked_fill_(drop, 0.0)
        grad[..., k] = occ[:, diag_of, u_of]  # unskew: grad[b, t, u] = g[b, t + u, u]
    loss = torch.where(feasible, -log_like, torch.full_like(log_like, float("inf")))
    return loss, grad


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


LATTICE_ENGINES = ("auto", "dp", "torchaudio", "reference")
AUTO_TORCHAUDIO_MAX_NODES = 1 << 17


def lattice_loss_and_occupancy(
    lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor, engine: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Lattice loss plus its gradient w.r.t. the lattice (minus the arc occupancies).

    One DP serves both: the loss keeps its autograd connection to ``lattice`` through
    :class:`_AttachGradient`. Works under ``torch.no_grad`` too (the occupancies are needed
    for pruning during validation).

    Returns:
        loss ``(B,)`` and occupancy gradient ``(B, T, U+1, 2)`` (detached, ``<= 0``).
    """
    if engine not in LATTICE_ENGINES:
        raise ValueError(f"unknown lattice engine {engine!r}; known: {LATTICE_ENGINES}")
    B, T, U1, _ = lattice.shape
    t_max = int(logit_lengths.max())
    u_max = int(target_lengths.max())
    cut = lattice.detach()[:, :t_max, : u_max + 1]
    if engine == "auto":
        small = cut.shape[0] * cut.shape[1] * cut.shape[2] <= AUTO_TORCHAUDIO_MAX_NODES
        engine = "torchaudio" if small and cut.dtype == torch.float32 else "dp"
    if engine == "dp":
        loss, grad = lattice_dp(cut, logit_lengths, target_lengths)
    else:
        detached = cut.requires_grad_(True)
        with torch.enable_grad():
            if engine == "torchaudio":
                loss = _torchaudio_lattice_loss(detached, logit_lengths, target_lengths)
            else:
                loss = lattice_loss_reference(detached, logit_lengths, target_lengths)
            (grad,) = torch.autograd.grad(loss.sum(), detached)
        loss = loss.detach()
    if grad.shape != lattice.shape:
        grad = torch.nn.functional.pad(grad, (0, 0, 0, U1 - grad.shape[2], 0, T - grad.shape[1]))
    if lattice.requires_grad and torch.is_grad_enabled():
        return _AttachGradient.apply(lattice, loss, grad), grad
    return loss, grad


def lattice_loss(lattice: Tensor, logit_lengths: Tensor, target_lengths: Tensor, engine: str = "auto") -> Tensor:
    """RNN-T negative log-likelihood of a lattice of per-node arc log-probabilities.

    Engines (all give the same values and gradients; tests check it): ``"auto"``,
    ``"dp"`` (:func:`lattice_dp`), ``"torchaudio"`` (its C++ kernel on the 2-symbol
    lattice, float32), ``"reference"`` (autograd through :func:`lattice_loss_reference`).
    See the module docstring.

    Args:
        lattice: ``(B, T, U+1, 2)`` per-node [log P(blank), log P(next target)].
        logit_lengths: ``(B,)`` frames per utterance.
        target_lengths: ``(B,)`` labels per utterance.
        engine: one of ``LATTICE_ENGINES``.

    Returns:
        ``(B,)`` per-utterance loss, differentiable w.r.t. ``lattice``.
    """
    return lattice_loss_and_occupancy(lattice, logit_lengths, target_lengths, engine)[0]
