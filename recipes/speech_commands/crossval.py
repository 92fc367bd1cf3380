"""K-fold cross-validation by speaker for the Speech Commands recipe, configurations in
parallel processes.

The recipe's validation split has 7 speakers (135 clips, one clip = 0.74 points), too few
to choose between configurations that differ by a point. This pools the training and
validation speakers (the test speakers stay out), splits them into K folds by speaker,
and trains one model per (variant, fold) with the other folds' speakers plus the
synthetic and extra ``_unknown_`` clips; each fold's held-out speakers are scored after
every epoch. The figure of merit is the held-out accuracy pooled over the folds (every
non-test clip is held out once), averaged over each run's last 10 epochs.

    # prepared data (after the recipe's prepare and synth stages)
    python -m recipes.speech_commands.crossval run --prepared exp/speech_commands \\
        --out exp/sc_cv --folds 4 --jobs 16 \\
        --variant base= --variant "logmel=features.kind=logmel" \\
        --variant "unknown3=train.class_weights={_unknown_: 3.0}" -o train.max_minutes=8
    # move the prepared data to another machine as one FLAC file plus an index
    python -m recipes.speech_commands.crossval pack --prepared exp/speech_commands --pack DIR
    python -m recipes.speech_commands.crossval run --pack DIR ...

A variant is ``name=override;override`` (``section.key=value``, values in YAML). Every
run uses one thread; give each the same ``train.max_minutes`` when the machine is shared,
so that all schedules end annealed under the same budget. The clips reach the worker
processes through shared memory: /dev/shm must hold them all (in docker, ``--shm-size``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from recipes.speech_commands.run import add_data_options

log = logging.getLogger("recipes.speech_commands.crossval")
HERE = Path(__file__).resolve().parent
ROLES = ("speakers", "extra", "synth")  # cross-validated pool; always-in-training extras
LAST_EPOCHS = 10


def fold_of(key: str, folds: int) -> int:
    """Fold index of a speaker (or of a file, for clips without a speaker): SHA-1 based,
    so stable across machines, and salted to be independent of the recipe's split."""
    return int(hashlib.sha1(f"fold:{key}".encode("utf-8")).hexdigest(), 16) % folds


def clip_key(clip) -> str:
    return clip.speaker or Path(clip.path).stem


# ----------------------------------------------------------------------------- data
def load_prepared(prepared: str | Path, cfg, unknown_speech: int = 0, background_noise: int = 0,
                  command_words: int = 0) -> Tuple[Dict[str, list], list]:
    """The recipe's prepared data: ({role: clips}, noise waves). ``speakers`` holds the
    training and validation speakers' real clips, ``extra`` the FSDD / not-wake-word
    ``_unknown_`` clips (and the recipe's ``--unknown-speech`` / ``--background-noise`` /
    ``--command-words`` clips), ``synth`` the synthetic ones."""
    from kws.data import read_manifest
    from recipes.speech_commands.run import training_data

    prepared = Path(prepared)
    shared = Path(cfg.data.corpus_dir or "../shared/corpora/speech_commands").resolve().parent
    clips, val, noise = training_data(cfg, prepared, shared, unknown_speech=unknown_speech,
                                      background_noise=background_noise, command_words=command_words)
    speaker_files = {e["audio"] for e in read_manifest(prepared / "train.jsonl")}
    roles: Dict[str, list] = {r: [] for r in ROLES}
    for c in clips:
        if c.source == "synthetic":
            roles["synth"].append(c)
        elif c.path in speaker_files:
            roles["speakers"].append(c)
        else:
            roles["extra"].append(c)
    roles["speakers"] += val
    return roles, noise.waves


def write_pack(roles: Dict[str, list], noise: Sequence, pack_dir: str | Path, sample_rate: int = 16000) -> dict:
    """All clips and noise as one 16-bit FLAC file (``audio.flac``, concatenated) plus
    ``index.json`` (offsets, labels, speakers, word locations). Lossless for 16-bit
    sources; float audio (resampled clips) is rounded to 16 bits."""
    import numpy as np
    import soundfile as sf

    pack_dir = Path(pack_dir)
    pack_dir.mkdir(parents=True, exist_ok=True)
    items, pieces, offset = [], [], 0
    for role in ROLES:
        for c in roles[role]:
            n = c.wave.numel()
            items.append({"role": role, "offset": offset, "length": n, "label": c.label, "source": c.source,
                          "path": c.path, "speaker": c.speaker, "focus": list(c.focus) if c.focus else None})
            pieces.append(c.wave.numpy())
            offset += n
    for k, w in enumerate(noise):
        items.append({"role": "noise", "offset": offset, "length": w.numel(), "path": f"noise{k}"})
        pieces.append(w.numpy())
        offset += w.numel()
    audio = np.clip(np.concatenate(pieces), -1.0, 32767 / 32768)
    sf.write(pack_dir / "audio.flac", audio, sample_rate, subtype="PCM_16")
    with open(pack_dir / "index.json", "w") as f:
        json.dump({"sample_rate": sample_rate, "items": items}, f)
    return {r: sum(1 for i in items if i["role"] == r) for r in (*ROLES, "noise")}


