"""Active-learning scoring speed on this machine: clips/s (and audio seconds/s) of each
scorer over the same pool, through the streaming pool path (audio loading, batching,
writing included; rows go to /dev/null). One JSON line per method: the median of
``--reps`` passes, the methods taking turns within each pass (a shared machine's load
then falls on all of them alike).

    python bench/al_scoring.py [--model data/models/fsdd_ctc.pt]
        [--corpus fsdd --data /work/shared/corpora/fsdd] [--clips 24] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from active_learning.pool import score_pool
from active_learning.scorers import ScoringConfig, build_scorer
from asr.checkpoint import load_model
from asr.corpora import load_corpus  # noqa: E402

# (label, method, options): the baselines, then EGL over all parameters and the head only
RUNS = [
    ("random", "random", {}),
    ("confidence", "confidence", {}),
    ("entropy", "entropy", {}),
    ("egl(all)", "egl", {"params": "all"}),
    ("egl(head)", "egl", {"params": "head"}),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="data/models/fsdd_ctc.pt")
    p.add_argument("--head", help="default: the model's first")
    p.add_argument("--corpus", default="fsdd")
    p.add_argument("--data", default="/work/shared/corpora/fsdd")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--nbest", type=int, default=4)
    p.add_argument("--beam", type=int, default=8)
    p.add_argument("--batch-seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _, cfg = load_model(args.model)
    pool = list(load_corpus(args.corpus, args.data))
    utts = pool[:: max(1, len(pool) // args.clips)][: args.clips]  # spread over the corpus
    audio = sum(u.duration for u in utts)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                      "model": args.model, "clips": len(utts), "audio_seconds": round(audio, 1),
                      "nbest": args.nbest, "beam": args.beam}))
    scorers = {label: build_scorer(model, ScoringConfig(method=method, head=args.head, nbest=args.nbest,
                                                        beam=args.beam, **options))
               for label, method, options in RUNS}
    seconds = {label: [] for label in scorers}
    for _ in range(args.reps):
        for label, scorer in scorers.items():
            with open(os.devnull, "w") as sink:
                t0 = time.perf_counter()
                counts = score_pool(scorer, utts, sink, cfg.sample_rate, args.batch_seconds, progress=False)
                seconds[label].append(time.perf_counter() - t0)
            assert counts["scored"] == len(utts), counts
    for label, times in seconds.items():
        t = statistics.median(times)
        print(json.dumps({"method": label, "clips_per_s": round(len(utts) / t, 2),
                          "audio_s_per_s": round(audio / t, 2), "seconds": round(t, 3)}))

if __name__ == "__main__":
    main()
