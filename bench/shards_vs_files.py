"""Data loading throughput: tar shards (asr/shards.py) vs loose audio files, same utterances.

Both sides do what the trainer does with a batch before the model: read and decode the
audio, encode the transcripts, cut duration-bucketed batches of ``--max-batch-seconds``,
pad them (asr.data.collate) and compute the log-mel features (asr.features). Augmentation
is left out (the same cost on both sides). Files: UtteranceDataset + DurationBatchSampler
over the manifest, decoding each file (no audio cache). Shards: ShardPlan + ShardDataset
over shards written from the same manifest. Each repetition reads every utterance once per
side; the side that goes first alternates. Printed: each side's median over repetitions,
and the median of the per-repetition ratios (steadier when the machine's load moves).

    python bench/shards_vs_files.py --manifest M.jsonl --limit 1000 --shards DIR --reps 5
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from asr.data import DurationBatchSampler, UtteranceDataset, collate, read_manifest, write_manifest
from asr.features import FeatureConfig, FeatureExtractor
from asr.shards import INDEX, ShardDataset, ShardPlan, write_shards
from asr.text import CharTokenizer, normalize_text


def run(loader, features) -> tuple[int, float, float]:
    """(utterances, audio seconds, wall seconds) of one pass."""
    t0 = time.perf_counter()
    n, samples = 0, 0
    with torch.no_grad():
        for batch in loader:
            if batch is None:
                continue
            features(batch.waves, batch.wave_lens)
            n += len(batch)
            samples += int(batch.wave_lens.sum())
    return n, samples / 16000, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--shards", required=True, help="shard folder (written here if missing)")
    p.add_argument("--limit", type=int, default=1000, help="the first N usable utterances")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-batch-seconds", type=float, default=60.0)
    p.add_argument("--shard-mb", type=float, default=32.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    tok = CharTokenizer()
    utts = []
    for u in read_manifest(a.manifest):
        u.text = normalize_text(u.text)
        try:
            tok.encode(u.text)
        except ValueError:
            continue
        if u.text:
            utts.append(u)
        if len(utts) == a.limit:
            break
    shard_dir = Path(a.shards)
    if not (shard_dir / INDEX).exists():
        write_manifest(utts, shard_dir.with_suffix(".jsonl"))
        write_shards(utts, shard_dir, shard_mb=a.shard_mb)
    features = FeatureExtractor(FeatureConfig(kind="logmel", n_mels=80))

    def files_loader():
        ds = UtteranceDataset(utts, tok.encode, 16000, cache_audio=False)
        sampler = DurationBatchSampler([u.duration for u in utts], a.max_batch_seconds, seed=0)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)

    def shards_loader():
        plan = ShardPlan(shard_dir, a.max_batch_seconds, seed=0, normalize=normalize_text,
                         encode=tok.encode)
        return DataLoader(ShardDataset(tok.encode), batch_sampler=plan, collate_fn=collate)

    sides = {"files": files_loader, "shards": shards_loader}
    results = {k: [] for k in sides}
    for rep in range(a.reps):
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for name in order:
            n, secs, wall = run(sides[name](), features)
            results[name].append({"utterances": n, "audio_seconds": secs, "wall": wall})
            print(f"rep {rep} {name}: {n} utts, {secs:.0f} s audio in {wall:.2f} s "
                  f"({n / wall:.1f} utt/s)", flush=True)
    summary = {}
    for name, rows in results.items():
        wall = statistics.median(r["wall"] for r in rows)
        summary[name] = {"utterances": rows[0]["utterances"],
                         "audio_seconds": round(rows[0]["audio_seconds"], 1),
                         "median_wall_s": round(wall, 3),
                         "utts_per_s": round(rows[0]["utterances"] / wall, 1),
                         "audio_s_per_s": round(rows[0]["audio_seconds"] / wall, 1),
                         "walls": [round(r["wall"], 2) for r in rows]}
    summary["ratio_shards_over_files"] = round(
        summary["shards"]["utts_per_s"] / summary["files"]["utts_per_s"], 3)
    # on a shared machine the load moves between repetitions: the ratio within each
    # repetition (the two sides back to back) is the steadier figure
    paired = [f["wall"] / s["wall"] for f, s in zip(results["files"], results["shards"])]
    summary["paired_ratios"] = [round(r, 3) for r in paired]
    summary["median_paired_ratio"] = round(statistics.median(paired), 3)
    summary["machine"] = f"{platform.processor() or platform.machine()}, torch threads {a.threads}"
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
