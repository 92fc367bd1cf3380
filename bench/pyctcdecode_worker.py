"""The pyctcdecode side of bench/ctc_beam_vs_pyctcdecode.py, run by that script in its own
interpreter (pyctcdecode needs numpy<2): one JSON request a line on stdin, one JSON reply a
line on stdout.

    request: {"logits": PATH.npy, "beam": 32}
    reply:   {"text": ..., "seconds": wall, "cpu_seconds": this process's CPU time}
    request: {"quit": true}

``logits`` is a (T, V) float32 matrix of CTC log-probabilities; the timing covers
``decoder.decode`` only (the file is read before the clocks start).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--labels", required=True, help="JSON list: the label of every token id ('' = blank)")
    p.add_argument("--kenlm", help="an ARPA or binary KenLM model (optional)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=1.0)
    a = p.parse_args()
    import numpy as np
    from pyctcdecode import build_ctcdecoder

    labels = json.load(open(a.labels))
    decoder = build_ctcdecoder(labels, kenlm_model_path=a.kenlm, alpha=a.alpha, beta=a.beta)
    from importlib.metadata import version

    print(json.dumps({"ready": True, "pyctcdecode": version("pyctcdecode"), "numpy": np.__version__,
                      "kenlm": a.kenlm}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        logits = np.load(req["logits"])
        t, c = time.perf_counter(), time.process_time()
        text = decoder.decode(logits, beam_width=int(req["beam"]))
        cpu, seconds = time.process_time() - c, time.perf_counter() - t
        print(json.dumps({"text": text, "seconds": seconds, "cpu_seconds": cpu}), flush=True)


if __name__ == "__main__":
    main()
