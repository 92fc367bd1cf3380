"""The active-learning loop: seed set -> train -> score the pool -> select under a budget of
audio hours -> label -> retrain -> evaluate, round after round, for several strategies and
seeds at equal labeled hours.

Layout of ``out``::

    config.yaml, model.yaml          the resolved loop and model configs (a rerun with
                                     others is refused)
    seed/seed_set.jsonl              the random seed set drawn from the pool (labeled)
    seed/train/                      the seed model (asr Trainer experiment, resumable)
    seed/eval.json                   its evaluation (round 0 of every strategy and seed)
    runs/<strategy>/seed<k>/round<r>/
        scores.jsonl                 the unlabeled pool scored by round r-1's model
        selected.jsonl               the clips chosen under round_hours
        labeled.jsonl                every labeled pool clip after round r
        train.jsonl, train/          the round's fine-tune (resumable)
        eval.json, state.json        state.json is written last: the round is finished
    results.jsonl, results.md, wer_vs_hours.png

Every step of a round writes its file atomically and is skipped when the file exists, so a
rerun skips finished rounds and continues an interrupted one where it stopped (the
fine-tune resumes from its own ``last.pt``).

Retraining: each round fine-tunes the **seed model** (not the previous round's) on every
labeled pool clip so far plus a fixed replay sample of the base data, for a fixed number
of optimiser steps (``finetune.steps``), so rounds and strategies differ only in which
clips were labeled, not in how long or from where the model was trained. The paper
(Huang et al. 2016) retrains on the grown set; fine-tuning from the seed model is its
affordable stand-in. ``finetune.init: previous`` continues from the previous round instead.

Labels: in simulation (``labels: simulate``) the pool's transcripts are held back from the
scorers and the selection and given back only for the selected clips. With
``labels: queue`` the selected clips go into the labeling queue's database
(:func:`active_learning.queue.transfer.import_candidates`, with the scorer's best
hypothesis as ``meta.hypothesis`` for the labeler to correct) and the loop stops until they
come back labeled (:func:`~active_learning.queue.transfer.export_labeled`); rerun it then.
A clip flagged in the queue, or refused by it because its audio cannot be read, will never
be labeled: it counts as answered, is left out of the labeled set and logged, and a round's
``dropped_clips`` counts its selected clips that came back so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml
from tqdm import tqdm

from active_learning.pool import selected_for_labeling
from active_learning.scorers import SCORERS, ScoringConfig
from active_learning.select import SelectionConfig, select_clips
from asr.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_config, to_dict
from asr.data import Utterance, read_manifest, write_manifest

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Each round's retraining. steps: optimiser steps (a fixed budget, the same every
    round). init: ``seed`` (fine-tune the seed model) or ``previous`` (the previous
    round's model). lr, warmup_steps: its schedule (cosine to 1% of lr).
    replay_hours: base data trained on beside the labeled pool clips (a fixed random
    sample, the same every round)."""

    steps: int = 50
    init: str = "seed"
    lr: float = 1e-3
    warmup_steps: int = 5
    replay_hours: float = 0.0


