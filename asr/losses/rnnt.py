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
    For a ``TransducerHead`` joiner the window joiner and its log-softmax run fused in
    chunks of frames (nothing of size ``(B,T,S,Dj)`` or ``(B,T,S,V)`` is stored; backward
    recomputes each chunk). ``docs/benchmarks.md`` compares it with torchaudio.

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
from typing import Callable, NamedTuple, Optional, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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
    "lattice_dp",
    "LATTICE_ENGINES",
    "pruning_ranges",
]

# Finite stand-in for log(0) in the pure-PyTorch DP: logaddexp(-inf, -inf) has NaN
# gradients, a very negative finite number does not.
_LOG_ZERO = -1.0e30


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


def _lattice_loss_and_occupancy(
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
    return _lattice_loss_and_occupancy(lattice, logit_lengths, target_lengths, engine)[0]


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
    enc, targets = _trim(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    targets = targets.long()
    B, T, _ = enc.shape
    U1 = targets.shape[1] + 1

    # 1. Simple loss and its node occupancies.
    am = joiner.simple_am(enc)  # (B, T, V)
    lm = joiner.simple_lm(dec)  # (B, U1, V)
    V = am.shape[-1]
    simple, occupancy = _lattice_loss_and_occupancy(
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
    lattice_engine: str = "auto",
    joiner_chunk_elements: Optional[int] = None,
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
        lattice_engine: ``"pruned"`` only: DP engine of its lattices (see :func:`lattice_loss`).
        joiner_chunk_elements: ``"pruned"`` only: the joiner's memory bound (see
            :func:`pruned_rnnt_loss`).

    Returns:
        ``(B,)`` per-utterance loss (no batch reduction); ``inf`` where a pruned lattice
        keeps no path (:meth:`TransducerHead.loss` zeroes those).
    """
    fn = RNNT_LOSSES.get(backend)
    if getattr(fn, "takes_joiner", False):
        out = fn(
            joiner, enc, dec, targets, enc_lens, target_lens, blank=blank,
            prune_range=prune_range, simple_loss_scale=simple_loss_scale,
            lattice_engine=lattice_engine, joiner_chunk_elements=joiner_chunk_elements,
        )
        return out.total if isinstance(out, PrunedLossOutput) else out
    enc, targets = _trim(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    logits = joiner.join(enc, dec)
    return fn(logits, targets, enc_lens, target_lens, blank=blank)