def read_pack(pack_dir: str | Path) -> Tuple[Dict[str, list], list, int]:
    """Inverse of :func:`write_pack`: ({role: clips}, noise waves, sample rate)."""
    import soundfile as sf
    import torch

    from kws.data import Clip

    pack_dir = Path(pack_dir)
    try:
        index = json.loads((pack_dir / "index.json").read_text())
        audio, sr = sf.read(pack_dir / "audio.flac", dtype="float32")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{pack_dir}: not a readable pack ({exc})") from None
    if sr != index["sample_rate"]:
        raise ValueError(f"{pack_dir}/audio.flac: {sr} Hz, index says {index['sample_rate']}")
    audio = torch.from_numpy(audio)
    roles: Dict[str, list] = {r: [] for r in ROLES}
    noise = []
    for it in index["items"]:
        end = it["offset"] + it["length"]
        if end > audio.numel():
            raise ValueError(f"{pack_dir}/audio.flac: truncated ({it['path']} ends past the audio)")
        wave = audio[it["offset"]:end].clone()
        if it["role"] == "noise":
            noise.append(wave)
        else:
            focus = tuple(it["focus"]) if it["focus"] else None
            roles[it["role"]].append(Clip(wave, it["label"], it["source"], it["path"], it["speaker"], focus))
    return roles, noise, sr


# ----------------------------------------------------------------------------- runs
_DATA: dict = {}  # this worker's clips and noise, set by _init_worker


def share_data(roles: Dict[str, list], noise: Sequence) -> tuple:
    """(flat, index): every wave (pitch variants included) in one flat float tensor (N,)
    in shared memory, and the clips with (start, end) spans of it in place of their waves.

    Workers are not forked from this process (a fork while torch's or tqdm's threads
    hold a lock can leave the child waiting on it forever), so the data has to be sent to
    them: as one shared tensor it is mapped, not copied per worker, and takes one file
    descriptor, not one per clip."""
    import dataclasses

    import torch

    pieces: list = []
    offset = 0

    def span(wave) -> Tuple[int, int]:
        nonlocal offset
        pieces.append(wave.reshape(-1).float())
        offset += wave.numel()
        return offset - wave.numel(), offset

    index = {"roles": {r: [dataclasses.replace(c, wave=span(c.wave), variants=[span(v) for v in c.variants])
                           for c in roles[r]] for r in ROLES},
             "noise": [span(w) for w in noise]}
    flat = torch.cat(pieces) if pieces else torch.zeros(0)
    need, free = flat.numel() * flat.element_size(), shm_free_bytes()
    if free is not None and free < need:  # else a bus error in the middle of the copy
        raise RuntimeError(f"cross-validation shares {need / 2**20:.0f} MB of audio through /dev/shm, which "
                           f"has {free / 2**20:.0f} MB free (in docker: --shm-size)")
    return flat.share_memory_(), index


def shm_free_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _init_worker(flat, index: dict) -> None:
    """Pool initializer: rebuild the clips and noise of :func:`share_data` as views of the
    shared tensor (nothing in training writes to a clip's wave)."""
    import dataclasses

    def view(s: Tuple[int, int]):
        return flat[s[0]:s[1]]

    _DATA["roles"] = {r: [dataclasses.replace(c, wave=view(c.wave), variants=[view(v) for v in c.variants])
                          for c in clips] for r, clips in index["roles"].items()}
    _DATA["noise"] = [view(s) for s in index["noise"]]


