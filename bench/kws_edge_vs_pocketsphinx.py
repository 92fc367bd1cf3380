"""Time the KWS edge runtime per 100 ms hop on one thread, and pocketsphinx's keyphrase
mode on the same audio, in one run.

    python bench/kws_edge_vs_pocketsphinx.py [--model data/models/computer_crnn_int8.onnx]
        [--seconds 120] [--passes 3] [--json out.json] [--plot out.png]

The audio is a stream of real speech with the keyword in it (LJSpeech + Mycroft
"computer" clips from ../shared/corpora when present, else generated noise and tones).
Every system gets the same 16-bit samples in 100 ms chunks. For the edge runtime a hop
is everything it does for 100 ms of audio: numpy features, one ONNX window, the
detector. Threads are pinned to one (OMP/MKL/OpenBLAS and onnxruntime intra-op).
pocketsphinx (``pip install pocketsphinx``, which ships its English model) runs
single-threaded anyway.

Each system is warmed up first (``--warmup-seconds`` of the audio, untimed), then the
systems take turns every ``--block`` hops (5 s), in a rotating order, over the whole
audio, ``--passes`` times: on a shared machine all see the same load. The headline is
the ratio of the mean times per hop (the time for the same audio); the ratio of the
medians is reported beside it, but compares typical hops only, which misleads when the
two distributions differ in shape (docs/benchmarks.md: it overstates the gap).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kws.edge import KWSModel, read_audio  # noqa: E402


def build_audio(seconds: float, keyword_dir: Path, speech_dir: Path, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speech = sorted(speech_dir.glob("*.flac"))[:40] if speech_dir.exists() else []
    kw = sorted(keyword_dir.glob("*.flac")) if keyword_dir.exists() else []
    parts, total = [], 0
    while total < seconds * sr:
        if speech:
            w = read_audio(str(speech[rng.integers(len(speech))]), sr)
        else:
            w = (0.05 * rng.standard_normal(3 * sr)).astype(np.float32)
        parts.append(w)
        total += w.size
        if kw:
            k = read_audio(str(kw[rng.integers(len(kw))]), sr)
            parts.append(k)
            total += k.size
    audio = np.concatenate(parts)[: int(seconds * sr)]
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


class EdgeSystem:
    """The edge runtime on one stream: a hop is everything it does for 100 ms of audio
    (numpy features, one ONNX window, the detector)."""

    def __init__(self, model_path: str, chunks: List[np.ndarray]) -> None:
        self.model = KWSModel(model_path, num_threads=1)
        self.chunks = chunks  # (hop,) float32 each
        self.stream = None

    def start(self) -> None:
        self.stream = self.model.stream()  # same session: its warm-up carries over

    def step(self, k: int) -> bool:
        return bool(self.stream.accept_waveform(self.chunks[k]))

    def stop(self) -> None:
        self.stream = None


class PocketsphinxSystem:
    """pocketsphinx keyphrase mode: ``process_raw`` + ``hyp()`` per hop, the utterance
    restarted after each detection."""

    def __init__(self, chunks: List[bytes], keyphrase: str, threshold: float) -> None:
        from pocketsphinx import Decoder

        self.dec = Decoder(keyphrase=keyphrase, kws_threshold=threshold, loglevel="FATAL")
        self.chunks = chunks  # 16-bit PCM bytes each

    def start(self) -> None:
        self.dec.start_utt()

    def step(self, k: int) -> bool:
        self.dec.process_raw(self.chunks[k], False, False)
        if self.dec.hyp() is None:
            return False
        self.dec.end_utt()
        self.dec.start_utt()
        return True

    def stop(self) -> None:
        self.dec.end_utt()


def run_interleaved(systems: Dict[str, object], hops: int, block: int, passes: int, warmup: int,
                    clock=time.perf_counter):
    """Warm every system up on the first ``warmup`` hops (untimed), then ``passes`` passes
    over all ``hops``, each system on a fresh stream. The systems take turns every
    ``block`` hops, in an order that rotates, so that all see the same machine load while
    a block is long enough to keep each one's caches its own. Returns per-hop seconds as
    {tag: [times (H,) per pass]} and the detection times of the first pass {tag: [s]}.
    ``clock``: wall time by default; ``time.thread_time`` counts this thread's CPU time
    only, which a machine crowded with other jobs distorts less."""
    for sys_ in systems.values():
        sys_.start()
        for k in range(min(warmup, hops)):
            sys_.step(k)
        sys_.stop()
    times = {tag: [] for tag in systems}
    dets: Dict[str, List[float]] = {tag: [] for tag in systems}
    tags = list(systems)
    for p in range(passes):
        for sys_ in systems.values():
            sys_.start()
        got = {tag: np.zeros(hops) for tag in tags}
        for b, first in enumerate(range(0, hops, block)):
            r = (b + p) % len(tags)
            for tag in tags[r:] + tags[:r]:
                sys_, row = systems[tag], got[tag]
                for k in range(first, min(first + block, hops)):
                    t = clock()
                    hit = sys_.step(k)
                    row[k] = clock() - t
                    if hit and p == 0:
                        dets[tag].append(k * 0.1)
        for sys_ in systems.values():
            sys_.stop()
        for tag in tags:
            times[tag].append(got[tag])
    return times, dets


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(times: np.ndarray) -> dict:
    ms = times * 1000
    return {"mean_ms": round(float(ms.mean()), 4), "median_ms": round(float(np.median(ms)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4), "hops": int(ms.size),
            "real_time_factor": round(float(times.mean() / 0.1), 5)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "data/models/computer_crnn_int8.onnx"))
    p.add_argument("--fp32-model", default=str(ROOT / "data/models/computer_crnn.onnx"))
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--keyphrase", default="computer")
    p.add_argument("--kws-threshold", type=float, default=1e-20)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="untimed audio through each system first")
    p.add_argument("--block", type=int, default=50, help="hops per turn when the systems alternate")
    p.add_argument("--json", default="")
    p.add_argument("--plot", default="")
    args = p.parse_args(argv)

    shared = Path(args.shared)
    pcm = build_audio(args.seconds, shared / "mycroft_precise" / "computer" / "en", shared / "ljspeech" / "wavs")
    hop = 1600
    result = {"audio_seconds": round(pcm.size / 16000, 2), "hop_ms": 100, "threads": 1,
              "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in os.getloadavg()],
              "python": platform.python_version()}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    audio = pcm.astype(np.float32) / 32768.0
    hops = (pcm.size - hop) // hop + 1
    systems: Dict[str, object] = {}
    for tag, path in (("edge_int8", args.model), ("edge_fp32", args.fp32_model)):
        if Path(path).exists():
            systems[tag] = EdgeSystem(path, [audio[k * hop:(k + 1) * hop] for k in range(hops)])
            result[f"{tag}_model"] = os.path.relpath(path, ROOT)
    try:
        from importlib.metadata import version

        import pocketsphinx  # noqa: F401

        systems["pocketsphinx"] = PocketsphinxSystem([pcm[k * hop:(k + 1) * hop].tobytes() for k in range(hops)],
                                                     args.keyphrase, args.kws_threshold)
        result["pocketsphinx_version"] = version("pocketsphinx")
    except ImportError:
        result["pocketsphinx"] = "not installed (pip install pocketsphinx)"
    warmup = int(round(args.warmup_seconds * 10))
    result.update(warmup_hops=warmup, block_hops=args.block, passes=args.passes)
    times, dets = run_interleaved(systems, hops, args.block, args.passes, warmup)
    runs = {}
    for tag, per_pass in times.items():
        runs[tag] = np.concatenate(per_pass)
        result[tag] = {**summary(runs[tag]), "detections": len(dets[tag]),
                       "pass_means_ms": [round(float(t.mean()) * 1000, 4) for t in per_pass]}
    if "pocketsphinx" in systems:
        result["pocketsphinx"]["mode"] = f"keyphrase '{args.keyphrase}', kws_threshold {args.kws_threshold:g}"
        ps = times["pocketsphinx"]
        for tag in ("edge_int8", "edge_fp32"):
            if tag in result:
                # headline: the ratio of the means (total time for the same audio); the
                # median ratio compares typical hops only, of differently shaped distributions
                result[f"speedup_{tag}_vs_pocketsphinx"] = round(
                    result["pocketsphinx"]["mean_ms"] / result[tag]["mean_ms"], 2)
                result[f"speedup_{tag}_vs_pocketsphinx_median"] = round(
                    result["pocketsphinx"]["median_ms"] / result[tag]["median_ms"], 2)
                result[f"speedup_{tag}_vs_pocketsphinx_per_pass"] = [
                    round(float(a.mean() / b.mean()), 2) for a, b in zip(ps, times[tag])]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]  # a shared machine shows here
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot and runs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(runs)
        ax.boxplot([runs[n] * 1000 for n in names], showfliers=False, showmeans=True)  # triangle: mean
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_yscale("log")
        ax.set_ylabel("ms per 100 ms hop (1 thread)")
        ax.set_title(f"{result['audio_seconds']:.0f} s of speech, same audio for all (triangle: mean)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
