"""Where training and decoding run: the device by name and the mixed-precision mode.

``device``: ``auto`` (this process's GPU when CUDA is present, else the CPU), ``cpu`` or
``cuda``. ``precision``: ``fp32``; ``bf16`` (autocast to bfloat16: the exponent range of
fp32, so no loss scaling; fast on recent GPUs and on CPUs with AMX/AVX512-BF16); ``fp16``
(autocast to float16 with a :class:`torch.amp.GradScaler`, whose loss scaling keeps small
gradients from flushing to zero).
"""
from __future__ import annotations

import contextlib
import os

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 when not launched so)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here; a process of a multi-GPU run takes the GPU of its
    local rank. Asking for ``cuda`` without one is an error, not a silent CPU run."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch.cuda.is_available() is "
                           "False (no GPU, or a CPU-only PyTorch build)")
    return torch.device("cuda", local_rank() % torch.cuda.device_count())


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; disabled (a pass-through) for the other precisions."""
    return torch.amp.GradScaler(device.type, enabled=check_precision(precision) == "fp16")
