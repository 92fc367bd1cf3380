"""Training of the CRNN spotter: class-balanced draws, augmentation on the fly, optional
hard-negative mining, best checkpoint by validation balanced accuracy.

A checkpoint directory holds ``model.pt`` (weights + resolved config), ``config.yaml``
(the same config, human readable), ``history.json`` and ``training.png``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from asr.augment import SpecAugment
from asr.config import to_dict
from asr.device import resolve_device
from asr.distributed import World, all_reduce_max, all_reduce_sum, init_world, per_rank
from asr.features import FeatureExtractor
from kws.config import KWSConfig, kws_config_from_dict, save_kws_config
from kws.data import Clip, NoiseBank, WindowMaker, balanced_draws, write_atomically
from kws.hard_negatives import best_first, cut, mine, noisy_copy, scan_slice
from kws.model import CRNN, count_parameters

log = logging.getLogger(__name__)


class Spotter(nn.Module):
    """Front end + CRNN: forward(wave (B, N)) -> logits (B, C). Only the CRNN is exported;
    the edge runtime computes the same features in numpy."""

    def __init__(self, cfg: KWSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = FeatureExtractor(cfg.features)
        self.crnn = CRNN(cfg.model, cfg.features.n_mels, len(cfg.labels))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, N) -> feats (B, T, F).

        A window with its context (N = window_samples + 2 * context_samples, as
        :class:`kws.data.WindowMaker` makes them) is framed without padding: every frame
        reads the real samples around it, so the features equal the streaming features of
        the same audio in serving (tested). Any other length is a whole clip (centered
        frames, reflection at its ends)."""
        ctx = self.cfg.context_samples
        if ctx and wave.shape[-1] == self.cfg.window_samples + 2 * ctx:
            return self.frontend.from_mel(self.frontend.mel.from_padded(wave))
        feats, _ = self.frontend(wave)
        return feats

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.crnn(self.features(wave))


def save_checkpoint(spotter: Spotter, out_dir: str | Path, extra: Optional[dict] = None) -> Path:
    """``model.pt`` (written atomically) and ``config.yaml`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt"
    state = {"config": to_dict(spotter.cfg), "state_dict": spotter.state_dict(), "extra": extra or {}}
    write_atomically(path, lambda f: torch.save(state, f))
    save_kws_config(spotter.cfg, out_dir / "config.yaml")
    return path


def load_checkpoint(path: str | Path) -> Spotter:
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = kws_config_from_dict(ck["config"], where=str(path))
    spotter = Spotter(cfg)
    spotter.load_state_dict(ck["state_dict"])
    return spotter.eval()


@torch.no_grad()
def predict_windows(spotter: Spotter, waves: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """waves (B, N) -> posteriors (B, C) on the CPU, eval mode, on the spotter's device."""
    spotter.eval()
    device = next(spotter.parameters()).device
    outs = [torch.softmax(spotter(waves[i:i + batch].to(device)), dim=-1).cpu()
            for i in range(0, waves.shape[0], batch)]
    return torch.cat(outs) if outs else torch.zeros(0, len(spotter.cfg.labels))


class WeightAverage:
    """Exponential moving average of a module's parameters and buffers (BatchNorm
    statistics included), updated after every optimizer step."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))  # short warm-up
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load(self, state: dict) -> None:
        self.shadow, self.updates = state["shadow"], state["updates"]

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the module's weights and the averaged ones (call twice to restore)."""
        current = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        self.shadow = current


def balanced_accuracy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict:
    """probs (B, C), labels (B,) -> accuracy, balanced accuracy (mean recall over the
    classes present) and the per-class hits and counts behind it (for pooling)."""
    pred = probs.argmax(dim=-1)
    acc = float((pred == labels).float().mean()) if labels.numel() else 0.0
    correct = [int((pred[labels == k] == k).sum()) for k in range(num_classes)]
    count = [int((labels == k).sum()) for k in range(num_classes)]
    recalls = [c / n for c, n in zip(correct, count) if n]
    return {"accuracy": acc, "balanced_accuracy": sum(recalls) / max(1, len(recalls)),
            "class_correct": correct, "class_n": count}


