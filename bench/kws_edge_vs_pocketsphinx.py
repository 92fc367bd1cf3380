"""Time the KWS edge runtime per 100 ms hop on one thread, and pocketsphinx's keyphrase
mode on the same audio, in one run.

    python bench/kws_edge_vs_pocketsphinx.py [--model data/models/computer_crnn_int8.onnx]
        [--seconds 120] [--json out.json] [--plot out.png]

The audio is a stream of real speech with the keyword in it (LJSpeech + Mycroft
"computer" clips from ../shared/corpora when present, else generated noise and tones).
Both systems get the same 16-bit samples in 100 ms chunks. For the edge runtime a hop
is everything it does for 100 ms of audio: numpy features, one ONNX window, the
detector. Threads are pinned to one (OMP/MKL/OpenBLAS and onnxruntime intra-op).
pocketsphinx (``pip install pocketsphinx``, which ships its English model) runs
single-threaded anyway.
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


def time_edge(model_path: str, pcm: np.ndarray, hop: int, repeats: int = 1):
    model = KWSModel(model_path, num_threads=1)
    audio = pcm.astype(np.float32) / 32768.0
    times, dets = [], []
    for r in range(repeats):
        stream = model.stream()
        for i in range(0, audio.size - hop + 1, hop):
            t = time.perf_counter()
            out = stream.accept_waveform(audio[i:i + hop])
            times.append(time.perf_counter() - t)
            if r == 0:
                dets += [d.time_s for d in out]
    return np.array(times), dets


def time_pocketsphinx(pcm: np.ndarray, hop: int, keyphrase: str, threshold: float):
    from pocketsphinx import Decoder

    dec = Decoder(keyphrase=keyphrase, kws_threshold=threshold, loglevel="FATAL")
    dec.start_utt()
    times, dets = [], []
    for i in range(0, pcm.size - hop + 1, hop):
        buf = pcm[i:i + hop].tobytes()
        t = time.perf_counter()
        dec.process_raw(buf, False, False)
        hyp = dec.hyp()
        if hyp is not None:
            dec.end_utt()
            dec.start_utt()
        times.append(time.perf_counter() - t)
        if hyp is not None:
            dets.append(i / 16000)
    dec.end_utt()
    return np.array(times), dets


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
    p.add_argument("--json", default="")
    p.add_argument("--plot", default="")
    args = p.parse_args(argv)

    shared = Path(args.shared)
    pcm = build_audio(args.seconds, shared / "mycroft_precise" / "computer" / "en", shared / "ljspeech" / "wavs")
    hop = 1600
    result = {"audio_seconds": round(pcm.size / 16000, 2), "hop_ms": 100, "threads": 1,
              "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    # Warm up both, then alternate full passes over the audio (edge, pocketsphinx, edge,
    # ...) so that both see the same machine load; each pass gives a mean per hop, and
    # the best pass of each system is reported (timeit's rule: the least disturbed run).
    systems = {}
    for tag, path in (("edge_int8", args.model), ("edge_fp32", args.fp32_model)):
        if Path(path).exists():
            systems[tag] = lambda path=path: time_edge(path, pcm, hop)
    try:
        import pocketsphinx

        systems["pocketsphinx"] = lambda: time_pocketsphinx(pcm, hop, args.keyphrase, args.kws_threshold)
        result["pocketsphinx_version"] = getattr(pocketsphinx, "__version__", "5.x")
    except ImportError:
        result["pocketsphinx"] = "not installed (pip install pocketsphinx)"
    passes = {tag: [] for tag in systems}
    for rep in range(args.passes):
        for tag, fn in systems.items():
            passes[tag].append(fn())
    runs = {}
    for tag, got in passes.items():
        best = min(got, key=lambda td: float(np.mean(td[0])))
        runs[tag] = best[0]
        result[tag] = {**summary(best[0]), "detections": len(best[1]),
                       "pass_means_ms": [round(float(np.mean(t)) * 1000, 4) for t, _ in got]}
    if "pocketsphinx" in systems:
        result["pocketsphinx"]["mode"] = f"keyphrase '{args.keyphrase}', kws_threshold {args.kws_threshold:g}"
        for tag in ("edge_int8", "edge_fp32"):
            if tag in result:
                result[f"speedup_{tag}_vs_pocketsphinx"] = round(
                    result["pocketsphinx"]["mean_ms"] / result[tag]["mean_ms"], 2)
                result[f"speedup_{tag}_vs_pocketsphinx_median"] = round(
                    result["pocketsphinx"]["median_ms"] / result[tag]["median_ms"], 2)
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot and runs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(runs)
        ax.boxplot([runs[n] * 1000 for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_yscale("log")
        ax.set_ylabel("ms per 100 ms hop (1 thread)")
        ax.set_title(f"{result['audio_seconds']:.0f} s of speech, same audio for all")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
