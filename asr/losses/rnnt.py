"""RNN-Transducer loss backends behind one adapter, chosen by name through ``RNNT_LOSSES``.

All losses here are per utterance: shape ``(B,)``, no reduction over the batch (active
learning needs per-utterance gradients; the trainer reduces).

Shape letters: ``B`` batch, ``T`` encoder frames, ``U`` target labels, ``V`` vocabulary
including blank, ``De``/``Dp`` encoder / prediction widths.

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

``"pruned"`` takes the joiner pieces (see :class:`asr.losses.pruned.TransducerJoiner`)
and never builds the ``(B,T,U+1,V)`` tensor: :mod:`asr.losses.pruned`. The lattice
engines both of its losses use are :mod:`asr.losses.lattice`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from asr.losses.lattice import (  # noqa: F401  (re-exported: the losses' one import place)
    AUTO_TORCHAUDIO_MAX_NODES,
    LATTICE_ENGINES,
    lattice_dp,
    lattice_from_logits,
    lattice_loss,
    lattice_loss_reference,
    trim_padding,
)
from asr.losses.pruned import (  # noqa: F401
    PrunedLossOutput,
    TransducerJoiner,
    pruned_rnnt_loss,
    pruning_ranges,
    simple_lattice,
)
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


def _backend(takes_joiner: bool) -> Callable[[Callable], Callable]:
    def mark(fn: Callable) -> Callable:
        fn.takes_joiner = takes_joiner
        return fn

    return mark


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

    logits, targets = trim_padding(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
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
    logits, targets = trim_padding(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
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
    logits, targets = trim_padding(logits, targets, logit_lengths, target_lengths, lattice_axis=True)
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


RNNT_LOSSES.register("pruned")(_backend(takes_joiner=True)(pruned_rnnt_loss))


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
    enc, targets = trim_padding(enc, targets, enc_lens, target_lens, lattice_axis=False)
    dec = dec[:, : targets.shape[1] + 1]
    logits = joiner.join(enc, dec)
    return fn(logits, targets, enc_lens, target_lens, blank=blank)