def plot_history(history: List[dict], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train loss")
    ax[0].set_xlabel("epoch"); ax[0].set_ylabel("loss"); ax[0].legend(); ax[0].grid(alpha=0.3)
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="train (augmented)")
    if all(h.get("val_accuracy") is not None for h in history):
        ax[1].plot(ep, [h["val_accuracy"] for h in history], label="val")
        ax[1].plot(ep, [h["val_balanced_accuracy"] for h in history], label="val balanced")
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("accuracy"); ax[1].legend(); ax[1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



class TrainForward(nn.Module):
    """One training forward as a module DistributedDataParallel can wrap: waves (B, N) ->
    logits (B, C), with SpecAugment and mixup applied to the features on the way."""

    def __init__(self, spotter: Spotter, specaug: Optional[SpecAugment]) -> None:
        super().__init__()
        self.spotter = spotter
        self.specaug = specaug

    def forward(self, waves: torch.Tensor, mix_perm: Optional[torch.Tensor] = None,
                mix_lam: float = 1.0) -> torch.Tensor:
        if self.spotter.cfg.features.pcen_trainable:
            feats = self.spotter.features(waves)
        else:
            with torch.no_grad():
                feats = self.spotter.features(waves)
        if self.specaug is not None:
            feats = self.specaug(feats, torch.full((waves.shape[0],), feats.shape[1], device=waves.device))
        if mix_perm is not None:
            feats = mix_lam * feats + (1.0 - mix_lam) * feats[mix_perm]
        return self.spotter.crnn(feats)


# differences that do not stop a run from continuing where it stopped
_RESUMABLE_CHANGES = {"world_size", "max_minutes", "num_threads", "device"}


def _comparable(cfg_dict: dict) -> dict:
    return {**cfg_dict, "train": {k: v for k, v in cfg_dict["train"].items() if k not in _RESUMABLE_CHANGES}}


def save_resume_state(path: Path, state: dict) -> None:
    """``last.pt``: everything a run needs to continue after its last finished epoch."""
    write_atomically(path, lambda f: torch.save(state, f))


def load_resume_state(path: Path, cfg: KWSConfig) -> Optional[dict]:
    """The state in ``path`` if it continues this config's run (only the world size, time
    budget, threads and device may differ); None to start afresh."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated file: the run starts again rather than dying
        log.warning("%s: unreadable resume state (%s); training from the start", path, exc)
        return None
    if _comparable(state["config"]) != _comparable(to_dict(cfg)):
        log.warning("%s was written by another config; training from the start", path)
        return None
    return state


def train(cfg: KWSConfig, train_clips: Sequence[Clip], val_clips: Sequence[Clip], out_dir: str | Path,
          noise: NoiseBank, negative_streams: Sequence[torch.Tensor] = ()) -> dict:
    """Train and keep the best checkpoint (validation balanced accuracy) in ``out_dir``.

    Runs as one process or as one rank of ``torchrun`` (:mod:`asr.distributed`): every
    rank draws the same global batches and makes the windows of its share of each, the
    gradients are averaged, so W processes step as one process with the same
    ``train.batch_size``. Every random choice comes from a generator seeded by (seed, epoch,
    position in the epoch), never from a running one, so the examples do not depend on
    the world size and a run continues exactly from ``last.pt`` (written after every
    epoch) on any world size. Rank 0 validates and writes; the ranks mine hard negatives
    on disjoint parts of the negative audio.

    Args:
        train_clips / val_clips: clips with class indices into ``cfg.labels``.
        noise: noise for mixing at ``cfg.augment.snr_db``.
        negative_streams: long (N,) negative audio for hard-negative mining (wake words).
    Returns:
        summary dict (best epoch, val metrics, parameter count, minutes).
    """
    t0 = time.time()
    num_classes = len(cfg.labels)
    if not train_clips:
        raise ValueError("no training clips")
    seen = {c.label for c in train_clips}
    if len(seen) < num_classes:
        missing = [cfg.labels[k] for k in range(num_classes) if k not in seen]
        raise ValueError(f"no training clips for class(es) {missing}")
    unknown = sorted(set(cfg.train.class_weights) - set(cfg.labels))
    if unknown:
        raise ValueError(f"train.class_weights names unknown classes {unknown}; labels: {cfg.labels}")
    device = resolve_device(cfg.train.device)
    world = init_world(device)
    if cfg.train.stream_minutes > 0 and world.size > 1:
        raise ValueError("train.stream_minutes: the stream phase runs in one process (got a world "
                         f"of {world.size}); run it without torchrun")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, world_size=world.size))
    tc = cfg.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)

    class_weights = {cfg.labels.index(k): w for k, w in tc.class_weights.items()}
    spotter = Spotter(cfg).to(device)
    maker = WindowMaker(cfg.window_samples, cfg.augment, noise, cfg.features.sample_rate,
                        context=cfg.context_samples)
    specaug = SpecAugment(cfg.augment.specaugment) if cfg.augment.specaugment else None
    seeded = lambda *key: random.Random(":".join(str(k) for k in (tc.seed, *key)))  # noqa: E731

    # normalisation statistics from augmented training windows (the same on every rank)
    with torch.no_grad():
        rng = seeded("norm")
        idx = balanced_draws(train_clips, 512, num_classes, rng, tc.class_balance, tc.synthetic_weight,
                             class_weights)
        feats = spotter.features(torch.stack([maker(train_clips[i], rng) for i in idx]).to(device))
        if cfg.model.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        spotter.crnn.set_normalization(feats.mean(dim=(0, 1)), feats.std(dim=(0, 1)))

    val_waves = (torch.stack([maker(c, seeded("val"), augment=False) for c in val_clips])
                 if val_clips and world.is_main else None)
    val_labels = torch.tensor([c.label for c in val_clips])

    params = [p for p in spotter.parameters() if p.requires_grad]
    ema = WeightAverage(spotter.crnn, tc.ema_decay) if tc.ema_decay > 0 else None
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(tc.examples_per_epoch / tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    background = cfg.labels.index("_background_") if "_background_" in cfg.labels else None
    if background is not None and tc.hard_negative_every and negative_streams and tc.hard_negative_snr_db:
        rng = seeded("noisy")
        negative_streams = list(negative_streams) + [
            noisy_copy(st, noise, tc.hard_negative_snr_db, cfg.features.sample_rate * 10, rng)
            for st in negative_streams]
    n_window = cfg.window_samples + 2 * cfg.context_samples

    last_path = out_dir / "last.pt"
    state = load_resume_state(last_path, cfg) or {
        "epoch": 0, "done_steps": 0, "minutes": 0.0, "hard_pool": [], "history": [],
        "best": {"score": -1.0}, "stopped_early": False}
    if "model" not in state:  # a fresh run: an earlier run's stream phase is not this one's
        for stale in ("window_model.pt", "stream_last.pt"):
            (out_dir / stale).unlink(missing_ok=True)
    if "model" in state:
        spotter.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load(state["ema"])
        log.info("continuing %s after epoch %d", out_dir, state["epoch"])
    hard_pool = [tuple(k) for k in state["hard_pool"]]  # (stream, start) references
    history, best, done_steps = state["history"], state["best"], state["done_steps"]
    stopped_early = state["stopped_early"]
    prior_s = state["minutes"] * 60.0

    if world.rank:  # dropout and SpecAugment masks differ between ranks
        torch.manual_seed(tc.seed + 1000003 * world.rank)
    if world.distributed and device.type == "cuda":
        spotter = nn.SyncBatchNorm.convert_sync_batchnorm(spotter)  # one batch, one statistic
    step_module: nn.Module = TrainForward(spotter, specaug)
    if world.distributed:  # wraps after the restore: it broadcasts rank 0's weights
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index or 0] if device.type == "cuda" else None)

    def elapsed_s() -> float:
        s = prior_s + time.time() - t0
        # every rank must see the same clock, or they disagree on the schedule and the stop
        return all_reduce_max(s, world, device) if tc.max_minutes else s

    def progress(elapsed: float) -> float:
        """Fraction of training done: by steps, or by time when train.max_minutes is set and
        the machine is slower than planned, so the schedule still ends annealed."""
        p = done_steps / total_steps
        if tc.max_minutes:
            p = max(p, elapsed / 60.0 / tc.max_minutes)
        return min(p, 1.0)

    def set_lr(p: float) -> float:
        lr = tc.lr * (p / 0.1 if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9)))
        lr = max(lr, tc.lr * 0.01)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    if state["epoch"] == 0:
        log.info("CRNN with %d parameters, %d training clips, %d process(es)",
                 count_parameters(spotter.crnn), len(train_clips), world.size)
    lr = opt.param_groups[0]["lr"]
    finished = stopped_early or state["epoch"] >= tc.epochs
    for epoch in range(state["epoch"] + 1, tc.epochs + 1):
        if finished:
            break
        step_module.train()
        draws = balanced_draws(train_clips, tc.examples_per_epoch, num_classes, seeded(epoch),
                               tc.class_balance, tc.synthetic_weight, class_weights)
        # loss sum, correct, examples of this rank
        totals = torch.zeros(3, dtype=torch.float64)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{tc.epochs}", leave=False, mininterval=2.0,
                   disable=not world.is_main)
        for step in bar:
            first = step * tc.batch_size
            batch_idx = draws[first:first + tc.batch_size]
            p = progress(elapsed_s())
            if not batch_idx or (tc.max_minutes and step and p >= 1.0):
                break  # out of time: a slow machine stops mid-epoch rather than overrunning
            mine_pos = list(range(first + world.rank, first + len(batch_idx), world.size))
            weight = [1.0] * len(mine_pos)
            if not mine_pos:  # a short last batch leaves this rank out: it still joins the step
                mine_pos, weight = [first], [0.0]
            waves, labels = [], []
            for pos in mine_pos:
                c, ex_rng = train_clips[draws[pos]], seeded(epoch, pos)
                if (background is not None and c.label == background and hard_pool
                        and ex_rng.random() < tc.hard_negative_weight):
                    c = Clip(cut(negative_streams, ex_rng.choice(hard_pool), n_window), background, "hard")
                waves.append(maker(c, ex_rng))
                labels.append(c.label)
            x = torch.stack(waves).to(device)  # windows are made on the CPU
            y = torch.tensor(labels, device=device)
            w = torch.tensor(weight, device=device)
            smoothing = tc.label_smoothing
            if tc.mixup_alpha > 0:
                step_rng = seeded(epoch, "mix", step)
                lam = step_rng.betavariate(tc.mixup_alpha, tc.mixup_alpha)
                lam = max(lam, 1.0 - lam)  # the first window dominates (its label counts for accuracy)
                perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(
                    step_rng.randrange(2**31))).to(device)
                logits = step_module(x, perm, lam)
                ce = (lam * F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
                      + (1.0 - lam) * F.cross_entropy(logits, y[perm], label_smoothing=smoothing,
                                                      reduction="none"))
            else:
                logits = step_module(x)
                ce = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
            # DDP averages the ranks' gradients: scaled by W / global batch, that average is
            # the gradient of the mean over the whole global batch
            loss = (ce * w).sum() * (world.size / len(batch_idx))
            lr = set_lr(p)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(spotter.crnn)
            done_steps += 1
            ce = ce.detach()
            totals += torch.tensor([float((ce * w).sum()), float(((logits.argmax(-1) == y).float() * w).sum()),
                                    float(w.sum())], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / max(1.0, float(totals[2])):.3f}")
        examples_per_rank = [int(n) for n in per_rank(float(totals[2]), world, device)]
        loss_sum, correct, n = all_reduce_sum(totals.to(device), world).tolist()
        row = {"epoch": epoch, "train_loss": loss_sum / max(1.0, n), "train_accuracy": correct / max(1.0, n),
               "lr": lr, "examples_per_rank": examples_per_rank}
        if ema is not None:  # validate, mine and save with the averaged weights
            ema.swap(spotter.crnn)
        if val_waves is not None and len(val_clips):
            probs = predict_windows(spotter, val_waves)
            m = balanced_accuracy(probs, val_labels, num_classes)
            row.update({"val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"],
                        # per-class hits, kept for pooling over cross-validation folds
                        "val_class_correct": m["class_correct"], "val_class_n": m["class_n"]})
        else:  # no validation set (final models): keep the last epoch (see below)
            row.update({"val_accuracy": None, "val_balanced_accuracy": None})
        if (background is not None and tc.hard_negative_every and negative_streams
                and progress(elapsed_s()) < 1.0 and epoch >= tc.hard_negative_start
                and (epoch - tc.hard_negative_start) % tc.hard_negative_every == 0):
            pieces = scan_slice(negative_streams, tc.hard_negative_scan_s, cfg.features.sample_rate,
                                seeded(epoch, "scan"))
            found = mine(spotter, pieces[world.rank::world.size], background, tc.hard_negative_threshold,
                         tc.hard_negative_max, hop=cfg.features.sample_rate // 10)
            found = best_first(_gather(found, world), tc.hard_negative_max)
            hard_pool = ([key for _, key in found] + hard_pool)[:tc.hard_negative_max]
            row["hard_negatives_mined"] = len(found)
            row["hard_pool"] = len(hard_pool)
        row["minutes"] = (prior_s + time.time() - t0) / 60
        history.append(row)
        if world.is_main:
            brief = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                     if not isinstance(v, list) or k == "examples_per_rank"}
            log.info("epoch %d %s", epoch, json.dumps(brief))
            print(json.dumps(brief), flush=True)
            # without validation the last epoch is kept: the schedule ends annealed (and averaged
            # with EMA), and the augmented (mixup) training accuracy says little about new speakers
            score = (row["val_balanced_accuracy"] if row["val_balanced_accuracy"] is not None
                     else float(epoch))
            if score >= best["score"]:
                best = dict(row, score=score)
                save_checkpoint(spotter, out_dir, extra={"epoch": epoch, "val": row})
        if ema is not None:
            ema.swap(spotter.crnn)
        finished = progress(elapsed_s()) >= 1.0 and epoch < tc.epochs
        if finished:
            log.warning("stopping after %.1f minutes at epoch %d (train.max_minutes)",
                        (prior_s + time.time() - t0) / 60, epoch)
            stopped_early = True
        if world.is_main:
            # read by cross-validation and by whoever watches a run: never half written
            write_atomically(out_dir / "history.json", lambda f: f.write(json.dumps(history, indent=1).encode()))
            save_resume_state(last_path, {
                "epoch": epoch, "done_steps": done_steps, "minutes": (prior_s + time.time() - t0) / 60,
                "model": spotter.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema.state() if ema is not None else None, "hard_pool": hard_pool,
                "history": history, "best": best, "stopped_early": stopped_early, "config": to_dict(cfg)})
    summary = {"best_epoch": best.get("epoch"), "val_accuracy": best.get("val_accuracy"),
               "val_balanced_accuracy": best.get("val_balanced_accuracy"),
               "params": count_parameters(spotter.crnn), "minutes": (prior_s + time.time() - t0) / 60,
               "epochs_run": len(history), "stopped_early": stopped_early,
               "train_clips": len(train_clips), "val_clips": len(val_clips), "world_size": world.size}
    if tc.stream_minutes > 0:
        summary["stream_phase"] = _stream_phase(cfg, out_dir, train_clips, noise, device)
        summary["minutes"] = (prior_s + time.time() - t0) / 60
    if world.is_main:
        plot_history(history, out_dir / "training.png", title=cfg.name)
        write_atomically(out_dir / "train_summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary


def _stream_phase(cfg: KWSConfig, out_dir: Path, train_clips: Sequence[Clip], noise: NoiseBank,
                  device: torch.device) -> dict:
    """:func:`kws.stream_train.train_on_streams` from the window phase's kept checkpoint,
    which stays beside as ``window_model.pt``; ``model.pt`` becomes the streamed model."""
    from kws.stream_train import train_on_streams

    window_path = out_dir / "window_model.pt"
    if not window_path.is_file():  # first time here: model.pt is the window phase's
        (out_dir / "model.pt").replace(window_path)
    spotter = load_checkpoint(window_path).to(device)
    result = train_on_streams(spotter, cfg, train_clips, noise, out_dir, device)
    save_checkpoint(spotter.cpu(), out_dir, extra={"stream_phase": {k: v for k, v in result.items()
                                                                     if k != "history"},
                                                   "window_model": window_path.name})
    return result


def _gather(found: list, world: World) -> list:
    """Every rank's mined windows, on every rank."""
    if not world.distributed:
        return found
    import torch.distributed as dist

    parts: List[list] = [None] * world.size  # type: ignore[list-item]
    dist.all_gather_object(parts, found)
    return [m for part in parts for m in part]
