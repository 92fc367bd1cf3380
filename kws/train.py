"""Training of the CRNN spotter: class-balanced draws, augmentation on the fly, optional
hard-negative mining, best checkpoint by validation balanced accuracy.

A checkpoint directory holds ``model.pt`` (weights + resolved config), ``config.yaml``
(the same config, human readable), ``history.json`` and ``training.png``.
"""
from __future__ import annotations

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
from asr.features import FeatureExtractor
from kws.config import KWSConfig, kws_config_from_dict, save_kws_config
from kws.data import Clip, NoiseBank, WindowMaker, balanced_draws, write_atomically
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


@torch.no_grad()
def mine_hard_negatives(spotter: Spotter, streams: Sequence[torch.Tensor], background: int,
                        threshold: float, limit: int, hop: int, rng: random.Random) -> List[torch.Tensor]:
    """Windows of negative audio (N,) that the model scores as a keyword (posterior of
    the best non-background class above ``threshold``), highest first."""
    n = spotter.cfg.window_samples + 2 * spotter.cfg.context_samples  # windows with their context
    found = []
    for s in streams:
        if s.numel() < n:
            continue
        starts = torch.arange(0, s.numel() - n + 1, hop)
        for i in range(0, len(starts), 512):
            idx = starts[i:i + 512]
            windows = torch.stack([s[j:j + n] for j in idx.tolist()])
            p = predict_windows(spotter, windows)
            p[:, background] = 0
            best = p.max(dim=-1).values
            for j in torch.nonzero(best >= threshold).flatten().tolist():
                found.append((float(best[j]), windows[j].clone()))
    found.sort(key=lambda x: -x[0])
    return [w for _, w in found[:limit]]


def scan_slice(streams: Sequence[torch.Tensor], seconds: float, sample_rate: int, rng: random.Random,
               piece_s: float = 60.0) -> List[torch.Tensor]:
    """A random part of the negative audio: pieces (M,) of ``piece_s`` seconds cut from the
    streams (N_i,), shuffled, about ``seconds`` in all (everything when ``seconds`` <= 0)."""
    if seconds <= 0:
        return list(streams)
    piece = int(piece_s * sample_rate)
    pieces = [s[i:i + piece] for s in streams for i in range(0, s.numel(), piece)]
    rng.shuffle(pieces)
    out, total = [], 0
    for p in pieces:
        if total >= seconds * sample_rate:
            break
        out.append(p)
        total += p.numel()
    return out


def noisy_copy(stream: torch.Tensor, noise: NoiseBank, snrs: Sequence[float], chunk: int,
               rng: random.Random) -> torch.Tensor:
    """``stream`` (N,) with noise mixed in, each ``chunk`` samples at an SNR drawn from ``snrs``."""
    from asr.augment import add_noise

    parts = []
    for i in range(0, stream.numel(), chunk):
        part = stream[i:i + chunk]
        if part.abs().max() < 1e-4:
            parts.append(part)
            continue
        parts.append(add_noise(part, noise.sample(part.numel(), rng), rng.choice(list(snrs))).clamp(-1.0, 1.0))
    return torch.cat(parts) if parts else stream


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


