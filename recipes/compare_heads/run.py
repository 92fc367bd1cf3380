"""Compare the three heads (CTC, RNN-T, attention) on shared encoders, with and without an LM.

    python -m recipes.compare_heads.run --corpus synth --out exp/compare_heads/synth
    python -m recipes.compare_heads.run --corpus english --out exp/compare_heads/english
    python -m recipes.compare_heads.run --corpus manifest --config C --train T --valid V \\
        --eval NAME=PATH --lm-texts T --out DIR                  # any prepared manifests

One model per encoder variant (``variants`` of the config: fields of ``encoder`` changed
from the base) is trained with all three heads on its encoder (their loss weights in
``model.heads``), on the config's step budget (``train.max_steps``). Then every head of
every model is decoded on every evaluation set by its beam search, without and with
shallow fusion of a char n-gram LM built from the training text:

    ctc         ctc_prefix_beam
    transducer  transducer_beam
    attention   attention_beam

Writes ``<out>/results.json`` (every cell: WER, CER, RTF, utterances; every model: its
training steps, minutes, parameters), ``<out>/results.md`` (a table per evaluation set:
rows variant x head, columns no LM / LM) and ``<out>/results.png`` (bar charts).

Resumable: a variant whose ``model.pt`` exists is not trained again (an unfinished one
continues from its ``last.pt``), and a decoding whose ``cells/*.json`` exists is skipped.
``--variants`` runs some variants only (several processes can share an ``--out``, one per
variant); ``--report`` writes the results of what is finished, training and decoding nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from asr.checkpoint import load_model
from asr.config import ExperimentConfig, apply_overrides, from_dict
from asr.data import read_manifest
from asr.decoding import load_lm
from asr.evaluate import evaluate_model

HERE = Path(__file__).resolve().parent
HEADS = ("ctc", "transducer", "attention")
SEARCH = {"ctc": "ctc_prefix_beam", "transducer": "transducer_beam", "attention": "attention_beam"}
LM_CONDITIONS = ("no_lm", "lm")

log = logging.getLogger("compare_heads")


@dataclass
class DecodeConfig:
    beam: int = 8
    lm_kind: str = "char"
    lm_order: int = 8
    lm_weight: float = 0.5  # every head's shallow-fusion weight
    length_bonus: float = 1.0  # per label, with the LM only
    ctc_token_prune: int = 16  # prefix beam: the top tokens tried per frame
    max_utts: int = 150  # the first utterances of each evaluation set


@dataclass
class CompareConfig:
    model: ExperimentConfig = field(default_factory=ExperimentConfig)
    # variant name -> encoder fields changed from model.encoder
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load_compare_config(path: str | Path, overrides: Optional[List[str]] = None) -> CompareConfig:
    """Read the YAML; ``overrides`` are ``section.key=value`` (e.g. ``model.train.max_minutes=1``)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    cfg = from_dict(CompareConfig, apply_overrides(data, overrides), where=str(path))
    if not cfg.variants:
        raise ValueError(f"{path}: no variants")
    missing = [h for h in HEADS if h not in cfg.model.heads]
    if missing:
        raise ValueError(f"{path}: model.heads lacks {missing}; the comparison needs all of {HEADS}")
    for name, fields in cfg.variants.items():
        known = {f.name for f in dataclasses.fields(cfg.model.encoder)}
        if set(fields) - known:
            raise ValueError(f"{path}: variant {name!r} sets unknown encoder fields "
                             f"{sorted(set(fields) - known)}")
    return cfg


def variant_config(cfg: CompareConfig, name: str, train: Path, valid: Optional[Path]) -> ExperimentConfig:
    """The model config of one variant, with its data."""
    m = cfg.model
    enc = from_dict(type(m.encoder), {**dataclasses.asdict(m.encoder), **cfg.variants[name]},
                    where=f"variants.{name}")
    data = dataclasses.replace(m.data, train=str(train), valid=str(valid) if valid else "")
    return dataclasses.replace(m, name=f"{m.name}_{name}", encoder=enc, data=data)


# ------------------------------------------------------------------ corpora
@dataclass
class Corpus:
    train: Path
    valid: Optional[Path]
    evals: Dict[str, Path]  # evaluation set name -> manifest
    lm_texts: Path  # one sentence a line, or a manifest
    describe: str


