"""Checkpoint averaging: the mean of the weights of a run's last checkpoints.

Averaging the last few epochs' weights smooths the end of training and usually decodes a
little better than the last checkpoint alone (icefall's ``--avg``, ESPnet's
``average_checkpoints``). Floating-point tensors are averaged; integer buffers (counters)
are taken from the newest checkpoint, whose config and tokenizer the average keeps.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from asr.checkpoint import FORMAT, CheckpointError, read_checkpoint, write_state

# config sections that do not change what the weights mean: they may differ between the
# checkpoints of one run (more epochs on a resume, another world size, decoding defaults)
RUN_SECTIONS = ("name", "data", "train", "decoding", "streaming")
EPOCH_CHECKPOINT = re.compile(r"epoch-(\d+)\.pt$")


def epoch_checkpoints(exp_dir: str | Path) -> List[Path]:
    """The trainer's per-epoch checkpoints (``epoch-N.pt``) in ``exp_dir``, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt")
             if (m := EPOCH_CHECKPOINT.search(p.name))]
    return [p for _, p in sorted(found)]


def last_checkpoints(exp_dir: str | Path, n: int) -> List[Path]:
    """The newest ``n`` epoch checkpoints of ``exp_dir``; an error if it has fewer."""
    found = epoch_checkpoints(exp_dir)
    if n < 1 or len(found) < n:
        raise CheckpointError(f"{exp_dir}: asked for the last {n} epoch checkpoints, found "
                              f"{len(found)} ({', '.join(p.name for p in found) or 'none'}); "
                              "train.keep_checkpoints sets how many a run keeps")
    return found[-n:]


def _model_config(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUN_SECTIONS}


def average_checkpoints(paths: Sequence[str | Path]) -> Dict[str, Any]:
    """The averaged checkpoint state of ``paths`` (a model-only checkpoint).

    The newest is the one with the most training steps (the last given on a tie). Every
    checkpoint must hold the same model (config outside the run sections, tokenizer,
    tensor names and shapes); the first that does not is named in the error.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    paths = [Path(p) for p in paths]
    states = [read_checkpoint(p) for p in paths]
    newest = max(range(len(states)), key=lambda i: (states[i].get("step", 0), i))
    ref, ref_path = states[newest], paths[newest]
    for path, state in zip(paths, states):
        theirs, ours = _model_config(state["config"]), _model_config(ref["config"])
        if theirs != ours:
            fields = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise CheckpointError(f"{path}: its model config differs from {ref_path}'s in "
                                  f"{fields}; only checkpoints of one model can be averaged")
        if state.get("tokenizer") != ref.get("tokenizer"):
            raise CheckpointError(f"{path}: its tokenizer differs from {ref_path}'s")
        shapes = {k: tuple(v.shape) for k, v in state["model"].items()}
        if shapes != {k: tuple(v.shape) for k, v in ref["model"].items()}:
            raise CheckpointError(f"{path}: its tensors' names or shapes differ from "
                                  f"{ref_path}'s")
    model = {}
    for name, tensor in ref["model"].items():
        if tensor.is_floating_point():
            total = sum(s["model"][name].double() for s in states)  # float64: no drift
            model[name] = (total / len(states)).to(tensor.dtype)
        else:
            model[name] = tensor.clone()
    return {"format": FORMAT, "config": ref["config"], "tokenizer": ref.get("tokenizer"),
            "model": model, "step": ref.get("step"), "epoch": ref.get("epoch"),
            "averaged_from": [str(p) for p in paths]}


def average_to(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Average ``paths`` and write the result to ``out`` atomically."""
    return write_state(out, average_checkpoints(paths))