def _run_one(task: dict) -> dict:
    """One (variant, fold) training, in a worker process, its output in ``log.txt``."""
    import torch

    from kws.config import load_kws_config
    from kws.data import NoiseBank
    from kws.train import train

    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "w")
    os.dup2(logf.fileno(), 1)
    os.dup2(logf.fileno(), 2)
    sys.stdout = sys.stderr = logf
    logging.basicConfig(level=logging.INFO, stream=logf, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    cfg = load_kws_config(task["config"], task["overrides"])
    cfg.train.num_threads = 1
    k, fold = task["folds"], task["fold"]
    pool = _DATA["roles"]["speakers"]
    held = [c for c in pool if fold_of(clip_key(c), k) == fold]
    training = ([c for c in pool if fold_of(clip_key(c), k) != fold]
                + _DATA["roles"]["extra"] + _DATA["roles"]["synth"])
    noise = NoiseBank(_DATA["noise"], cfg.augment.colored_noise_prob)
    t0 = time.time()
    try:
        summary = train(cfg, training, held, out, noise)
    except Exception as exc:  # reported in the results, the other runs go on
        log.exception("run failed")
        return {**task, "error": f"{type(exc).__name__}: {exc}"}
    history = json.loads((out / "history.json").read_text())
    return {**task, "summary": summary, "history": history, "held_clips": len(held),
            "minutes": (time.time() - t0) / 60}


def pooled(results: Sequence[dict], labels: Sequence[str], last: int = LAST_EPOCHS) -> dict:
    """Pool one variant's fold results: held-out accuracy over all folds' clips, per
    epoch counted from each run's end, its mean over the last ``last`` epochs, the
    balanced and per-class accuracies at the last epoch."""
    runs = [r for r in results if "history" in r]
    if not runs:
        return {"error": "; ".join(r.get("error", "?") for r in results)}
    depth = min(len(r["history"]) for r in runs)
    per_epoch = []
    for back in range(depth, 0, -1):  # aligned at the end: the runs may differ in epochs under a clock
        rows = [r["history"][-back] for r in runs]
        correct = sum(sum(h["val_class_correct"]) for h in rows)
        total = sum(sum(h["val_class_n"]) for h in rows)
        per_epoch.append(correct / max(1, total))
    rows = [r["history"][-1] for r in runs]
    class_correct = [sum(h["val_class_correct"][k] for h in rows) for k in range(len(labels))]
    class_n = [sum(h["val_class_n"][k] for h in rows) for k in range(len(labels))]
    per_class = {lab: (c / n if n else None) for lab, c, n in zip(labels, class_correct, class_n)}
    present = [v for v in per_class.values() if v is not None]
    tail = per_epoch[-last:]
    return {"accuracy_last_epochs": sum(tail) / len(tail), "accuracy_last_epoch": per_epoch[-1],
            "balanced_accuracy_last_epoch": sum(present) / max(1, len(present)),
            "per_class_last_epoch": per_class, "clips": sum(class_n), "folds": len(runs),
            "failed_folds": len(results) - len(runs),
            "per_fold_last_epochs": {r["fold"]: sum(h["val_accuracy"] for h in r["history"][-last:])
                                     / len(r["history"][-last:]) for r in runs},
            "epochs_run": [len(r["history"]) for r in runs], "minutes": [round(r["minutes"], 1) for r in runs],
            "per_epoch_from_end": per_epoch}


def parse_variant(text: str) -> Tuple[str, List[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ValueError(f"variant {text!r} must look like name=section.key=value;... (or name= for none)")
    return name, [o.strip() for o in rest.split(";") if o.strip()]


def cross_validate(config: str, variants: Dict[str, List[str]], roles: Dict[str, list], noise: list,
                   out_dir: str | Path, folds: int = 4, jobs: int = 4, overrides: Sequence[str] = ()) -> dict:
    """Train every (variant, fold) in ``jobs`` processes; returns {variant: pooled figures}."""
    from tqdm import tqdm

    from kws.config import load_kws_config

    out_dir = Path(out_dir)
    labels = load_kws_config(config, list(overrides)).labels
    keys = {clip_key(c) for c in roles["speakers"]}
    if len({fold_of(k, folds) for k in keys}) < folds:
        raise ValueError(f"{len(keys)} speakers do not fill {folds} folds")
    flat, index = share_data(roles, noise)
    tasks = [{"variant": v, "fold": f, "folds": folds, "config": config,
              "overrides": list(overrides) + ov, "out": str(out_dir / v / f"fold{f}")}
             for v, ov in variants.items() for f in range(folds)]
    results: List[dict] = []
    # not fork: maxtasksperchild makes the pool's thread fork new workers while the main
    # thread may hold tqdm's lock, and a forked child then waits on it forever. The fork
    # server is a fresh process that imports torch once (and holds no lock), so a worker
    # starts without seconds of imports. Not this project's modules: Python 3.11's server
    # imports them before it takes the parent's sys.path (from an installed copy, say).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "matplotlib.pyplot"])
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(flat, index), maxtasksperchild=1) as pool:
        for r in tqdm(pool.imap_unordered(_run_one, tasks), total=len(tasks), desc="cross-validation runs"):
            results.append(r)
            log.info("%s fold %d: %s", r["variant"], r["fold"], r.get("error") or
                     f"{len(r['history'])} epochs, last held-out acc {r['history'][-1]['val_accuracy']:.3f}")
        pool.close()  # a clean exit, not the context manager's terminate()
        pool.join()
    report = {v: pooled([r for r in results if r["variant"] == v], labels) for v in variants}
    report = {"folds": folds, "speakers": len(keys), "variants": variants, "overrides": list(overrides),
              "results": report}
    with open(out_dir / "crossval.json", "w") as f:
        json.dump(report, f, indent=1)
    plot_crossval(report, out_dir / "crossval.png")
    return report


def plot_crossval(report: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, r in report["results"].items():
        if "per_epoch_from_end" in r:
            curve = r["per_epoch_from_end"]
            ax.plot(range(-len(curve) + 1, 1), curve, label=f"{name} ({r['accuracy_last_epochs']:.3f})")
    ax.set_xlabel("epoch, counted from each run's last")
    ax.set_ylabel("held-out accuracy, pooled over folds")
    ax.set_title(f"{report['folds']}-fold cross-validation by speaker ({report['speakers']} speakers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="write the prepared data as one FLAC file plus an index")
    pk.add_argument("--prepared", default="exp/speech_commands")
    pk.add_argument("--pack", required=True)
    pk.add_argument("--config", default=str(HERE / "conf" / "crnn.yaml"))
    add_data_options(pk)
    rn = sub.add_parser("run", help="cross-validate variants of a configuration")
    src = rn.add_mutually_exclusive_group(required=True)
    src.add_argument("--prepared", help="the recipe's --out folder (after prepare and synth)")
    src.add_argument("--pack", help="a folder written by the pack command")
    rn.add_argument("--config", default=str(HERE / "conf" / "crnn.yaml"))
    add_data_options(rn)  # with --prepared; a pack holds what it was packed with
    rn.add_argument("--out", required=True)
    rn.add_argument("--folds", type=int, default=4)
    rn.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    rn.add_argument("--variant", action="append", default=[], help="name=section.key=value;... (repeatable)")
    rn.add_argument("-o", "--override", action="append", default=[], help="section.key=value for every variant")
    args = p.parse_args(argv)
    if getattr(args, "pack", None) and args.command == "run" and (args.unknown_speech or args.background_noise
                                                          or args.command_words):
        p.error("--unknown-speech / --background-noise / --command-words go with --prepared (or when the pack is written)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from kws.config import load_kws_config
    from kws.data import add_pitch_variants

    torch.set_num_threads(1)
    cfg = load_kws_config(args.config, getattr(args, "override", []))
    if args.command == "pack":
        cfg.data.corpus_dir = cfg.data.corpus_dir or "../shared/corpora/speech_commands"
        roles, noise = load_prepared(args.prepared, cfg, args.unknown_speech, args.background_noise,
                                     args.command_words)
        print(json.dumps({"pack": write_pack(roles, noise, args.pack, cfg.features.sample_rate)}))
        return 0
    if args.pack:
        roles, noise, _ = read_pack(args.pack)
    else:
        roles, noise = load_prepared(args.prepared, cfg, args.unknown_speech, args.background_noise,
                                     args.command_words)
    add_pitch_variants(roles["speakers"] + roles["extra"], cfg.augment.pitch_semitones,
                       cfg.features.sample_rate, jobs=args.jobs)
    variants = dict(parse_variant(v) for v in args.variant) or {"base": []}
    report = cross_validate(args.config, variants, roles, noise, args.out, args.folds, args.jobs, args.override)
    for name, r in report["results"].items():
        print(json.dumps({"variant": name, **{k: r.get(k) for k in (
            "accuracy_last_epochs", "accuracy_last_epoch", "balanced_accuracy_last_epoch", "clips",
            "failed_folds", "epochs_run", "error")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
