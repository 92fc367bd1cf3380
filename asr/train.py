"""Training: per-utterance losses reduced here, gradient clipping, LR schedule, duration
batching, progress bars, a metrics log and plotted curves, atomic resumable checkpoints;
on a chosen device and precision, and data parallel under torchrun (docs/distributed.md)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.audio_files import list_audio
from asr.augment import NoiseBank, add_noise, band_limit, colored_noise, set_margins, speed_perturb
from asr.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from asr.config import DataConfig, ExperimentConfig, save_config
from asr.data import (DurationBatchSampler, UtteranceDataset, check_rejected_share, collate, read_manifest,
                      validate)
from asr.device import autocast, check_precision, grad_scaler, resolve_device
from asr.distributed import (all_reduce_max, all_reduce_sum, barrier, init_world, per_rank,
                             shard)
from asr.model import ASRModel
from asr.reverb import reverberate, synthetic_rir
from asr.shards import ShardDataset, ShardPlan, iter_metadata
from asr.text import CharTokenizer, Tokenizer, build_tokenizer, normalize_text

log = logging.getLogger(__name__)


class Augmenter:
    """Waveform augmentation, seeded per (epoch, utterance) so reruns are reproducible."""

    def __init__(self, cfg: DataConfig, sample_rate: int, seed: int) -> None:
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.seed = seed
        self.epoch = 0
        if cfg.margin_prob > 0 and (len(cfg.margin_s) != 2 or not 0 <= cfg.margin_s[0] <= cfg.margin_s[1]):
            raise ValueError(f"data.margin_s must be [low, high] seconds with 0 <= low <= high, "
                             f"got {cfg.margin_s}")
        for name in ("rt60_s", "drr_db"):
            pair = getattr(cfg, name)
            if cfg.reverb_prob > 0 and (len(pair) != 2 or pair[0] > pair[1] or (name == "rt60_s" and pair[0] <= 0)):
                raise ValueError(f"data.{name} must be [low, high] with low <= high"
                                 f"{' and low > 0' if name == 'rt60_s' else ''}, got {pair}")
        self.noise = NoiseBank(colored_prob=cfg.colored_noise_prob)
        if cfg.noise_dirs:
            files = noise_files(cfg.noise_dirs)
            self.noise = NoiseBank.from_files(files, sample_rate, cfg.colored_noise_prob)
            if not self.noise.waves:
                raise ValueError(f"data.noise_dirs: none of the {len(files)} audio files in "
                                 f"{cfg.noise_dirs} could be read")
            log.info("noise: %d recordings, %.1f minutes, from %s", len(self.noise.waves),
                     sum(w.numel() for w in self.noise.waves) / sample_rate / 60, cfg.noise_dirs)

    def __call__(self, wave: torch.Tensor, index: int) -> torch.Tensor:
        c = self.cfg
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        if c.margin_prob > 0 and float(torch.rand(1, generator=g)) < c.margin_prob:
            lo, hi = c.margin_s
            lead, trail = (lo + (hi - lo) * torch.rand(2, generator=g)).tolist()
            wave = set_margins(wave, self.sample_rate, lead, trail, c.margin_threshold_db, g)
        if c.speed_perturb:
            factor = c.speed_perturb[int(torch.randint(len(c.speed_perturb), (1,), generator=g))]
            wave = speed_perturb(wave, factor, self.sample_rate)
        if c.reverb_prob > 0 and float(torch.rand(1, generator=g)) < c.reverb_prob:
            # the clip keeps its length (batching is by manifest duration): the tail past
            # the end is cut, the speech's own reverberation inside the clip stays
            rir = synthetic_rir(_rng(g), self.sample_rate, c.rt60_s, c.drr_db)
            wave = reverberate(wave, rir)[:wave.numel()]
        if c.noise_prob > 0 and float(torch.rand(1, generator=g)) < c.noise_prob:
            lo, hi = c.noise_snr_db
            snr = lo + (hi - lo) * float(torch.rand(1, generator=g))
            if self.noise.waves:
                noise = self.noise.sample(wave.numel(), _rng(g))
            else:  # generated only: the draws of the runs made before real noise was an option
                color = ("white", "pink", "brown")[int(torch.randint(3, (1,), generator=g))]
                noise = colored_noise(wave.numel(), color, g)
            wave = add_noise(wave, noise, snr, g)
        return band_limit(wave, self.sample_rate, c.band_limit_hz)


def _rng(g: torch.Generator) -> random.Random:
    """A random.Random (what NoiseBank and synthetic_rir draw from) seeded from ``g``."""
    return random.Random(int(torch.randint(2**31, (1,), generator=g)))


def noise_files(paths: List[str]) -> List[Path]:
    """The audio files among ``paths`` and under the folders among them, sorted; a path
    that does not exist is refused, naming it."""
    return [f for p in paths for f in list_audio(p, what="data.noise_dirs")]


class LRSchedule:
    """Learning rate as a function of training progress.

    Linear warm-up over ``warmup_steps`` optimiser steps, then (``cosine``) a cosine decay
    from ``lr`` to ``lr * final_ratio``, or (``constant``) a flat rate. Progress is the
    larger of consumed / total_steps and, with a time budget, elapsed / budget: a budgeted
    run anneals fully and ends on time on a slow or busy machine instead of stopping at a
    high rate. ``total_steps`` and ``consumed`` count the run's batches: one optimiser step
    of W processes accumulating A batches consumes W * A of them, so the schedule is the
    same function of the data seen on any world size, and a resume on another continues it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float,
                 total_steps: int, warmup_steps: int, budget_seconds: Optional[float] = None,
                 final_ratio: float = 0.01) -> None:
        if kind not in ("cosine", "constant"):
            raise ValueError(f"train.schedule must be 'cosine' or 'constant', got {kind!r}")
        self.optimizer, self.kind, self.peak = optimizer, kind, lr
        self.total_steps, self.warmup = max(1, total_steps), max(0, warmup_steps)
        self.budget, self.final_ratio = budget_seconds, final_ratio
        self.steps, self.consumed, self.elapsed = 0, 0, 0.0
        self._set(self.rate())

    def progress(self) -> float:
        p = self.consumed / self.total_steps
        if self.budget:
            p = max(p, self.elapsed / self.budget)
        return min(1.0, p)

    def rate(self) -> float:
        warm = min(1.0, (self.steps + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "constant":
            return self.peak * warm
        cos = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return self.peak * warm * (self.final_ratio + (1 - self.final_ratio) * cos)

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, elapsed: float, consumed: Optional[int] = None) -> None:
        """Advance one optimiser step; ``elapsed`` is total training seconds so far and
        ``consumed`` the run's batches used so far (default: one more)."""
        self.steps += 1
        self.consumed = self.consumed + 1 if consumed is None else consumed
        self.elapsed = elapsed
        self._set(self.rate())

    @property
    def done(self) -> bool:
        return self.progress() >= 1.0

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {"steps": self.steps, "consumed": self.consumed, "elapsed": self.elapsed}

    def load_state_dict(self, state: Dict) -> None:
        self.steps, self.elapsed = state["steps"], state["elapsed"]
        self.consumed = state.get("consumed", self.steps)  # older checkpoints: one a step
        self._set(self.rate())


def freeze_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> List[torch.nn.Parameter]:
    """Stop the parameters named by ``prefixes`` (``train.freeze``) from training; returns
    the others. A prefix that names nothing, or freezing everything, is an error."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            roots = sorted({n.split(".")[0] for n in names} | {".".join(n.split(".")[:2]) for n in names
                                                               if n.startswith("heads.")})
            raise ValueError(f"train.freeze: {prefix!r} names no parameters; modules: {roots}")
    trainable = []
    for name, param in model.named_parameters():
        frozen = any(name == p or name.startswith(p + ".") for p in prefixes)
        param.requires_grad_(not frozen)
        if not frozen:
            trainable.append(param)
    if not trainable:
        raise ValueError(f"train.freeze {list(prefixes)} leaves no parameter to train")
    return trainable


def train_step(model: ASRModel, optimizer: torch.optim.Optimizer, batch, grad_clip: float,
               precision: str = "fp32", scaler: Optional[torch.amp.GradScaler] = None):
    """One optimiser step: the loss per target token, gradients clipped to ``grad_clip``,
    and no update when their norm is not finite. ``precision``: the forward pass's
    autocast (see :mod:`asr.device`); ``scaler`` scales the loss for fp16.

    Returns ``(loss, per-head losses (B,), target tokens, gradient norm)``.
    """
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    with autocast(batch.waves.device, precision):
        losses = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
    ntok = batch.target_lens.sum().clamp(min=1)
    loss = losses["total"].float().sum() / ntok
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss, losses, ntok, _clip_and_step(model, optimizer, grad_clip, scaler)


def _clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                   scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Clip the (unscaled) gradients and step, unless their norm is not finite."""
    scaler.unscale_(optimizer)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the step itself when the gradients overflowed
        scaler.update()
    elif torch.isfinite(gnorm):
        optimizer.step()
    return gnorm


def compute_cmvn(model: ASRModel, dataset, max_utts: int = 300):
    """Per-dimension mean and std of the features over up to ``max_utts`` utterances of
    ``dataset`` (an :class:`UtteranceDataset`, or an iterable of waveforms (N,))."""
    total, sq, n = None, None, 0
    device = model.cmvn.mean.device
    if isinstance(dataset, UtteranceDataset):
        waves = (dataset.load(i) for i in range(min(max_utts, len(dataset))))
    else:
        waves = itertools.islice(dataset, max_utts)
    with torch.no_grad():
        for wave in waves:
            if wave is None:
                continue
            feats, lens = model.features(wave[None].to(device))
            feats = model.per_utterance_normalization(feats, lens)
            f = feats[0].double()
            total = f.sum(0) if total is None else total + f.sum(0)
            sq = f.square().sum(0) if sq is None else sq + f.square().sum(0)
            n += f.shape[0]
    if n == 0:
        raise RuntimeError("no readable training audio to compute feature statistics")
    mean = total / n
    std = (sq / n - mean.square()).clamp(min=1e-8).sqrt()
    return mean.float(), std.float()


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """Training loss per step and validation loss/WER per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in open(metrics_path)]
    train = [r for r in rows if r["kind"] == "train"]
    valid = [r for r in rows if r["kind"] == "valid"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, label="train")
    if valid:
        axes[0].plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid")
        axes[1].plot([r["epoch"] for r in valid], [100 * r["wer"] for r in valid], "o-")
    axes[0].set(xlabel="step", ylabel="loss per token", title="loss")
    if train or valid:
        axes[0].legend()
    axes[1].set(xlabel="epoch", ylabel="WER %", title="validation WER (greedy)")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@dataclass
class TrainResult:
    checkpoint: Path
    model_path: Path
    steps: int
    epochs_done: int
    utterances_per_second: float  # this run's utterances over this run's time
    train_seconds: float  # training time of the experiment, earlier runs of a resume included
    rejected: List
    utterances: int = 0  # utterances trained on in this run


class Trainer:
    """Runs (or resumes) one experiment in ``exp_dir``.

    Layout: ``config.yaml``, ``metrics.jsonl``, ``curves.png``, ``last.pt`` (full training
    state, written every ``checkpoint_every`` steps and at each epoch end), ``model.pt``
    (weights, config and tokenizer only) and ``rejected.jsonl`` (skipped utterances).
    """

    def __init__(self, cfg: ExperimentConfig, exp_dir: str | Path,
                 tokenizer: Optional[Tokenizer] = None, init_from: Optional[str] = None) -> None:
        self.device = resolve_device(cfg.train.device)
        self.precision = check_precision(cfg.train.precision)
        self.world = init_world(self.device)
        if cfg.train.accum_steps < 1:
            raise ValueError(f"train.accum_steps must be >= 1, got {cfg.train.accum_steps}")
        # the resolved config, saved with every checkpoint, records the run's process count
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                 world_size=self.world.size))
        self.cfg = cfg
        self.ddp: Optional[DistributedDataParallel] = None
        self.exp_dir = Path(exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.init_from = init_from
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.set_num_threads(cfg.train.num_threads)

        d = cfg.data
        self.plan: Optional[ShardPlan] = None  # data.train_shards: streamed from shards
        train_raw = None if d.train_shards else read_manifest(d.train)
        # the checkpoint this run continues: its own last.pt (resume), else --init-from
        last = self.exp_dir / "last.pt"
        self._start_path = last if last.exists() else (Path(init_from) if init_from else None)
        self._start_state = read_checkpoint(self._start_path) if self._start_path else None
        texts = ((normalize_text(u.text) for u in train_raw) if train_raw is not None else
                 (normalize_text(str(m.get("text", ""))) for m in iter_metadata(d.train_shards)))
        self.tokenizer = self._choose_tokenizer(
            tokenizer, lambda: build_tokenizer(cfg.tokenizer.kind, texts, cfg.tokenizer.vocab_size))
        enc = self.tokenizer.encode
        train_utts, rej = ([], []) if train_raw is None else validate(
            train_raw, normalize_text, enc, d.max_duration, d.on_error)
        if train_raw is not None:
            check_rejected_share(d.train, len(train_raw), rej, d.max_rejected_share)
        valid_utts, rej_v = ([], [])
        if d.valid:
            valid_raw = read_manifest(d.valid)
            valid_utts, rej_v = validate(valid_raw, normalize_text, enc, d.max_duration, d.on_error)
            check_rejected_share(d.valid, len(valid_raw), rej_v, d.max_rejected_share)
            valid_utts = valid_utts[: cfg.train.valid_max_utts]
        if not train_utts and train_raw is not None:
            raise RuntimeError(f"{d.train}: no usable training utterances "
                               f"({len(rej)} rejected, see the log)")
        self.augmenter = Augmenter(d, cfg.sample_rate, cfg.train.seed)
        if d.train_shards:
            self.plan = ShardPlan(d.train_shards, cfg.train.max_batch_seconds, cfg.train.seed,
                                  self.world.rank, self.world.size, d.shard_buffer,
                                  d.shard_buffer_mb, d.max_duration, normalize_text, enc)
            self.train_set = ShardDataset(enc, cfg.sample_rate, d.on_error, transform=self.augmenter)
        else:
            self.train_set = UtteranceDataset(train_utts, enc, cfg.sample_rate, d.on_error,
                                              d.cache_audio, transform=self.augmenter)
        self.valid_set = UtteranceDataset(
            valid_utts, enc, cfg.sample_rate, d.on_error, True,
            transform=(lambda w, i: band_limit(w, cfg.sample_rate, d.band_limit_hz)))
        self.rejected = rej + rej_v
        self.sampler = DurationBatchSampler([u.duration for u in train_utts],
                                            cfg.train.max_batch_seconds, seed=cfg.train.seed)
        self.model = ASRModel(cfg, self.tokenizer.vocab_size).to(self.device)
        self.scaler = grad_scaler(self.device, self.precision)
        trainable = freeze_parameters(self.model, cfg.train.freeze)
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        t = cfg.train
        if self.plan is not None:
            # the run's batches for the LR schedule: epoch 0's plan (from the shards'
            # metadata) on every epoch; later epochs cut a few more or fewer
            n = self.plan.count_batches(0)
            if n == 0:
                raise RuntimeError(f"{d.train_shards}: no usable training utterances "
                                   f"({len(self.plan.rejected)} rejected, see the log)")
            self.epoch_batches = [n * self.world.size] * t.epochs
        else:
            self.epoch_batches = self.sampler.batches_per_epoch(t.epochs)
        if t.max_steps is not None and t.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {t.max_steps}")
        total_batches = sum(self.epoch_batches)
        if t.max_steps:  # the schedule counts batches: W processes accumulating A per step
            total_batches = min(total_batches, t.max_steps * t.accum_steps * self.world.size)
        self.scheduler = LRSchedule(
            self.optimizer, t.schedule, t.lr, total_batches, t.warmup_steps,
            budget_seconds=60 * t.max_minutes if t.max_minutes else None)
        self.metrics_path = self.exp_dir / "metrics.jsonl"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    # ----------------------------------------------------------------- state
    def _choose_tokenizer(self, given: Optional[Tokenizer], build) -> Tokenizer:
        """The continued checkpoint's tokenizer, else ``given``, else ``build()``.

        Restored weights only mean something with the vocabulary they were trained on, and
        a SentencePiece model rebuilt from this run's texts can differ from it.
        """
        state = self._start_state
        if state is None:
            return given or build()
        if state.get("tokenizer") is not None:
            saved = Tokenizer.from_dict(state["tokenizer"])
            if given is not None and given.to_dict() != saved.to_dict():
                raise ValueError(f"{self._start_path}: its tokenizer differs from the one "
                                 "given; the restored weights need the saved one")
            if saved.to_dict()["kind"] != self.cfg.tokenizer.kind:
                log.warning("%s: using its %s tokenizer, not the configured %s",
                            self._start_path, saved.to_dict()["kind"], self.cfg.tokenizer.kind)
            return saved
        # no tokenizer saved: a rebuilt one is the same only for the fixed character set
        saved_kind = state.get("config", {}).get("tokenizer", {}).get("kind", "char")
        rebuilt = given or build()
        if not (saved_kind == "char" and rebuilt.to_dict() == CharTokenizer().to_dict()):
            raise CheckpointError(
                f"{self._start_path}: has no saved tokenizer, and one rebuilt from the "
                f"training texts ({rebuilt.to_dict()['kind']}, {rebuilt.vocab_size} tokens) "
                f"may differ from the {saved_kind} vocabulary its weights were trained on")
        return rebuilt

    def _save(self, name: str = "last.pt") -> Optional[Path]:
        if not self.world.is_main:
            return None
        return save_checkpoint(
            self.exp_dir / name, self.cfg, self.tokenizer, self.model,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
            torch_rng=torch.get_rng_state(), scaler=self.scaler.state_dict(), rejected=[r.__dict__ for r in self.rejected],
            # a shard epoch's split depends on the world size: batch_in_epoch counts this
            # rank's batches there, meaningful only with the same number of processes
            shard_world_size=self.world.size if self.plan is not None else None,
            rejected_loads={"train": [r.__dict__ for r in self.train_set.rejected],
                            "valid": [r.__dict__ for r in self.valid_set.rejected]})

    def _save_epoch(self) -> Optional[Path]:
        """``epoch-N.pt`` (weights, config, tokenizer) after epoch N, keeping the newest
        ``keep_checkpoints`` of them for ``python -m asr average``."""
        from asr.average import epoch_checkpoints

        if not self.world.is_main:
            return None
        path = save_checkpoint(self.exp_dir / f"epoch-{self.epoch}.pt", self.cfg,
                               self.tokenizer, self.model, step=self.step, epoch=self.epoch)
        for old in epoch_checkpoints(self.exp_dir)[:-max(1, self.cfg.train.keep_checkpoints)]:
            old.unlink()
        return path

    def _resume(self) -> bool:
        path = self.exp_dir / "last.pt"
        if not path.exists():
            return False
        state = self._start_state if self._start_path == path else read_checkpoint(path)
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ValueError(f"{path}: its optimiser state is for other trainable parameters "
                             f"({exc}); was train.freeze changed? Resume with the run's own config, "
                             "or start the new one in another --exp") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        if self.plan is not None and self.batch_in_epoch and state.get("shard_world_size") != self.world.size:
            raise ValueError(f"{path}: stopped mid-epoch reading shards with "
                             f"{state.get('shard_world_size')} process(es); resume it with as many "
                             f"(this run has {self.world.size}), since the split depends on them")
        torch.set_rng_state(state["torch_rng"])
        # audio that failed before is neither read nor listed again
        loads = state.get("rejected_loads", {})
        self.train_set.restore_rejected(loads.get("train", []))
        self.valid_set.restore_rejected(loads.get("valid", []))
        log.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.epoch,
                 self.batch_in_epoch, self.step)
        return True

    def _log(self, **row) -> None:
        if not self.world.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # ----------------------------------------------------------------- loops
    def _loader(self, dataset: UtteranceDataset, batches) -> DataLoader:
        # its own generator: a loader draws a seed when iterated, and drawing it from the
        # global RNG would shift dropout/SpecAugment masks after a resume
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                          generator=torch.Generator(), num_workers=self.cfg.train.num_workers,
                          pin_memory=self.device.type == "cuda")

    def validate(self) -> Dict[str, float]:
        from asr.evaluate import score

        self.model.eval()
        loader = self._loader(self.valid_set, DurationBatchSampler(
            [u.duration for u in self.valid_set.utts], self.cfg.train.max_batch_seconds,
            shuffle=False))
        tot_loss, tot_tokens, refs, hyps = 0.0, 0, [], []
        with torch.no_grad():
            for batch in loader:
                if batch is None:
                    continue
                batch = batch.to(self.device, non_blocking=True)
                losses = self.model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
                tot_loss += float(losses["total"].sum())
                tot_tokens += int(batch.target_lens.sum())
                results = self.model.decode(batch.waves, batch.wave_lens)
                hyps += [self.tokenizer.decode(r.best.tokens) for r in results]
                refs += [self.tokenizer.decode(t[:n].tolist())
                         for t, n in zip(batch.targets, batch.target_lens)]
        self.model.train()
        m = score(refs, hyps) if refs else {"wer": float("nan"), "cer": float("nan")}
        return {"loss": tot_loss / max(1, tot_tokens), **m}

    def _stand_in(self):
        """A one-utterance batch of silence, trained on with weight 0 by a rank whose batch
        failed to load: DistributedDataParallel syncs gradients inside backward, so every
        rank must run the same number of them."""
        from asr.data import Batch

        n = self.cfg.sample_rate // 4
        return Batch(["<stand-in>"], torch.zeros(1, n), torch.tensor([n]),
                     torch.ones(1, 1, dtype=torch.long), torch.tensor([1]))

    def _train_step(self, group: List) -> Optional[Dict]:
        """One optimiser step over this rank's micro-batches ``group`` (None: failed to
        load), all ranks together. The loss is per target token of the whole step (every
        rank's micro-batches), so W ranks accumulating A batches step exactly as one process
        accumulating W * A would. Returns None when no rank had any audio (no update)."""
        t = self.cfg.train
        group = [b.to(self.device, non_blocking=True) if b is not None else None for b in group]
        local = torch.tensor([sum(float(b.target_lens.sum()) for b in group if b is not None),
                              sum(len(b) for b in group if b is not None)],
                             dtype=torch.float64, device=self.device)
        ntok, utts = all_reduce_sum(local, self.world).tolist()
        if utts == 0:
            return None
        net = self.ddp or self.model
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        head_sums: Dict[str, float] = {}
        for j, batch in enumerate(group):
            weight = 1.0
            if batch is None:
                if not self.world.distributed:
                    continue
                batch, weight = self._stand_in().to(self.device), 0.0
            last = j == len(group) - 1
            # DDP averages gradients over ranks; scaling by W makes that their sum
            sync = self.ddp.no_sync() if self.ddp is not None and not last else nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    losses = net(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
                loss = weight * losses["total"].float().sum() * (self.world.size / ntok)
                self.scaler.scale(loss).backward()
            loss_sum += weight * losses["total"].detach().double().sum()
            for k, v in losses.items():
                if k != "total":
                    head_sums[k] = head_sums.get(k, 0.0) + weight * float(v.detach().sum())
        gnorm = _clip_and_step(self.model, self.optimizer, t.grad_clip, self.scaler)
        heads = sorted(head_sums)
        totals = all_reduce_sum(torch.tensor([float(loss_sum)] + [head_sums[k] for k in heads],
                                             dtype=torch.float64, device=self.device), self.world)
        return {"loss": totals[0].item() / ntok, "grad_norm": float(gnorm),
                "heads": {k: totals[1 + i].item() / ntok for i, k in enumerate(heads)},
                "utterances": sum(len(b) for b in group if b is not None)}

    def _manifest_steps(self, first: int):
        """(steps, count) of this epoch from a manifest: each step is (this rank's group of
        batches, batch_in_epoch after it, the epoch's batches consumed after it).
        batch_in_epoch counts the epoch's global batches (every rank's) used, so a resume
        on another world size starts where this one stopped (the epoch's last step also
        counts the batches the sharding left out)."""
        world, accum = self.world, self.cfg.train.accum_steps
        self.sampler.set_epoch(self.epoch)
        remaining = self.sampler.batches()[first:]
        mine = shard(remaining, world)
        steps_left = -(-len(mine) // accum)

        def steps():
            loader = iter(self._loader(self.train_set, mine))
            for k in range(steps_left):
                group = [next(loader) for _ in range(min(accum, len(mine) - k * accum))]
                pos = first + (len(remaining) if k == steps_left - 1 else (k + 1) * accum * world.size)
                yield group, pos, pos
        return steps(), steps_left

    def _shard_steps(self, first: int):
        """This epoch's steps from shards (see :meth:`_manifest_steps`). Every rank streams
        its own share (asr/shards.py), so the ranks' batch counts differ by a few: until
        all are done, a rank out of batches trains on a weight-0 stand-in. batch_in_epoch
        is the batches each rank has taken (steps x accum_steps), the plan's resume point."""
        world, accum = self.world, self.cfg.train.accum_steps
        self.plan.set_epoch(self.epoch, first)
        loader = iter(self._loader(self.train_set, self.plan))
        k = 0
        while True:
            group = list(itertools.islice(loader, accum))
            more = float(bool(group))
            if world.distributed:
                more = all_reduce_max(more, world, self.device)
            if not more:
                return
            k += 1
            pos = first + k * accum
            yield group or [None], pos, min(pos * world.size, self.epoch_batches[self.epoch])

    def _elapsed(self, t_start: float) -> float:
        """Training seconds so far. With a time budget the ranks agree on it (the slowest
        clock), since it sets the learning rate and when the run stops."""
        elapsed = time.time() - t_start
        if self.world.distributed and self.cfg.train.max_minutes:
            elapsed = all_reduce_max(elapsed, self.world, self.device)
        return elapsed

    def _init_weights(self, weights: Dict[str, torch.Tensor]) -> None:
        """Start from another run's weights (``--init-from``). Every weight the checkpoint
        has must fit this model; this model may have more (a head the checkpoint lacks,
        e.g. RNN-T and attention heads added to a CTC model), which keep their fresh
        initialisation and are named in the log."""
        own = self.model.state_dict()
        unknown = sorted(set(weights) - set(own))
        misfit = sorted(k for k in set(weights) & set(own) if weights[k].shape != own[k].shape)
        if unknown or misfit:
            raise ValueError(
                f"{self._start_path}: its weights do not fit this config's model "
                f"(not in the model: {unknown[:5]}; other shapes: {misfit[:5]})")
        fresh = sorted(set(own) - set(weights))
        self.model.load_state_dict(weights, strict=False)
        log.info("initialised weights from %s%s", self._start_path,
                 f"; {len(fresh)} new ones start fresh ({', '.join(sorted({k.rsplit('.', 2)[0] for k in fresh})[:6])})"
                 if fresh else "")

    def fit(self) -> TrainResult:
        cfg, world = self.cfg, self.world
        if world.is_main:
            save_config(cfg, self.exp_dir / "config.yaml")
        if self._start_state is not None and self._start_path != self.exp_dir / "last.pt":
            self._init_weights(self._start_state["model"])
        elif not self._resume() and world.is_main:  # DDP gives the others rank 0's statistics
            if self.plan is not None:  # the first readable utterances of the shards
                plan = ShardPlan(self.cfg.data.train_shards, 1.0, shuffle=False)
                waves = (self.train_set.load(e) for e in plan.entries(0))
                mean, std = compute_cmvn(self.model, waves)
            else:
                mean, std = compute_cmvn(self.model, self.train_set)
            self.model.cmvn.set_stats(mean, std)
        if world.rank:  # dropout and SpecAugment masks differ between ranks
            torch.manual_seed(cfg.train.seed + 1000003 * world.rank + self.step)
        self.model.train()
        if world.distributed:  # wraps after the restore: it broadcasts rank 0's weights
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._start_state = None  # restored; free its copy of the weights
        run_start = time.time()
        t_start = run_start - self.scheduler.elapsed  # training time carries over a resume
        utts_seen = 0
        stop = False
        accum = cfg.train.accum_steps
        while self.epoch < cfg.train.epochs and not stop:
            self.augmenter.epoch = self.epoch
            epoch_start = sum(self.epoch_batches[:self.epoch])  # the run's batches before it
            first = self.batch_in_epoch
            if self.plan is None:
                steps, steps_left = self._manifest_steps(first)
            else:
                steps = self._shard_steps(first)
                steps_left = max(0, -(-(self.epoch_batches[self.epoch] // world.size - first) // accum))
            bar = tqdm(total=steps_left, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                       leave=False, dynamic_ncols=True, mininterval=1.0, disable=not world.is_main)
            epoch_utts = 0
            for group, position, consumed in steps:
                out = self._train_step(group)
                self.batch_in_epoch = position
                self.scheduler.step(self._elapsed(t_start), epoch_start + consumed)
                bar.update(1)
                if out is None:  # no rank had audio: the schedule still counts the batches
                    continue
                self.step += 1
                utts_seen += out["utterances"]
                epoch_utts += out["utterances"]
                bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                if self.step % 10 == 0:
                    self._log(kind="train", step=self.step, epoch=self.epoch, loss=out["loss"],
                              grad_norm=out["grad_norm"], lr=self.scheduler.get_last_lr()[0],
                              **{f"loss_{k}": v for k, v in out["heads"].items()})
                if self.step % cfg.train.checkpoint_every == 0:
                    self._save()
                if (cfg.train.max_minutes or cfg.train.max_steps) and self.scheduler.done:
                    log.warning("stopping: budget reached (train.max_minutes=%s, train.max_steps=%s) "
                                "at epoch %d", cfg.train.max_minutes, cfg.train.max_steps, self.epoch + 1)
                    stop = True
                    break
            bar.close()
            self._log(kind="epoch", epoch=self.epoch, step=self.step,
                      utterances_per_rank=[int(n) for n in per_rank(epoch_utts, world, self.device)])
            if not stop:
                self.epoch += 1
                self.batch_in_epoch = 0
            else:  # the budget ended this run: the checkpoint marks it finished
                self.epoch = cfg.train.epochs
            v = self.validate() if len(self.valid_set) and world.is_main else {}
            if v:
                self._log(kind="valid", step=self.step, epoch=self.epoch, **v)
                tqdm.write(f"epoch {self.epoch}: valid loss {v['loss']:.3f} "
                           f"WER {100 * v['wer']:.1f}% CER {100 * v['cer']:.1f}%")
            self._save()
            if not stop:
                self._save_epoch()
            if self.metrics_path.exists() and world.is_main:
                plot_curves(self.metrics_path, self.exp_dir / "curves.png")
            barrier(world)  # the others wait while rank 0 validates and writes
        now = time.time()
        rejected, seen = [], set()
        plan_rejected = self.plan.rejected if self.plan is not None else []
        for r in self.rejected + plan_rejected + self.train_set.rejected + self.valid_set.rejected:
            if (r.id, r.audio) not in seen:  # once, also when train and valid share it
                seen.add((r.id, r.audio))
                rejected.append(r)
        model_path = self.exp_dir / "model.pt"
        if world.is_main:
            with open(self.exp_dir / "rejected.jsonl", "w") as f:
                for r in rejected:
                    f.write(json.dumps(r.__dict__) + "\n")
            save_checkpoint(model_path, cfg, self.tokenizer, self.model)
        barrier(world)
        return TrainResult(self.exp_dir / "last.pt", model_path, self.step, self.epoch,
                           utts_seen / max(now - run_start, 1e-9), now - t_start, rejected,
                           utts_seen)
