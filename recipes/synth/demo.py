"""The main job: build the synthetic default corpus, train a CTC model on it, and print
its WER on the held-out voices as one JSON line.

    python -m recipes.synth.demo [--out exp/synth] [--size default] [--jobs 2]

Every stage is cached or resumable: the corpus is reused when its configuration is
unchanged, and training continues from ``<out>/ctc/last.pt`` if a run was killed.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

from asr.checkpoint import load_model
from asr.config import load_config
from asr.data import read_manifest
from asr.evaluate import evaluate_model, score
from asr.lm import NgramLM
from asr.text import normalize_text
from asr.train import Trainer
from recipes.synth.generate import generate

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="exp/synth", type=Path)
    p.add_argument("--size", default="default", help="corpus size: tiny, small or default")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--config", default=HERE / "ctc.yaml", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. train.epochs=2")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.time()
    manifests = generate(a.out / "corpus", size=a.size, jobs=a.jobs)
    t_corpus = time.time() - t0
    print(f"corpus ready in {t_corpus:.0f} s: " + ", ".join(
        f"{k} {sum(1 for _ in open(v))}" for k, v in manifests.items()), flush=True)

    cfg = load_config(a.config, [f"data.train={manifests['train']}",
                                 f"data.valid={manifests['dev']}", *a.set])
    result = Trainer(cfg, a.out / "ctc").fit()
    print(f"trained {result.steps} steps in {result.train_seconds / 60:.1f} min "
          f"({result.utterances_per_second:.1f} utt/s)", flush=True)

    model, tokenizer, _ = load_model(result.model_path)
    test = read_manifest(manifests["test"])
    results_path = a.out / "test_results.jsonl"
    metrics = evaluate_model(model, tokenizer, test, results_path=results_path)
    # shallow fusion with a character 12-gram LM of the training transcripts that also
    # models the end of a sentence; search settings chosen on the dev voices
    # (recipes/synth/README.md)
    lm = NgramLM.train((tokenizer.encode(normalize_text(u.text))
                        for u in read_manifest(manifests["train"])), 12, tokenizer.vocab_size,
                       end_of_sentence=True)
    fused = evaluate_model(model, tokenizer, test, method="ctc_prefix_beam", beam=64,
                           token_prune=16, lm_score=lm, lm_weight=1.0, length_bonus=2.0,
                           results_path=a.out / "test_results_lm.jsonl")
    summary = {
        "corpus": "synth", "split": "test (held-out voices)",
        "wer": round(metrics["wer"], 4), "cer": round(metrics["cer"], 4),
        "wer_lm": round(fused["wer"], 4), "cer_lm": round(fused["cer"], 4),
        "utterances": metrics["utterances"], "rtf": round(metrics["rtf"], 4),
        "wer_by_kind": wer_by_kind(test, results_path),
        "wer_lm_by_kind": wer_by_kind(test, a.out / "test_results_lm.jsonl"),
        "rtf_lm": round(fused["rtf"], 4),
        "train_minutes": round(result.train_seconds / 60, 1),
        "total_minutes": round((time.time() - t0) / 60, 1),
        "model": str(result.model_path),
    }
    print(json.dumps(summary), flush=True)
    return summary


def wer_by_kind(test, results_path: Path) -> dict:
    """WER per text kind (digits, numbers, commands, sentences): where the errors are."""
    kind = {u.id: u.meta.get("kind", "?") for u in test}
    groups = defaultdict(lambda: ([], []))
    for row in map(json.loads, open(results_path)):
        refs, hyps = groups[kind[row["id"]]]
        refs.append(row["ref"])
        hyps.append(row["hyp"])
    return {k: round(score(r, h)["wer"], 4) for k, (r, h) in sorted(groups.items())}


if __name__ == "__main__":
    main()