def prepare_corpus(args) -> Corpus:
    if args.corpus == "synth":
        from recipes.synth.generate import generate

        m = generate(args.out / "corpus", size=args.size, jobs=args.jobs, progress=False)
        return Corpus(m["train"], m["dev"], {"synth_test": m["test"]}, m["train"],
                      f"synthetic corpus, size {args.size!r}; scored on the held-out test voices")
    if args.corpus == "english":
        from recipes.english.prepare import prepare

        d = args.out / "data"
        if not (d / "summary.json").is_file():
            prepare(args.corpora, d)
        return Corpus(d / "train.jsonl", d / "dev_speechocean762.jsonl",
                      {"an4_dev": d / "dev_an4.jsonl",
                       "speechocean762_dev": d / "dev_speechocean762.jsonl"},
                      d / "lm_texts.txt", "every real corpus (recipes/english); scored on dev speakers")
    if not (args.train and args.eval):
        raise SystemExit("--corpus manifest needs --train and at least one --eval NAME=PATH")
    evals = dict(e.split("=", 1) for e in args.eval)
    return Corpus(Path(args.train), Path(args.valid) if args.valid else None,
                  {k: Path(v) for k, v in evals.items()},
                  Path(args.lm_texts) if args.lm_texts else Path(args.train), "given manifests")


def hours(path: Path) -> Dict[str, float]:
    utts = read_manifest(path)
    return {"utterances": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 3)}


# ------------------------------------------------------------------ stages
def train_variant(cfg: CompareConfig, name: str, corpus: Corpus, out: Path) -> Dict:
    """Train (or resume, or skip when finished) one variant; returns its training record."""
    from asr.train import Trainer

    exp = out / name
    record_path = exp / "train.json"
    if (exp / "model.pt").is_file() and record_path.is_file():
        log.info("%s: trained already, skipped", name)
        return json.loads(record_path.read_text())
    vcfg = variant_config(cfg, name, corpus.train, corpus.valid)
    t0, cpu0 = time.time(), time.process_time()
    result = Trainer(vcfg, exp).fit()
    model, _, _ = load_model(result.model_path)
    record = {"variant": name, "encoder": cfg.variants[name], "steps": result.steps,
              "train_minutes": round(result.train_seconds / 60, 2),
              "wall_minutes_this_run": round((time.time() - t0) / 60, 2),
              # with a step budget (max_steps) the CPU minutes show what the steps cost; with
              # a time budget (max_minutes), the compute it bought on a loaded machine
              "cpu_minutes_this_run": round((time.process_time() - cpu0) / 60, 2),
              "utterances_trained_this_run": result.utterances,
              "max_minutes": vcfg.train.max_minutes,
              "parameters": {"encoder": sum(p.numel() for p in model.encoder.parameters()),
                             **{h: sum(p.numel() for p in model.heads[h].parameters())
                                for h in model.heads}}}
    _write_json(record_path, record)
    return record


def decode_variant(cfg: CompareConfig, name: str, corpus: Corpus, out: Path,
                   report_only: bool = False) -> List[Dict]:
    """Every (evaluation set, head, LM condition) cell of one variant; finished ones are
    read (``report_only``: only those)."""
    exp = out / name
    cells, todo = [], []
    for set_name in corpus.evals:
        for head in HEADS:
            for cond in LM_CONDITIONS:
                path = exp / "cells" / f"{set_name}.{head}.{cond}.json"
                if path.is_file():
                    cells.append(json.loads(path.read_text()))
                else:
                    todo.append((set_name, head, cond, path))
    if report_only:
        return cells
    if not todo:
        log.info("%s: decoded already, skipped", name)
        return cells
    model, tokenizer, _ = load_model(exp / "model.pt")
    model.eval()
    d = cfg.decode
    lm = load_lm(d.lm_kind, corpus.lm_texts, d.lm_order, tokenizer)
    for set_name, head, cond, path in todo:
        utts = read_manifest(corpus.evals[set_name])[: d.max_utts]
        options: Dict[str, Any] = {"beam": d.beam}
        if head == "ctc":
            options["token_prune"] = d.ctc_token_prune
        if cond == "lm":
            options.update(lm_score=lm, lm_weight=d.lm_weight, length_bonus=d.length_bonus)
        t0, cpu0 = time.time(), time.process_time()
        m = evaluate_model(model, tokenizer, utts, head=head, method=SEARCH[head],
                           results_path=exp / "decodes" / f"{set_name}.{head}.{cond}.jsonl",
                           **options)
        cell = {"variant": name, "set": set_name, "head": head, "lm": cond == "lm",
                "search": SEARCH[head], "beam": d.beam, "wer": m["wer"], "cer": m["cer"],
                "utterances": m["utterances"], "rtf": m["rtf"],
                "decode_seconds": round(time.time() - t0, 1),
                "decode_cpu_seconds": round(time.process_time() - cpu0, 1)}
        if cond == "lm":
            cell.update(lm_weight=d.lm_weight, length_bonus=d.length_bonus, lm_order=d.lm_order)
        _write_json(path, cell)
        log.info("%s %s %s %s: WER %.1f%%", name, set_name, head, cond, 100 * m["wer"])
        cells.append(cell)
    return cells


