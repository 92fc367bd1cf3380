"""Data-parallel training across processes and machines (torchrun).

torchrun starts one process per device and gives each its place in ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_world` joins them into a process group
(NCCL between GPUs, gloo between CPU processes). Each rank takes an equal, disjoint share
of every epoch's batches (:func:`shard`), and ``DistributedDataParallel`` sums their
gradients, so W processes step as one process would on W batches at a time.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import List, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and logs; the others only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (a one-process world
    when it does not); a group already set up by the caller is used as it is."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def shard(batches: Sequence[T], world: World) -> List[T]:
    """This rank's share of an epoch's batches: global batches r, r + W, r + 2W, ... of the
    first ``len // W * W``, so every rank gets the same count (the rest, fewer than W, are
    left out of the epoch; the next epoch's shuffle cuts and orders the batches anew)."""
    usable = len(batches) // world.size * world.size
    return list(batches[:usable][world.rank::world.size])


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of ``values`` over the ranks (the values themselves in a one-process world)."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(value: float, world: World, device: torch.device) -> float:
    """The largest ``value`` over the ranks."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def per_rank(value: float, world: World, device: torch.device) -> List[float]:
    """Every rank's ``value``, in rank order (on every rank)."""
    slots = torch.zeros(world.size, dtype=torch.float64, device=device)
    slots[world.rank] = value
    return all_reduce_sum(slots, world).tolist()


@contextlib.contextmanager
def process_group_of_the_run():
    """Around a command that may join a torchrun process group: when it returns, every rank
    waits for the others, then the group is torn down. A gloo rank that exits while a peer is
    still busy can abort at exit ("terminate called without an active exception"). No
    barrier on the error path, where it would wait for a dead peer."""
    try:
        yield
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_available() and dist.is_initialized():
            # a DDP module left in a reference cycle keeps the group's gloo threads alive
            # until the interpreter's own teardown, where they abort: free it first
            gc.collect()
            dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