def train(cfg: KWSConfig, train_clips: Sequence[Clip], val_clips: Sequence[Clip], out_dir: str | Path,
          noise: NoiseBank, negative_streams: Sequence[torch.Tensor] = ()) -> dict:
    """Train and keep the best checkpoint (validation balanced accuracy) in ``out_dir``.

    Args:
        train_clips / val_clips: clips with class indices into ``cfg.labels``.
        noise: noise for mixing at ``cfg.augment.snr_db``.
        negative_streams: long (N,) negative audio for hard-negative mining (wake words).
    Returns:
        summary dict (best epoch, val metrics, parameter count, minutes).
    """
    t0 = time.time()
    tc = cfg.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = random.Random(tc.seed)
    num_classes = len(cfg.labels)
    if not train_clips:
        raise ValueError("no training clips")
    seen = {c.label for c in train_clips}
    if len(seen) < num_classes:
        missing = [cfg.labels[k] for k in range(num_classes) if k not in seen]
        raise ValueError(f"no training clips for class(es) {missing}")

    unknown = sorted(set(tc.class_weights) - set(cfg.labels))
    if unknown:
        raise ValueError(f"train.class_weights names unknown classes {unknown}; labels: {cfg.labels}")
    class_weights = {cfg.labels.index(k): w for k, w in tc.class_weights.items()}
    device = resolve_device(tc.device)
    spotter = Spotter(cfg).to(device)
    maker = WindowMaker(cfg.window_samples, cfg.augment, noise, cfg.features.sample_rate,
                        context=cfg.context_samples)
    specaug = SpecAugment(cfg.augment.specaugment) if cfg.augment.specaugment else None

    # normalisation statistics from augmented training windows
    with torch.no_grad():
        idx = balanced_draws(train_clips, 512, num_classes, rng, tc.class_balance, tc.synthetic_weight,
                             class_weights)
        feats = spotter.features(torch.stack([maker(train_clips[i], rng) for i in idx]).to(device))
        if cfg.model.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        spotter.crnn.set_normalization(feats.mean(dim=(0, 1)), feats.std(dim=(0, 1)))

    val_waves = torch.stack([maker(c, rng, augment=False) for c in val_clips]) if val_clips else None
    val_labels = torch.tensor([c.label for c in val_clips])

    params = [p for p in spotter.parameters() if p.requires_grad]
    ema = WeightAverage(spotter.crnn, tc.ema_decay) if tc.ema_decay > 0 else None
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    lr = tc.lr
    steps_per_epoch = math.ceil(tc.examples_per_epoch / tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    done_steps = 0

    def progress() -> float:
        """Fraction of training done: by steps, or by time when train.max_minutes is set and
        the machine is slower than planned, so the schedule still ends annealed."""
        p = done_steps / total_steps
        if tc.max_minutes:
            p = max(p, (time.time() - t0) / 60.0 / tc.max_minutes)
        return min(p, 1.0)

    def set_lr() -> float:
        p = progress()
        lr = tc.lr * (p / 0.1 if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9)))
        lr = max(lr, tc.lr * 0.01)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr
    background = cfg.labels.index("_background_") if "_background_" in cfg.labels else None
    if background is not None and tc.hard_negative_every and negative_streams and tc.hard_negative_snr_db:
        negative_streams = list(negative_streams) + [
            noisy_copy(st, noise, tc.hard_negative_snr_db, cfg.features.sample_rate * 10, rng)
            for st in negative_streams]
    hard_pool: List[torch.Tensor] = []
    history: List[dict] = []
    best = {"score": -1.0}
    log.info("CRNN with %d parameters, %d training clips", count_parameters(spotter.crnn), len(train_clips))
    stopped_early = False
    for epoch in range(1, tc.epochs + 1):
        spotter.train()
        draws = balanced_draws(train_clips, tc.examples_per_epoch, num_classes, rng,
                               tc.class_balance, tc.synthetic_weight, class_weights)
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{tc.epochs}", leave=False, mininterval=2.0)
        for step in bar:
            batch_idx = draws[step * tc.batch_size:(step + 1) * tc.batch_size]
            if not batch_idx or (tc.max_minutes and step and progress() >= 1.0):
                break  # out of time: a slow machine stops mid-epoch rather than overrunning
            waves, labels = [], []
            for i in batch_idx:
                c = train_clips[i]
                if (background is not None and c.label == background and hard_pool
                        and rng.random() < tc.hard_negative_weight):
                    hard = Clip(rng.choice(hard_pool), background, "hard")
                    waves.append(maker(hard, rng))
                else:
                    waves.append(maker(c, rng))
                labels.append(c.label)
            x = torch.stack(waves).to(device)  # windows are made on the CPU
            y = torch.tensor(labels, device=device)
            if cfg.features.pcen_trainable:
                feats = spotter.features(x)
            else:
                with torch.no_grad():
                    feats = spotter.features(x)
            if specaug is not None:
                specaug.train()
                feats = specaug(feats, torch.full((x.shape[0],), feats.shape[1], device=device))
            if tc.mixup_alpha > 0:
                lam = float(torch.distributions.Beta(tc.mixup_alpha, tc.mixup_alpha).sample())
                lam = max(lam, 1.0 - lam)  # the first window dominates (its label counts for accuracy)
                perm = torch.randperm(x.shape[0], device=device)
                logits = spotter.crnn(lam * feats + (1.0 - lam) * feats[perm])
                loss = (lam * F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
                        + (1.0 - lam) * F.cross_entropy(logits, y[perm], label_smoothing=tc.label_smoothing))
            else:
                logits = spotter.crnn(feats)
                loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
            lr = set_lr()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(spotter.crnn)
            done_steps += 1
            tot_loss += loss.item() * len(labels)
            tot_correct += int((logits.argmax(-1) == y).sum())
            tot_n += len(labels)
            bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}")
        row = {"epoch": epoch, "train_loss": tot_loss / max(1, tot_n),
               "train_accuracy": tot_correct / max(1, tot_n), "lr": lr}
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
        if (background is not None and tc.hard_negative_every and negative_streams and progress() < 1.0
                and epoch >= tc.hard_negative_start
                and (epoch - tc.hard_negative_start) % tc.hard_negative_every == 0):
            scanned = scan_slice(negative_streams, tc.hard_negative_scan_s, cfg.features.sample_rate, rng)
            mined = mine_hard_negatives(spotter, scanned, background, tc.hard_negative_threshold,
                                        tc.hard_negative_max, hop=cfg.features.sample_rate // 10, rng=rng)
            hard_pool = (mined + hard_pool)[:tc.hard_negative_max]
            row["hard_negatives_mined"] = len(mined)
            row["hard_pool"] = len(hard_pool)
        row["minutes"] = (time.time() - t0) / 60
        history.append(row)
        log.info("epoch %d %s", epoch, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in row.items() if not isinstance(v, list)}))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                          if not isinstance(v, list)}), flush=True)
        # without validation the last epoch is kept: the schedule ends annealed (and averaged
        # with EMA), and the augmented (mixup) training accuracy says little about new speakers
        score = (row["val_balanced_accuracy"] if row["val_balanced_accuracy"] is not None
                 else float(epoch))
        if score >= best["score"]:
            best = dict(row, score=score)
            save_checkpoint(spotter, out_dir, extra={"epoch": epoch, "val": row})
        if ema is not None:
            ema.swap(spotter.crnn)
        # read by cross-validation and by whoever watches a run: never half written
        write_atomically(out_dir / "history.json", lambda f: f.write(json.dumps(history, indent=1).encode()))
        if progress() >= 1.0 and epoch < tc.epochs:
            log.warning("stopping after %.1f minutes at epoch %d (train.max_minutes)", (time.time() - t0) / 60, epoch)
            stopped_early = True
            break
    plot_history(history, out_dir / "training.png", title=cfg.name)
    summary = {"best_epoch": best.get("epoch"), "val_accuracy": best.get("val_accuracy"),
               "val_balanced_accuracy": best.get("val_balanced_accuracy"),
               "params": count_parameters(spotter.crnn), "minutes": (time.time() - t0) / 60,
               "epochs_run": len(history), "stopped_early": stopped_early,
               "train_clips": len(train_clips), "val_clips": len(val_clips)}
    write_atomically(out_dir / "train_summary.json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary
