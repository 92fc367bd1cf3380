"""Benchmark: our pruned RNN-T loss vs torchaudio's rnnt_loss, joiner included, on the CPU.

Each (method, shape) case runs in a fresh ``multiprocessing`` *spawn* process, so peak
memory is the case's own: peak RSS (``ru_maxrss``) at the end of the case minus peak RSS
after setup (imports, parameters, inputs). Both methods use the same joiner
(``TransducerHead``: enc/dec dim -> joiner_dim -> tanh -> V) with the same seed, and the
timed step is ``joiner + loss`` forward and backward:

- ``torchaudio``: ``logits = head.join(enc, dec)`` (full ``(B, T, U+1, V)``), then
  ``torchaudio.functional.rnnt_loss(reduction="none")``, then ``loss.sum().backward()``.
- ``pruned``: ``asr.losses.pruned.pruned_rnnt_loss`` (simple loss + pruning + joiner on the
  ``(B, T, S, V)`` window), ``total.sum().backward()``.

Time is the median of ``--reps`` timed repetitions after one warm-up repetition.

    python bench/rnnt_loss.py                 # full grid (a few minutes), prints a table
    python bench/rnnt_loss.py --quick         # B=8, T=200, U=20, V in {32, 500}
    python bench/rnnt_loss.py --markdown /tmp/rnnt.md   (then paste into docs/benchmarks.md)
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _run_case(method: str, B: int, T: int, U: int, V: int, dim: int, prune_range: int, reps: int,
              threads: int, queue) -> None:
    sys.path.insert(0, REPO)
    import torch

    from asr.heads.transducer import TransducerConfig, TransducerHead
    from asr.losses.rnnt import pruned_rnnt_loss, torchaudio_rnnt_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = TransducerHead(TransducerConfig(
        vocab_size=V, enc_dim=dim, pred_dim=dim, joiner_dim=dim, loss="pruned", prune_range=prune_range,
    ))
    def inputs(B: int, T: int, U: int):
        g = torch.Generator().manual_seed(1)
        enc = torch.randn(B, T, dim, generator=g).requires_grad_(True)
        dec = torch.randn(B, U + 1, dim, generator=g).requires_grad_(True)
        targets = torch.randint(1, V, (B, U), generator=g)
        return enc, dec, targets, torch.full((B,), T), torch.full((B,), U)

    def step() -> float:  # uses the enc, dec, targets, lengths bound below
        enc.grad = dec.grad = None
        head.zero_grad(set_to_none=True)
        if method == "torchaudio":
            loss = torchaudio_rnnt_loss(head.join(enc, dec), targets, enc_lens, target_lens)
            value = loss
        else:
            out = pruned_rnnt_loss(head, enc, dec, targets, enc_lens, target_lens, prune_range=prune_range)
            loss, value = out.total, out.pruned
        loss.sum().backward()
        return float(value.detach().mean())

    # A tiny case first loads every library and kernel (torchaudio's extension, oneDNN,
    # thread pools), so the baseline below holds them and only the case's own memory counts.
    enc, dec, targets, enc_lens, target_lens = inputs(2, 8, 3)
    step()
    enc, dec, targets, enc_lens, target_lens = inputs(B, T, U)
    baseline = _maxrss_mib()
    loss_value = step()  # warm-up; also where the peak is reached
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put({
        "method": method, "B": B, "T": T, "U": U, "V": V,
        "time_s": statistics.median(times), "times_s": times,
        "peak_mib": _maxrss_mib() - baseline, "loss": loss_value,
    })


def run_case(method: str, B: int, T: int, U: int, V: int, args) -> Dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case, args=(method, B, T, U, V, args.dim, args.prune_range, args.reps,
                                               args.threads, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: check that the case is still running
            if not proc.is_alive():
                raise RuntimeError(f"case {method} B={B} T={T} U={U} V={V} failed (exit code {proc.exitcode})")
    proc.join()
    return result


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def markdown(results: List[Dict], args, command: str, load: str = "") -> str:
    import torch
    import torchaudio

    by_case: Dict[tuple, Dict[str, Dict]] = {}
    for r in results:
        by_case.setdefault((r["B"], r["T"], r["U"], r["V"]), {})[r["method"]] = r
    lines = [
        "## RNN-T loss: pruned (ours) vs torchaudio, CPU",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}, {args.threads} threads (`torch.set_num_threads({args.threads})`)",
        f"- torch {torch.__version__}, torchaudio {torchaudio.__version__}, Python {platform.python_version()}",
        f"- Command: `{command}`",
        f"- Load average (1/5/15 min) at start and end: {load} (the machine is shared with other jobs; "
        "both methods ran under the same conditions, cases interleaved).",
        f"- Joiner: enc/dec dim {args.dim} -> joiner {args.dim} -> tanh -> V (same weights for both); "
        f"pruned loss with prune_range S={args.prune_range}, simple_loss_scale=0.5. "
        "Timed: joiner + loss, forward and backward (prediction network excluded, fp32).",
        f"- Time: median of {args.reps} repetitions after one warm-up. Memory: peak RSS increase "
        "(`ru_maxrss` after the case minus `ru_maxrss` after setup) in a fresh spawned process per "
        "case, so it counts everything the step allocates (logits, activations, gradients, the "
        "loss's own buffers), not just tensors.",
        "- Loss: mean per-utterance loss of each method (pruned: the pruned term only; with "
        "random weights it is close to, and never below, the full loss).",
        "",
        "| B | T | U | V | torchaudio time (s) | pruned time (s) | time ratio (pruned/ta) "
        "| torchaudio peak (MiB) | pruned peak (MiB) | memory ratio (pruned/ta) | loss ta / pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (B, T, U, V), m in sorted(by_case.items(), key=lambda kv: (kv[0][3], kv[0][0], kv[0][1], kv[0][2])):
        ta, pr = m.get("torchaudio"), m.get("pruned")
        cell = lambda r, k, f: (f % r[k]) if r else "-"  # noqa: E731
        t_ratio = f"{pr['time_s'] / ta['time_s']:.3f}" if ta and pr else "-"
        m_ratio = f"{pr['peak_mib'] / max(ta['peak_mib'], 1e-9):.3f}" if ta and pr else "-"
        losses = f"{ta['loss']:.2f} / {pr['loss']:.2f}" if ta and pr else "-"
        lines.append(
            f"| {B} | {T} | {U} | {V} | {cell(ta, 'time_s', '%.3f')} | {cell(pr, 'time_s', '%.3f')} | {t_ratio} "
            f"| {cell(ta, 'peak_mib', '%.0f')} | {cell(pr, 'peak_mib', '%.0f')} | {m_ratio} | {losses} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--labels", type=int, nargs="+", default=[20, 80])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32, 500])
    parser.add_argument("--methods", nargs="+", default=["torchaudio", "pruned"], choices=["torchaudio", "pruned"])
    parser.add_argument("--quick", action="store_true", help="only B=8, T=200, U=20 (V as given)")
    parser.add_argument("--dim", type=int, default=256, help="enc/dec/joiner dim")
    parser.add_argument("--prune-range", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="write the results section to this file")
    parser.add_argument("--json", help="write raw results (JSON lines) to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.frames, args.labels = [8], [200], [20]
    command = "python bench/rnnt_loss.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    for B, T, U, V in itertools.product(args.batch, args.frames, args.labels, args.vocab):
        for method in args.methods:  # sequential: one case in memory at a time
            r = run_case(method, B, T, U, V, args)
            results.append(r)
            print(json.dumps(r), flush=True)
    load = f"{load_start} -> " + "/".join(f"{x:.1f}" for x in os.getloadavg())
    text = markdown(results, args, command.strip(), load)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