@dataclass
class LoopConfig:
    """model: an asr experiment YAML (architecture and training settings of the seed model;
    its data paths are replaced). model_overrides: ``section.key=value`` on it.
    train: manifest of transcribed clips. pool_corpora: the clips of ``train`` whose
    ``meta.corpus`` is listed form the pool (their transcripts held back); the others are
    the base, labeled from the start. Empty: all of ``train`` is the pool. pool: manifests
    whose clips form the pool instead, all of ``train`` being the base (for a seed model
    trained on ``train``, the pool must be clips it never trained on).
    pool_max_hours: keep a fixed random subset of the pool this long (0: all; the rest is
    left out entirely), when scoring the whole pool every round costs too much.
    eval: manifests to evaluate on; eval_max_utts: a fixed random subset of at most this
    many per manifest (0: all). seed_hours: the random seed set drawn from the pool
    (seed_set_seed). seed_steps: optimiser steps of the seed model; seed_init: a checkpoint
    whose weights it starts from (its shape must be ``model``'s; empty: random). round_hours: audio
    selected per round; rounds: rounds after the seed. strategies: scorer names; seeds:
    one run per strategy and seed (the random scorer's draw and the fine-tune's seed).
    scoring: N-best and EGL options (method and seed are set per run; nbest <= beam, and
    the head and EGL's params are checked against ``model`` before anything trains). speaker_decay:
    selection diversity (1.0: off). labels: ``simulate`` | ``queue``; queue_db: the
    labeling queue's database URL (labels: queue)."""

    model: str = ""
    model_overrides: List[str] = field(default_factory=list)
    train: str = ""
    pool_corpora: List[str] = field(default_factory=list)
    pool: List[str] = field(default_factory=list)
    pool_max_hours: float = 0.0
    eval: List[str] = field(default_factory=list)
    eval_max_utts: int = 0
    seed_hours: float = 0.1
    seed_set_seed: int = 0
    seed_steps: int = 200
    seed_init: str = ""
    round_hours: float = 0.1
    rounds: int = 3
    strategies: List[str] = field(default_factory=lambda: ["egl", "random", "confidence"])
    seeds: List[int] = field(default_factory=lambda: [0])
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scoring: ScoringConfig = field(default_factory=lambda: ScoringConfig(nbest=4, beam=8))
    speaker_decay: float = 1.0
    labels: str = "simulate"
    queue_db: str = ""

    def check(self, where: str = "config") -> "LoopConfig":
        """Errors name the field."""
        for name in ("model", "train"):
            if not getattr(self, name):
                raise ConfigError(f"{where}.{name}: required")
        if not self.eval:
            raise ConfigError(f"{where}.eval: at least one evaluation manifest is required")
        if self.pool and self.pool_corpora:
            raise ConfigError(f"{where}.pool: give pool manifests or pool_corpora, not both")
        for name in ("seed_hours", "round_hours", "pool_max_hours", "finetune.replay_hours"):
            value = _get(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{where}.{name}: must be a finite number >= 0, got {value}")
        if self.round_hours <= 0:
            raise ConfigError(f"{where}.round_hours: must be > 0, got {self.round_hours}")
        for name in ("rounds", "seed_steps", "finetune.steps"):
            if _get(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {_get(self, name)}")
        if self.eval_max_utts < 0:
            raise ConfigError(f"{where}.eval_max_utts: must be >= 0, got {self.eval_max_utts}")
        unknown = [s for s in self.strategies if s not in SCORERS.names()]
        if unknown or not self.strategies:
            raise ConfigError(f"{where}.strategies: unknown {unknown} (known: {sorted(SCORERS.names())})"
                              if unknown else f"{where}.strategies: empty")
        if len(set(self.strategies)) != len(self.strategies) or len(set(self.seeds)) != len(self.seeds) \
                or not self.seeds:
            raise ConfigError(f"{where}.strategies/seeds: must be non-empty and without repeats")
        if self.finetune.init not in ("seed", "previous"):
            raise ConfigError(f"{where}.finetune.init: 'seed' or 'previous', got {self.finetune.init!r}")
        if self.seed_init and not Path(self.seed_init).is_file():
            raise ConfigError(f"{where}.seed_init: {self.seed_init}: checkpoint not found")
        if self.labels not in ("simulate", "queue"):
            raise ConfigError(f"{where}.labels: 'simulate' or 'queue', got {self.labels!r}")
        if self.labels == "queue" and not self.queue_db:
            raise ConfigError(f"{where}.queue_db: required with labels: queue")
        if not 0.0 < self.speaker_decay <= 1.0:
            raise ConfigError(f"{where}.speaker_decay: must lie in (0, 1], got {self.speaker_decay}")
        try:
            self.scoring.__post_init__()
        except ValueError as exc:
            raise ConfigError(f"{where}.scoring: {exc}") from None
        return self


def check_scoring_model(cfg: LoopConfig, experiment: ExperimentConfig, where: str = "config") -> None:
    """What of ``cfg.scoring`` only the model can tell: its head exists and EGL's
    ``params`` match parameters of it (checked on an untrained model of ``experiment``
    now, not found out after the seed model has trained). Errors name the field."""
    from active_learning.gradients import select_parameters
    from asr.model import ASRModel

    heads = list(experiment.heads)
    head = cfg.scoring.head or heads[0]
    if head not in heads:
        raise ConfigError(f"{where}.scoring.head: {head!r} is not a head of {cfg.model} (heads: {heads})")
    if "egl" in cfg.strategies:
        model = ASRModel(experiment, vocab_size=32)  # parameter names do not depend on the vocabulary
        try:
            select_parameters(model, head, cfg.scoring.params)
        except ValueError as exc:
            raise ConfigError(f"{where}.scoring.params: {exc}") from None


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_loop_config(path: str | Path, overrides: Optional[List[str]] = None) -> LoopConfig:
    """Read and check a loop YAML; ``overrides`` are ``key=value`` strings (YAML values).
    Relative paths in it are relative to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: loop config not found")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(LoopConfig, apply_overrides(data, overrides), where=str(path)).check(str(path))


# --------------------------------------------------------------------------- data

def hours(utts: Sequence[Utterance]) -> float:
    return sum(u.duration for u in utts) / 3600.0


def draw_hours(utts: Sequence[Utterance], budget_hours: float, seed: int) -> List[Utterance]:
    """A random subset (order by a seeded shuffle of the ids) filling ``budget_hours``."""
    order = sorted(utts, key=lambda u: u.id)
    random.Random(seed).shuffle(order)
    chosen, used = [], 0.0
    for u in order:
        if used + u.duration <= budget_hours * 3600.0:
            chosen.append(u)
            used += u.duration
    return chosen


def without_transcripts(utts: Sequence[Utterance]) -> List[Utterance]:
    """The pool as the scorers and the selection see it: no text."""
    return [dataclasses.replace(u, text="", meta=dict(u.meta)) for u in utts]


class SimulatedLabels:
    """Labels from the held-back transcripts of the pool."""

    def __init__(self, transcripts: Dict[str, str]) -> None:
        self.transcripts = transcripts

    def label(self, utts: Sequence[Utterance], run_dir: Path) -> Optional[List[Utterance]]:
        return [dataclasses.replace(u, text=self.transcripts[u.id], meta=dict(u.meta)) for u in utts]


class QueueLabels:
    """Labels from people, through the labeling queue: the clips are imported into its
    database (once) and read back once every one of them is answered; until then
    ``label`` returns None and the loop stops (rerun it when the labeling is done). A
    clip flagged in the queue, or not queued because its audio cannot be read, counts as
    answered: it is left out of the labels returned, and logged."""

    def __init__(self, db_url: str) -> None:
        from active_learning.queue.db import make_engine, migrate, session_factory

        engine = make_engine(db_url)
        migrate(engine)
        self.sessions = session_factory(engine)

    def label(self, utts: Sequence[Utterance], run_dir: Path) -> Optional[List[Utterance]]:
        from active_learning.queue.transfer import export_labeled, import_candidates, never_labeled

        with self.sessions() as db:
            counts = import_candidates(db, utts)  # clips already queued are left alone
            db.commit()
            if counts["added"]:
                log.info("%s: %d clips sent to the labeling queue", run_dir, counts["added"])
            labeled = {u.id: u for u in export_labeled(db, complete_only=True)}
            dropped = never_labeled(db, (u.id for u in utts))
        missing = [u.id for u in utts if u.id not in labeled and u.id not in dropped]
        if missing:
            log.warning("%s: waiting for %d of %d clips to be labeled in the queue; rerun when done",
                        run_dir, len(missing), len(utts))
            return None
        if dropped:
            log.warning("%s: %d of %d clips will not be labeled (flagged in the queue, or not queued: "
                        "unreadable audio) and are left out: %s", run_dir, len(dropped), len(utts),
                        ", ".join(f"{i} ({why})" for i, why in sorted(dropped.items())))
        return [dataclasses.replace(u, text=labeled[u.id].text, meta={**u.meta, **labeled[u.id].meta})
                for u in utts if u.id in labeled]


@dataclass
class Data:
    base: List[Utterance]
    pool: List[Utterance]  # transcripts removed
    transcripts: Dict[str, str]  # the pool's, held back
    eval: List[Utterance]


def load_data(cfg: LoopConfig) -> Data:
    everything = read_manifest(cfg.train)
    if cfg.pool:
        pool = [u for path in cfg.pool for u in read_manifest(path)]
        base = everything
        overlap = sorted({u.id for u in pool} & {u.id for u in base})
        if overlap:
            raise ConfigError(f"pool: {len(overlap)} clips are also in train ({cfg.train}), e.g. "
                              f"{overlap[:3]}: the pool must be clips the base does not hold")
    elif cfg.pool_corpora:
        wanted = set(cfg.pool_corpora)
        found = {u.meta.get("corpus") for u in everything}
        missing = sorted(wanted - found)
        if missing:
            raise ConfigError(f"pool_corpora: no clip of {cfg.train} has meta.corpus in {missing} "
                              f"(corpora there: {sorted(str(c) for c in found)})")
        pool = [u for u in everything if u.meta.get("corpus") in wanted]
        base = [u for u in everything if u.meta.get("corpus") not in wanted]
    else:
        pool, base = everything, []
    if cfg.pool_max_hours:
        pool = sorted(draw_hours(pool, cfg.pool_max_hours, cfg.seed_set_seed + 2), key=lambda u: u.id)
    evals = []
    for path in cfg.eval:
        utts = read_manifest(path)
        if cfg.eval_max_utts and len(utts) > cfg.eval_max_utts:
            utts = sorted(random.Random(0).sample(utts, cfg.eval_max_utts), key=lambda u: u.id)
        evals += utts
    return Data(base, without_transcripts(pool), {u.id: u.text for u in pool}, evals)


# --------------------------------------------------------------------------- steps

def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def _experiment(exp: ExperimentConfig, train_manifest: Path, steps: int, seed: int,
                lr: Optional[float] = None, warmup: Optional[int] = None) -> ExperimentConfig:
    data = dataclasses.replace(exp.data, train=str(train_manifest), valid="", test="")
    t = exp.train
    # enough epochs for the steps: a batch holds at most max_batch_seconds of audio, so an
    # epoch has at least this many batches
    seconds = sum(u.duration for u in read_manifest(train_manifest) if u.duration <= data.max_duration)
    epochs = math.ceil(steps / max(1, int(seconds // t.max_batch_seconds))) + 1
    train = dataclasses.replace(t, max_steps=steps, epochs=epochs, seed=seed,
                                max_minutes=None, checkpoint_every=max(1, min(t.checkpoint_every, steps)),
                                lr=t.lr if lr is None else lr,
                                warmup_steps=t.warmup_steps if warmup is None else warmup)
    return dataclasses.replace(exp, data=data, train=train)


def train_model(exp: ExperimentConfig, exp_dir: Path, init_from: Optional[Path] = None) -> Path:
    """Train (or resume, or skip when finished) one model; returns its model.pt."""
    from asr.train import Trainer

    model = exp_dir / "model.pt"
    if model.exists():
        return model
    Trainer(exp, exp_dir, init_from=str(init_from) if init_from else None).fit()
    return model


class EvalSet:
    """The evaluation clips, decoded from disk once and kept in memory for every round's
    model (greedy search of the first head, no LM)."""

    def __init__(self, utts: Sequence[Utterance], batch_seconds: float = 60.0) -> None:
        from active_learning.pool import _no_tokens
        from asr.data import UtteranceDataset

        # references are scored as text, not as tokens
        self.dataset = UtteranceDataset(list(utts), _no_tokens, 16000, "skip", cache_audio=True)
        self.batch_seconds = batch_seconds
        self.hours = hours(utts)

    def evaluate(self, model_path: Path, out: Path) -> Dict:
        """WER, CER and sizes, written to ``out`` (read back when there)."""
        if out.exists():
            return json.loads(out.read_text())
        import torch
        from torch.utils.data import DataLoader

        from asr.checkpoint import load_model
        from asr.data import DurationBatchSampler, collate
        from asr.evaluate import score as wer_cer

        model, tokenizer, cfg = load_model(model_path)
        if cfg.sample_rate != self.dataset.sample_rate:
            raise ValueError(f"{model_path}: sample rate {cfg.sample_rate}, evaluation audio read at "
                             f"{self.dataset.sample_rate}")
        by_id = {u.id: u.text for u in self.dataset.utts}
        refs, hyps = [], []
        sampler = DurationBatchSampler([u.duration for u in self.dataset.utts], self.batch_seconds,
                                       shuffle=False)
        with torch.no_grad():
            for batch in DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate):
                if batch is None:
                    continue
                for uid, res in zip(batch.ids, model.decode(batch.waves, batch.wave_lens)):
                    refs.append(by_id[uid])
                    hyps.append(tokenizer.decode(res.best.tokens))
        result = {**wer_cer(refs, hyps), "eval_utterances": len(refs),
                  "eval_skipped": len(self.dataset.utts) - len(refs), "eval_hours": round(self.hours, 4)}
        _write_json(out, result)
        return result


def score(cfg: LoopConfig, strategy: str, seed: int, model_path: Path, pool: Sequence[Utterance],
          out: Path, threads: int) -> Dict[str, Dict]:
    """The unlabeled ``pool`` scored by ``model_path``: {id: scores row (``score``, and
    ``hypothesis`` from scorers that decode)}, read back when ``out`` exists."""
    import torch

    from active_learning.pool import read_score_rows, score_pool_file
    from active_learning.scorers import build_scorer

    if not out.exists():
        scoring = dataclasses.replace(cfg.scoring, method=strategy, seed=seed)
        model, tokenizer, sample_rate = None, None, 16000
        if strategy != "random":
            from asr.checkpoint import load_model

            model, tokenizer, model_cfg = load_model(model_path)
            sample_rate = model_cfg.sample_rate
        torch.set_num_threads(threads)
        score_pool_file(build_scorer(model, scoring, tokenizer), list(pool), out, sample_rate,
                        scoring.batch_seconds)
    return read_score_rows(out)


# --------------------------------------------------------------------------- the loop

class Loop:
    """One loop config over ``out``; :meth:`run` does every strategy and seed."""

    def __init__(self, cfg: LoopConfig, out: str | Path) -> None:
        self.cfg = cfg.check()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = load_data(cfg)
        self.eval_set = EvalSet(self.data.eval)
        # read once: every round of this run trains the model configured when it started
        self.experiment = load_config(cfg.model, cfg.model_overrides)
        check_scoring_model(cfg, self.experiment)
        self.threads = self.experiment.train.num_threads
        self.labels = (SimulatedLabels(self.data.transcripts) if cfg.labels == "simulate"
                       else QueueLabels(cfg.queue_db))
        for name, what in (("config.yaml", cfg), ("model.yaml", self.experiment)):
            saved, resolved = self.out / name, yaml.safe_dump(to_dict(what), sort_keys=False)
            if saved.exists() and saved.read_text() != resolved:
                raise ConfigError(f"{saved}: {self.out} holds a run of another "
                                  f"{'loop' if name == 'config.yaml' else 'model (' + cfg.model + ')'} "
                                  "config; use a new --out")
            saved.write_text(resolved)

    # seed ------------------------------------------------------------------
    def seed_set(self) -> List[Utterance]:
        path = self.out / "seed" / "seed_set.jsonl"
        if not path.exists():
            drawn = draw_hours(self.data.pool, self.cfg.seed_hours, self.cfg.seed_set_seed)
            labeled = self.labels.label(drawn, path.parent)
            if labeled is None:
                raise SystemExit("the seed set is waiting for labels in the queue; rerun when done")
            write_manifest(labeled, path)
        return read_manifest(path)

    def replay(self) -> List[Utterance]:
        return draw_hours(self.data.base, self.cfg.finetune.replay_hours, self.cfg.seed_set_seed + 1)

    def seed_model(self) -> Path:
        d = self.out / "seed"
        manifest = d / "train.jsonl"
        if not manifest.exists():
            write_manifest(self.data.base + self.seed_set(), manifest)
        exp = _experiment(self.experiment, manifest, self.cfg.seed_steps, self.cfg.seed_set_seed)
        model = train_model(exp, d / "train", init_from=Path(self.cfg.seed_init) if self.cfg.seed_init else None)
        self.eval_set.evaluate(model, d / "eval.json")
        return model

    # rounds ------------------------------------------------------------------
    def run_dir(self, strategy: str, seed: int) -> Path:
        return self.out / "runs" / strategy / f"seed{seed}"

    def round_zero(self, strategy: str, seed: int) -> Dict:
        d = self.run_dir(strategy, seed) / "round0"
        state = d / "state.json"
        if not state.exists():
            d.mkdir(parents=True, exist_ok=True)
            seed_set = self.seed_set()
            write_manifest(seed_set, d / "labeled.jsonl")
            row = {"strategy": strategy, "seed": seed, "round": 0, "labeled_hours": hours(seed_set),
                   "labeled_clips": len(seed_set), "selected_hours": 0.0, "selected_clips": 0,
                   **self.eval_set.evaluate(self.seed_model(), self.out / "seed" / "eval.json"),
                   "train_steps": self.cfg.seed_steps}
            _write_json(state, row)
        return json.loads(state.read_text())

    def run_round(self, strategy: str, seed: int, r: int) -> Optional[Dict]:
        """Round ``r`` >= 1 of one run; None when it waits for labels."""
        cfg = self.cfg
        d = self.run_dir(strategy, seed) / f"round{r}"
        state = d / "state.json"
        if state.exists():
            return json.loads(state.read_text())
        d.mkdir(parents=True, exist_ok=True)
        prev = self.run_dir(strategy, seed) / f"round{r - 1}"
        prev_model = self.seed_model() if r == 1 else prev / "train" / "model.pt"
        labeled = read_manifest(prev / "labeled.jsonl")
        taken = {u.id for u in labeled}
        unlabeled = [u for u in self.data.pool if u.id not in taken]
        selected_path = d / "selected.jsonl"
        if not selected_path.exists():
            # every seed's round 1 scores the same pool with the same seed model, and the
            # model scorers are deterministic: score once, under seed/
            shared = r == 1 and strategy != "random"
            scores_path = self.out / "seed" / f"scores_{strategy}.jsonl" if shared else d / "scores.jsonl"
            rows = score(cfg, strategy, seed, prev_model, unlabeled, scores_path, self.threads)
            if shared:
                shutil.copyfile(scores_path, d / "scores.jsonl")  # each round keeps its scores
            chosen = select_clips(unlabeled, {uid: r["score"] for uid, r in rows.items()},
                                  SelectionConfig(cfg.round_hours, cfg.speaker_decay))
            # meta.al_score and meta.hypothesis: the queue's priority and the labeler's start
            write_manifest(selected_for_labeling(chosen, rows), selected_path)
        selected = read_manifest(selected_path)
        labeled_path = d / "labeled.jsonl"
        if not labeled_path.exists():
            new = self.labels.label(selected, d)
            if new is None:
                return None
            write_manifest(labeled + new, labeled_path)
        labeled_now = read_manifest(labeled_path)
        manifest = d / "train.jsonl"
        if not manifest.exists():
            write_manifest(labeled_now + self.replay(), manifest)
        f = cfg.finetune
        exp = _experiment(self.experiment, manifest, f.steps, 1000 * seed + r, lr=f.lr, warmup=f.warmup_steps)
        init = self.seed_model() if f.init == "seed" else prev_model
        model = train_model(exp, d / "train", init_from=init)
        row = {"strategy": strategy, "seed": seed, "round": r,
               "labeled_hours": hours(labeled_now), "labeled_clips": len(labeled_now),
               "selected_hours": hours(selected), "selected_clips": len(selected),
               # selected clips that came back without a label (flagged, or unreadable audio)
               "dropped_clips": len(selected) - (len(labeled_now) - len(labeled)),
               **self.eval_set.evaluate(model, d / "eval.json"), "train_steps": f.steps}
        _write_json(state, row)
        return row

    def run(self, progress: bool = True, only: Optional[Sequence[str]] = None) -> List[Dict]:
        """Every strategy and seed, or the strategies in ``only`` (to split one run across
        processes: each does its own strategies' folders; the seed model is trained by the
        first to get there, so start the others once ``seed/eval.json`` exists)."""
        cfg = self.cfg
        unknown = sorted(set(only or ()) - set(cfg.strategies))
        if unknown:
            raise ConfigError(f"--only {unknown}: not among the config's strategies {cfg.strategies}")
        self.seed_model()
        jobs = [(s, k) for k in cfg.seeds for s in cfg.strategies if not only or s in only]
        bar = tqdm(total=len(jobs) * (cfg.rounds + 1), desc="active-learning rounds", unit="round",
                   disable=not progress, dynamic_ncols=True)
        waiting = False
        # round by round across runs: an early stop still leaves every strategy at equal hours
        for r in range(cfg.rounds + 1):
            for strategy, seed in jobs:
                row = self.round_zero(strategy, seed) if r == 0 else self.run_round(strategy, seed, r)
                waiting |= row is None
                bar.update(1)
                if row is not None:
                    bar.set_postfix(strategy=strategy, seed=seed, round=r, wer=f"{row['wer']:.3f}")
            self.write_results()
        bar.close()
        if waiting:
            log.warning("some rounds wait for labels in the queue; rerun when they are labeled")
        return self.write_results()

    # results -----------------------------------------------------------------
    def rows(self) -> List[Dict]:
        rows = []
        for state in sorted(self.out.glob("runs/*/seed*/round*/state.json")):
            rows.append(json.loads(state.read_text()))
        return sorted(rows, key=lambda r: (r["strategy"], r["seed"], r["round"]))

    def write_results(self) -> List[Dict]:
        rows = self.rows()
        tmp = self.out / f"results.jsonl.{os.getpid()}.tmp"  # processes splitting a run write it too
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        tmp.replace(self.out / "results.jsonl")
        if rows:
            sizes = self.sizes()
            (self.out / "results.md").write_text(results_table(rows, sizes))
            plot_results(rows, self.out / "wer_vs_hours.png", sizes)
        return rows

    def sizes(self) -> Dict:
        d = self.data
        return {"pool_clips": len(d.pool), "pool_hours": hours(d.pool), "base_clips": len(d.base),
                "base_hours": hours(d.base), "eval_utterances": len(d.eval), "eval_hours": hours(d.eval),
                "seeds": len(self.cfg.seeds), "round_hours": self.cfg.round_hours}


# --------------------------------------------------------------------------- reports

def summarize(rows: Sequence[Dict]) -> Dict[tuple, Dict]:
    """(strategy, round) -> mean, sample std, min and max of WER and CER over seeds, and the
    mean labeled hours."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["round"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        s = {"n": len(rs), "labeled_hours": statistics.fmean(r["labeled_hours"] for r in rs),
             "eval_utterances": rs[0]["eval_utterances"]}
        for m in ("wer", "cer"):
            v = [r[m] for r in rs]
            s[m] = statistics.fmean(v)
            s[m + "_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
            s[m + "_min"], s[m + "_max"] = min(v), max(v)
        out[key] = s
    return out


def results_table(rows: Sequence[Dict], sizes: Dict) -> str:
    summary = summarize(rows)
    strategies = sorted({k[0] for k in summary})
    rounds = sorted({k[1] for k in summary})
    lines = [f"Pool {sizes['pool_clips']} clips ({sizes['pool_hours']:.2f} h), base (labeled from the "
             f"start) {sizes['base_clips']} clips ({sizes['base_hours']:.2f} h), eval "
             f"{sizes['eval_utterances']} utterances ({sizes['eval_hours']:.2f} h), "
             f"{sizes['round_hours']} h selected per round. WER % (greedy), mean ± std over seeds "
             f"[min-max]; labeled hours = pool clips labeled (seed set + selected).", "",
             "| round | labeled h | " + " | ".join(f"{s} WER" for s in strategies) + " | "
             + " | ".join(f"{s} CER" for s in strategies) + " |",
             "|---|---|" + "---|" * (2 * len(strategies))]
    for r in rounds:
        cells, hrs = [], []
        for m in ("wer", "cer"):
            for s in strategies:
                g = summary.get((s, r))
                if g is None:
                    cells.append("-")
                    continue
                if m == "wer":
                    hrs.append(g["labeled_hours"])
                cells.append(f"{100 * g[m]:.1f} ± {100 * g[m + '_std']:.1f} "
                             f"[{100 * g[m + '_min']:.1f}-{100 * g[m + '_max']:.1f}] (n={g['n']})")
        lines.append(f"| {r} | {min(hrs):.3f}-{max(hrs):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(rows: Sequence[Dict], out_png: Path, sizes: Dict) -> None:
    """WER and CER against labeled hours per strategy: the mean over seeds, a band from the
    lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in sorted({k[0] for k in summary}):
        pts = sorted((g["labeled_hours"], g) for (name, _), g in summary.items() if name == s)
        x = [h for h, _ in pts]
        for ax, m in zip(axes, ("wer", "cer")):
            line, = ax.plot(x, [100 * g[m] for _, g in pts], "o-", label=s)
            ax.fill_between(x, [100 * g[m + "_min"] for _, g in pts], [100 * g[m + "_max"] for _, g in pts],
                            color=line.get_color(), alpha=0.15)
    for ax, m in zip(axes, ("WER", "CER")):
        ax.set(xlabel="labeled pool audio (hours)", ylabel=f"{m} % (greedy)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"mean over {sizes['seeds']} seed(s), band = min-max; eval {sizes['eval_utterances']} "
                 f"utts ({sizes['eval_hours']:.2f} h); pool {sizes['pool_clips']} clips "
                 f"({sizes['pool_hours']:.2f} h), {sizes['round_hours']} h selected per round\n"
                 f"differences inside the bands are noise", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def simulate(config: str | Path, out: str | Path, overrides: Optional[List[str]] = None,
             progress: bool = True, only: Optional[Sequence[str]] = None) -> List[Dict]:
    """Run (or continue) the loop of ``config`` in ``out``; returns the result rows."""
    return Loop(load_loop_config(config, overrides), out).run(progress=progress, only=only)
