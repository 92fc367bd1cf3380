"""Checkpoints: written atomically, self-describing (resolved config and tokenizer inside,
config.yaml beside), and refused with a clear message when truncated or foreign."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from asr.config import ExperimentConfig, from_dict, save_config, to_dict
from asr.text import Tokenizer

FORMAT = "speechkit-asr/1"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, cfg: ExperimentConfig, tokenizer: Tokenizer,
                    model: torch.nn.Module, **extra: Any) -> Path:
    """Write ``path`` atomically (temp file, fsync, rename) and ``config.yaml`` beside it."""
    path = Path(path)
    state = {"format": FORMAT, "config": to_dict(cfg), "tokenizer": tokenizer.to_dict(),
             "model": model.state_dict(), **extra}
    write_state(path, state)
    save_config(cfg, path.parent / "config.yaml")
    return path


def write_state(path: str | Path, state: Dict[str, Any]) -> Path:
    """``torch.save`` to ``path`` atomically: a temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    return read_state(path, FORMAT, "checkpoint", "speechkit ASR checkpoint")


def read_state(path: str | Path, fmt: str, what: str, kind: str) -> Dict[str, Any]:
    """The dict ``write_state`` wrote to ``path``, whose ``format`` must be ``fmt``; a
    missing, truncated or foreign file is refused naming ``path`` (``what`` it is, e.g.
    "checkpoint", of ``kind``, e.g. "speechkit ASR checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"{path}: cannot read {what}, it may be truncated or "
                              f"corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointError(f"{path}: not a {kind} (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r})")
    return state


def load_model(path: str | Path) -> Tuple[torch.nn.Module, Tokenizer, ExperimentConfig]:
    """Rebuild the model in eval mode from a checkpoint, with its tokenizer and config."""
    from asr.model import ASRModel

    state = read_checkpoint(path)
    cfg = from_dict(ExperimentConfig, state["config"], where=f"{path}:config")
    tokenizer = Tokenizer.from_dict(state["tokenizer"])
    model = ASRModel(cfg, tokenizer.vocab_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its config ({exc})") from None
    return model.eval(), tokenizer, cfg