def _write_json(path: Path, data: Any) -> None:
    """Atomically, so a killed run never leaves a half-written (finished-looking) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------ reports
def markdown_table(results: Dict) -> str:
    """One table per evaluation set: rows variant x head, columns WER without / with the LM."""
    by_key = {(c["set"], c["variant"], c["head"], c["lm"]): c for c in results["cells"]}
    lines = []
    for set_name in results["eval_sets"]:
        info = results["eval_sets"][set_name]
        lines += [f"**{set_name}** ({info['scored']} utterances scored), WER:", "",
                  "| variant | head | no LM | LM | LM gain |", "|---|---|---|---|---|"]
        for v in results["variants"]:
            for h in HEADS:
                a, b = (by_key.get((set_name, v, h, lm), {}).get("wer") for lm in (False, True))
                if a is None or b is None:  # a --report of unfinished runs
                    cell = lambda w: "not decoded yet" if w is None else f"{100 * w:.1f}%"
                    lines.append(f"| {v} | {h} | {cell(a)} | {cell(b)} | - |")
                    continue
                gain = f"{100 * (a - b) / a:+.0f}% rel." if a > 0 else "-"
                lines.append(f"| {v} | {h} | {100 * a:.1f}% | {100 * b:.1f}% | {gain} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: Dict, out_png: Path) -> None:
    """Grouped bars: per evaluation set, per variant, each head without (hatched) / with the LM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets, variants = list(results["eval_sets"]), results["variants"]
    by_key = {(c["set"], c["variant"], c["head"], c["lm"]): c["wer"] for c in results["cells"]}
    colors = {"ctc": "tab:blue", "transducer": "tab:orange", "attention": "tab:green"}
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.2), squeeze=False)
    width = 0.13
    for ax, s in zip(axes[0], sets):
        for i, h in enumerate(HEADS):
            for j, lm in enumerate((False, True)):
                k = 2 * i + j
                xs = [x + (k - 2.5) * width for x in range(len(variants))]
                ys = [100 * by_key.get((s, v, h, lm), float("nan")) for v in variants]
                ax.bar(xs, ys, width, color=colors[h], hatch=None if lm else "//",
                       alpha=1.0 if lm else 0.55, edgecolor="black", linewidth=0.4,
                       label=f"{h} {'+ LM' if lm else 'no LM'}")
        ax.set_xticks(range(len(variants)), variants)
        ax.set_ylabel("WER (%)")
        ax.set_title(f"{results['corpus']}: {s} ({results['eval_sets'][s]['scored']} utts)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main
def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", choices=("synth", "english", "manifest"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, help="default: recipes/compare_heads/<corpus>.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. model.train.max_minutes=1")
    p.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    p.add_argument("--report", action="store_true",
                   help="train and decode nothing: write the results of what is finished")
    p.add_argument("--size", default="default", help="synth: corpus size (tiny, small, default)")
    p.add_argument("--jobs", type=int, default=2, help="synth: synthesis processes")
    p.add_argument("--corpora", type=Path, default=Path("../shared/corpora"), help="english: the corpora")
    p.add_argument("--train", help="manifest: training manifest")
    p.add_argument("--valid", help="manifest: validation manifest")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH",
                   help="manifest: an evaluation set (repeatable)")
    p.add_argument("--lm-texts", help="manifest: LM text (default: the training transcripts)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    config = args.config or HERE / f"{args.corpus}.yaml"
    cfg = load_compare_config(config, args.set)
    variants = args.variants or list(cfg.variants)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(args)
    if not args.report:
        (args.out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    if args.report:
        variants = [v for v in variants if (args.out / v / "train.json").is_file()]
        trained = {v: json.loads((args.out / v / "train.json").read_text()) for v in variants}
    else:
        trained = {v: train_variant(cfg, v, corpus, args.out) for v in variants}
    cells = [c for v in variants for c in decode_variant(cfg, v, corpus, args.out, args.report)]
    results = {
        "corpus": args.corpus, "corpus_description": corpus.describe, "config": str(config),
        "overrides": args.set, "variants": variants,
        "data": {"train": hours(corpus.train), "valid": hours(corpus.valid) if corpus.valid else None},
        "eval_sets": {k: {**hours(v), "scored": min(cfg.decode.max_utts, len(read_manifest(v))),
                          "manifest": str(v)} for k, v in corpus.evals.items()},
        "decode": dataclasses.asdict(cfg.decode), "training": trained, "cells": cells,
    }
    _write_json(args.out / "results.json", results)
    (args.out / "results.md").write_text(markdown_table(results))
    plot(results, args.out / "results.png")
    print(markdown_table(results), flush=True)
    return results


if __name__ == "__main__":
    main()
