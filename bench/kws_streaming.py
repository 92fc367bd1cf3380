"""Cost per second of audio of the streaming KWS detector (GRU state and convolution
context carried from hop to hop) beside the windowed one (the model over the last 1 s
every hop) and beside pocketsphinx's keyphrase search, in one run, on one thread.

    python bench/kws_streaming.py [--seconds 60] [--passes 3] [--json out.json]

Systems, all fed the same 16-bit samples in 100 ms chunks (audio as in
bench/kws_edge_vs_pocketsphinx.py: LJSpeech with Mycroft "computer" clips between):
- ``streaming``: ``data/models/jarvis_stream_crnn_int8.onnx`` (unidirectional, trained with
  the stream phase), run by ``kws.edge.StatefulKeywordStream``; without it (or with
  ``--streaming-model built``) a unidirectional CRNN of the wake-word recipe's size
  (``recipes/wake_word/conf/crnn.yaml`` with ``model.bidirectional=false``) with seeded
  random weights, exported as a streaming step and quantised to int8.
- ``windowed``: the same file through ``kws.edge.KeywordStream`` (mode "windowed").
- ``windowed_shipped``: ``data/models/jarvis_crnn_int8.onnx`` (bidirectional, windowed only,
  the same phrase).
- ``pocketsphinx``: keyphrase mode, as in bench/kws_edge_vs_pocketsphinx.py.

The cost of a hop does not depend on the weights (no data-dependent branches), only the
detections do, so a built random model's hop costs compare with a trained one's. Warm-up, interleaving (systems take turns every ``--block`` hops,
order rotating) and the headline (ratio of mean times per hop) follow
bench/kws_edge_vs_pocketsphinx.py; the default clock is the thread's CPU time
(``--clock cpu``), because elapsed time on a machine with many more runnable jobs than
cores mostly measures preemption, which falls unevenly on long and short hops.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kws.edge import KWSModel  # noqa: E402
from kws_edge_vs_pocketsphinx import (PocketsphinxSystem, build_audio, cpu_name,  # noqa: E402
                                      run_interleaved, summary)


class StreamSystem:
    """One edge stream in a given mode; a hop is all it does for 100 ms of audio."""

    def __init__(self, model: KWSModel, chunks: List[np.ndarray], mode: str) -> None:
        self.model, self.chunks, self.mode = model, chunks, mode
        self.stream = None

    def start(self) -> None:
        self.stream = self.model.stream(mode=self.mode)

    def step(self, k: int) -> bool:
        return bool(self.stream.accept_waveform(self.chunks[k]))

    def stop(self) -> None:
        self.stream = None


def streaming_model(out_dir: Path, seed: int = 0) -> Path:
    """The recipe-sized unidirectional CRNN (seeded random weights), streaming step, int8."""
    import torch

    from kws.config import load_kws_config
    from kws.export import export_streaming_onnx, quantize_int8
    from kws.model import CRNN

    torch.manual_seed(seed)
    cfg = load_kws_config(ROOT / "recipes" / "wake_word" / "conf" / "crnn.yaml",
                          ["keyword=computer", "labels=[_background_, computer]", "model.bidirectional=false"])
    m = CRNN(cfg.model, cfg.features.n_mels, len(cfg.labels)).eval()
    fp32 = export_streaming_onnx(m, cfg, out_dir / "stream.onnx")
    return quantize_int8(fp32, out_dir / "stream_int8.onnx")


DEFAULT_STREAMING_MODEL = str(ROOT / "data/models/jarvis_stream_crnn_int8.onnx")


def trained_streaming_model(arg: str) -> Path | None:
    """The --streaming-model to time, or None for the built random one ('built', or the
    default when it is missing); a named file that is missing is refused, naming it, rather
    than timed as the random model under the name of a trained one."""
    if arg in ("", "built"):
        return None
    if Path(arg).is_file():
        return Path(arg)
    if arg == DEFAULT_STREAMING_MODEL:
        return None
    raise SystemExit(f"--streaming-model {arg}: no such file (give 'built' for the random model)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streaming-model", default=DEFAULT_STREAMING_MODEL,
                   help="a streaming-step .onnx, or 'built' (see above; also used when the default is missing)")
    p.add_argument("--shipped-model", default=str(ROOT / "data/models/jarvis_crnn_int8.onnx"))
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "corpora"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument("--block", type=int, default=50)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="cpu: this thread's CPU time per hop (time.thread_time), robust to other jobs "
                        "on a crowded machine; wall: elapsed time")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    trained_path = trained_streaming_model(args.streaming_model)  # before minutes of audio building

    shared = Path(args.shared)
    pcm = build_audio(args.seconds, shared / "mycroft_precise" / "computer" / "en", shared / "ljspeech" / "wavs")
    hop = 1600
    audio = pcm.astype(np.float32) / 32768.0
    hops = (pcm.size - hop) // hop + 1
    chunks = [audio[k * hop:(k + 1) * hop] for k in range(hops)]
    tmp = Path(tempfile.mkdtemp(prefix="kws_bench_"))
    trained = trained_path is not None
    stream_path = trained_path if trained else streaming_model(tmp)
    stream_model = KWSModel(str(stream_path), num_threads=1)
    shipped = KWSModel(args.shipped_model, num_threads=1)
    import onnxruntime
    from importlib.metadata import version

    result = {"audio_seconds": round(pcm.size / 16000, 2), "hop_ms": 100, "threads": 1,
              "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in os.getloadavg()],
              "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
              "streaming_model": os.path.relpath(stream_path, ROOT) if trained else
              "recipe config, bidirectional false, seeded random weights, int8",
              "streaming_model_bytes": stream_path.stat().st_size,
              "shipped_model": os.path.relpath(args.shipped_model, ROOT)}
    systems: Dict[str, object] = {
        "streaming": StreamSystem(stream_model, chunks, "streaming"),
        "windowed": StreamSystem(stream_model, chunks, "windowed"),
        "windowed_shipped": StreamSystem(shipped, chunks, "windowed"),
        "pocketsphinx": PocketsphinxSystem([pcm[k * hop:(k + 1) * hop].tobytes() for k in range(hops)],
                                           "computer", 1e-20),
    }
    result["pocketsphinx_version"] = version("pocketsphinx")
    warmup = int(round(args.warmup_seconds * 10))
    result.update(warmup_hops=warmup, block_hops=args.block, passes=args.passes, clock=args.clock)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times, _ = run_interleaved(systems, hops, args.block, args.passes, warmup, clock=clock)
    for tag, per_pass in times.items():
        s = summary(np.concatenate(per_pass))
        s["ms_per_audio_second"] = round(s["mean_ms"] * 10, 3)
        s["pass_means_ms"] = [round(float(t.mean()) * 1000, 4) for t in per_pass]
        result[tag] = s
    base = result["streaming"]["mean_ms"]
    for tag in ("windowed", "windowed_shipped", "pocketsphinx"):
        result[f"{tag}_over_streaming"] = round(result[tag]["mean_ms"] / base, 2)
        result[f"{tag}_over_streaming_per_pass"] = [
            round(float(a.mean() / b.mean()), 2) for a, b in zip(times[tag], times["streaming"])]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
