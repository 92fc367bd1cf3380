"""Training throughput of one process vs two data-parallel processes (torchrun, gloo) on
this machine, at the same global batch.

A small conv_rnn CTC model (recipes/english/ctc.yaml's front end and augmentation, encoder
hidden 96, 2 layers) trains one epoch on the first ``--limit`` utterances of a manifest:
- ``1proc``: one process, ``--threads`` torch threads, accum_steps 2;
- ``2proc``: two processes under torchrun (gloo), ``--threads / 2`` threads each,
  accum_steps 1;
- ``1proc1t`` (with ``--kinds``): one process on one thread, accum_steps 2 (what each
  rank of ``2proc`` has);
so every optimiser step uses the same 2 batches of up to ``--max-batch-seconds``. The figure
is the run's utterances (every rank's, from metrics.jsonl) over its training seconds (from
the trainer's report: after start-up and feature statistics, no validation). The two runs
alternate, ``--reps`` times each; medians and their ratio are printed.

    python bench/ddp_throughput.py --manifest /tmp/h1_english/train.jsonl --limit 300 --reps 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.data import read_manifest, write_manifest  # noqa: E402


def train(kind: str, manifest: Path, work: Path, threads: int, max_batch: float) -> dict:
    exp = work / f"{kind}-{len(list(work.glob(kind + '-*')))}"
    nproc = 2 if kind == "2proc" else 1
    if kind == "1proc1t":  # one process on one thread: what each of the two ranks has
        threads = 1
    sets = ["encoder.hidden_size=96", "encoder.num_layers=2", f"data.train={manifest}",
            "data.valid=''", "train.epochs=1", "train.max_minutes=null", "train.warmup_steps=10",
            f"train.max_batch_seconds={max_batch}", "train.checkpoint_every=100000",
            f"train.num_threads={threads // nproc}", f"train.accum_steps={2 // nproc}",
            "train.device=cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_port=29531", "-m", "asr", "train", "--config", "recipes/english/ctc.yaml",
           "--exp", str(exp)] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [json.loads(l) for l in open(exp / "metrics.jsonl")]
    utts = sum(sum(r["utterances_per_rank"]) for r in rows if r["kind"] == "epoch")
    return {"utterances": utts, "train_seconds": report["train_seconds"],
            "utts_per_s": utts / report["train_seconds"], "steps": report["steps"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads in all (split over processes)")
    p.add_argument("--max-batch-seconds", type=float, default=30.0)
    p.add_argument("--kinds", default="1proc,2proc", help="runs to compare, of 1proc (one "
                   "process, --threads threads), 1proc1t (one process, one thread), 2proc")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ddp_bench_"))
    manifest = write_manifest(read_manifest(a.manifest)[: a.limit], work / "train.jsonl")
    kinds = a.kinds.split(",")
    results = {k: [] for k in kinds}
    for rep in range(a.reps):
        for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
            r = train(kind, manifest, work, a.threads, a.max_batch_seconds)
            results[kind].append(r)
            print(f"rep {rep} {kind}: {r['utterances']} utts in {r['train_seconds']:.1f} s "
                  f"= {r['utts_per_s']:.2f} utt/s ({r['steps']} steps)", flush=True)
    summary = {k: {"median_utts_per_s": round(statistics.median(r["utts_per_s"] for r in v), 3),
                   "runs": [round(r["utts_per_s"], 3) for r in v],
                   "steps": v[0]["steps"], "utterances": v[0]["utterances"]}
               for k, v in results.items()}
    for k in kinds:
        if k != "2proc" and "2proc" in summary:
            summary[f"ratio_2proc_over_{k}"] = round(summary["2proc"]["median_utts_per_s"]
                                                     / summary[k]["median_utts_per_s"], 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
