"""Self-training speaker adaptation on a held-out-speaker fold (an experiment, not a default).

    python -m recipes.fsdd.adapt_check exp/fsdd_theo            # a folder made by run.py
    python -m recipes.fsdd.adapt_check exp/fsdd_theo --confidence 0.99

Adapts a copy of the fold's model to its held-out speaker's clips (their closed-vocabulary
hypotheses as labels, never the references; see asr/adapt.py), then decodes them with the
closed vocabulary, with and without the model's VTLN warps. Prints one JSON line: accuracy
before and after, and per round the clips kept and their mean posterior.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from asr.adapt import AdaptConfig, adapt_to_speaker
from asr.checkpoint import load_model
from asr.data import read_manifest
from asr.evaluate import evaluate_model, vocab_search


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("fold", type=Path, help="output folder of recipes.fsdd.run with --test-speakers")
    p.add_argument("--confidence", type=float, default=AdaptConfig.confidence)
    p.add_argument("--rounds", type=int, default=AdaptConfig.rounds)
    p.add_argument("--epochs", type=int, default=AdaptConfig.epochs)
    p.add_argument("--lr", type=float, default=AdaptConfig.lr)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    model, tok, cfg = load_model(a.fold / "ctc" / "model.pt")
    test = read_manifest(a.fold / "data" / "test.jsonl")
    if not cfg.decoding.vocabulary:
        raise SystemExit(f"{a.fold}: the model saves no closed vocabulary (decoding.vocabulary)")
    vocabulary = [tok.encode(w) for w in cfg.decoding.vocabulary]
    closed = {"method": vocab_search(model), "vocabulary": vocabulary}
    warps = {"warps": cfg.decoding.warps} if cfg.decoding.warps else {}
    t0 = time.time()
    out = {"fold": str(a.fold), "confidence": a.confidence,
           "before_vocab": evaluate_model(model, tok, test, **closed)["accuracy"],
           "before_default": evaluate_model(model, tok, test, **closed, **warps)["accuracy"]}
    adapted, out["rounds"] = adapt_to_speaker(
        model, tok, test, vocabulary,
        AdaptConfig(confidence=a.confidence, rounds=a.rounds, epochs=a.epochs, lr=a.lr))
    out["after_vocab"] = evaluate_model(adapted, tok, test, **closed,
                                        results_path=a.fold / "adapted_vocab.jsonl")["accuracy"]
    out["after_default"] = evaluate_model(adapted, tok, test, **closed, **warps,
                                          results_path=a.fold / "adapted_default.jsonl")["accuracy"]
    out["minutes"] = round((time.time() - t0) / 60, 2)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
