"""Our CTC prefix beam search beside pyctcdecode's, on the same CTC outputs at equal beam:
decoding time per utterance and WER of each.

Our side computes the CTC log-probabilities of ``--model`` once per utterance and saves
them (``<work>/logits/<i>.npy``, float32 (T, V)); pyctcdecode needs numpy<2, so it runs in
its own interpreter (``--python``, e.g. a venv made with ``python -m venv /tmp/pyctc_env &&
/tmp/pyctc_env/bin/pip install pyctcdecode 'numpy<2'``) as a worker process
(``bench/pyctcdecode_worker.py``) that reads the same files. For every beam, every
utterance is decoded by both, the order alternating from one utterance to the next; each
side times only its search (the .npy is read before the clocks start), on one thread,
by two clocks: CPU time of its process (what the search costs; on a loaded machine the wall
clock mostly measures waiting for a core) and wall time. No LM on either side. Ours runs
exact (every token, every prefix within the beam: its default) and with pyctcdecode's
default pruning (``OURS``).

    python bench/ctc_beam_vs_pyctcdecode.py --model data/models/english_ctc.pt \\
        --manifest exp/english/data/dev_an4.jsonl --limit 100 --beams 16 32 64 \\
        --python /tmp/pyctc_env/bin/python --out recipes/english/bench_ctc_beam_vs_pyctcdecode.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.evaluate import score  # noqa: E402
from asr.search.ctc import ctc_prefix_beam  # noqa: E402


def save_logits(model_path: str, manifest: Path, limit: int, work: Path):
    """CTC log-probabilities (T, V) of the first ``limit`` utterances -> .npy files; returns
    (paths, references, audio seconds, labels of the token ids)."""
    model, tokenizer, cfg = load_model(model_path)
    ctc = next(name for name in model.heads if name == "ctc")
    utts = read_manifest(manifest)[:limit]
    (work / "logits").mkdir(parents=True, exist_ok=True)
    paths, refs, seconds = [], [], 0.0
    with torch.no_grad():
        for i, u in enumerate(tqdm(utts, desc="CTC outputs", dynamic_ncols=True)):
            wave = load_audio(u.audio, cfg.sample_rate, u.offset, u.duration if u.offset else None)
            enc, enc_lens = model.encode(wave[None], torch.tensor([wave.numel()]))
            lp = model.heads[ctc](enc)[0, : int(enc_lens[0])].float().numpy()  # (T, V)
            path = work / "logits" / f"{i}.npy"
            np.save(path, lp)
            paths.append(path)
            refs.append(u.text)
            seconds += wave.numel() / cfg.sample_rate
    # pyctcdecode's alphabet: "" is the blank, " " the word delimiter
    labels = ["" if i == 0 else tokenizer.token(i) for i in range(tokenizer.vocab_size)]
    return paths, refs, seconds, labels, tokenizer


class Worker:
    """pyctcdecode in its own interpreter, one request at a time."""

    def __init__(self, python: str, labels_path: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [python, str(ROOT / "bench" / "pyctcdecode_worker.py"), "--labels", str(labels_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def __call__(self, path: Path, beam: int):
        self.proc.stdin.write(json.dumps({"logits": str(path), "beam": beam}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["text"], reply["seconds"], reply["cpu_seconds"]

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


#: our search's settings: every token and prefix within the beam, or pyctcdecode's default
#: pruning (tokens below log-prob -5 skipped, the frame's best kept; prefixes more than 10
#: below the best dropped)
OURS = {"exact": {}, "pruned": {"token_min_logp": -5.0, "beam_prune_logp": 10.0}}


def ours(path: Path, beam: int, tokenizer, setting: str = "exact"):
    lp = torch.from_numpy(np.load(path))[None]  # (1, T, V)
    t, c = time.perf_counter(), time.process_time()
    res = ctc_prefix_beam(lp, torch.tensor([lp.shape[1]]), beam=beam, **OURS[setting])
    cpu, seconds = time.process_time() - c, time.perf_counter() - t
    return tokenizer.decode(res[0].best.tokens), seconds, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="data/models/english_ctc.pt")
    p.add_argument("--manifest", type=Path, default=Path("exp/english/data/dev_an4.jsonl"))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--beams", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--ours", nargs="+", default=list(OURS), choices=list(OURS),
                   help="our search's settings to run (see OURS)")
    p.add_argument("--python", default="/tmp/pyctc_env/bin/python",
                   help="an interpreter with pyctcdecode and numpy<2")
    p.add_argument("--work", type=Path, default=Path("exp/bench_pyctcdecode"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    paths, refs, audio, labels, tokenizer = save_logits(args.model, args.manifest, args.limit, args.work)
    labels_path = args.work / "labels.json"
    labels_path.write_text(json.dumps(labels))
    worker = Worker(args.python, labels_path)
    ours(paths[0], 4, tokenizer)  # warm-up
    worker(paths[0], 4)
    frames = sum(int(np.load(q, mmap_mode="r").shape[0]) for q in paths)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
               "manifest": str(args.manifest), "utterances": len(paths),
               "audio_seconds": round(audio, 1), "frames": frames, "vocabulary": len(labels),
               "threads": 1, "lm": None, "pyctcdecode": worker.info, "runs": []}
    for beam in args.beams:
        for setting in args.ours:
            sides = {"ours": [], "pyctcdecode": []}
            secs = {"ours": 0.0, "pyctcdecode": 0.0}
            cpus = {"ours": 0.0, "pyctcdecode": 0.0}
            for i, path in enumerate(tqdm(paths, desc=f"beam {beam} ours {setting}", dynamic_ncols=True)):
                order = ("ours", "pyctcdecode") if i % 2 == 0 else ("pyctcdecode", "ours")
                for side in order:
                    if side == "ours":
                        text, s, c = ours(path, beam, tokenizer, setting)
                    else:
                        text, s, c = worker(path, beam)
                    sides[side].append(text)
                    secs[side] += s
                    cpus[side] += c
            run = {"beam": beam, "ours_setting": setting, "ours_options": OURS[setting]}
            for side in sides:
                m = score(refs, sides[side])
                run[side] = {"wer": round(m["wer"], 4), "cer": round(m["cer"], 4),
                             "cpu_ms_per_utterance": round(1000 * cpus[side] / len(paths), 2),
                             "wall_ms_per_utterance": round(1000 * secs[side] / len(paths), 2),
                             "cpu_rtf": round(cpus[side] / audio, 5)}
            run["cpu_time_ratio_ours_to_pyctcdecode"] = round(cpus["ours"] / cpus["pyctcdecode"], 3)
            run["wall_time_ratio_ours_to_pyctcdecode"] = round(secs["ours"] / secs["pyctcdecode"], 3)
            run["same_text"] = sum(a == b for a, b in zip(sides["ours"], sides["pyctcdecode"]))
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            if args.out:  # after every run, so an interrupted bench keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    worker.close()
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
