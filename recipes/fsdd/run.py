"""FSDD recipe: real digits from FSDD plus synthetic digits from many TTS voices.

    python -m recipes.fsdd.run --corpus ../shared/corpora/fsdd --out exp/fsdd \
        --test-speakers theo            # a check with a whole speaker held out
    python -m recipes.fsdd.run --corpus ../shared/corpora/fsdd --out exp/fsdd_all \
        --ship data/models/fsdd_ctc.pt  # the shipped model: every speaker

FSDD has few speakers, so a model trained on it alone learns their voices; the synthetic
digits (single digit words from ~140 voices of the default corpus generator, band-limited
to 8 kHz like FSDD) teach it what varies between speakers.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from asr.checkpoint import load_model
from asr.config import load_config
from asr.data import read_manifest, write_manifest
from asr.evaluate import evaluate_model, vocab_search
from asr.train import Trainer
from recipes.fsdd.prepare import digit_strings, digit_words, prepare, speech_commands_digits, speech_commands_words
from recipes.synth.generate import generate

HERE = Path(__file__).resolve().parent
DIGITS = HERE / "digits.txt"  # the closed vocabulary: zero ... nine


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", type=Path, default=Path("exp/fsdd"))
    p.add_argument("--test-speakers", nargs="*", default=[])
    p.add_argument("--config", type=Path, default=HERE / "ctc.yaml")
    p.add_argument("--synthetic", type=int, default=5000, help="synthetic digit utterances")
    p.add_argument("--speech-commands", type=Path,
                   help="also train on the digit words of this Speech Commands folder (real voices)")
    p.add_argument("--speech-commands-repeat", type=int, default=4,
                   help="times each Speech Commands digit clip is listed")
    p.add_argument("--speech-commands-other-words", action="store_true",
                   help="also train on every other word of that folder (yes, no, up, ...: more "
                   "real voices for the acoustic model), each clip listed once")
    p.add_argument("--digit-strings", nargs=2, action="append", default=[], metavar=("CORPUS", "DIR"),
                   help="also train on the utterances of this corpus that say only digits (e.g. "
                   "an4 ../shared/corpora/an4): real voices, none of them FSDD's; repeatable")
    p.add_argument("--digit-strings-repeat", type=int, default=2,
                   help="times each of those clips is listed")
    p.add_argument("--digit-words", nargs=2, action="append", default=[], metavar=("CORPUS", "DIR"),
                   help="also train on single digit words cut out of this corpus's utterances by forced "
                   "alignment (asr.word_cuts; e.g. an4 ../shared/corpora/an4): isolated digits in "
                   "voices none of them FSDD's; the cuts are kept under --digit-words-dir; repeatable")
    p.add_argument("--digit-words-dir", type=Path, default=Path("exp/fsdd_digit_words"),
                   help="where the digit-word cuts are written (shared by the folds)")
    p.add_argument("--digit-words-repeat", type=int, default=1, help="times each cut is listed")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--init-from", type=Path,
                   help="start from this checkpoint's weights (same architecture), e.g. a model "
                   "pre-trained on the synthetic corpus")
    p.add_argument("--ship", type=Path, help="copy the trained model here")
    a = p.parse_args(argv)

    splits = prepare(a.corpus, a.out / "data", a.test_speakers)
    train = read_manifest(splits["train"])
    if a.synthetic:
        synth = generate(a.out / "synth_digits", counts={"train": a.synthetic, "dev": 0, "test": 0},
                         kinds={"digit": 1.0}, jobs=a.jobs)
        train += read_manifest(synth["train"])
    if a.speech_commands:
        train += speech_commands_digits(a.speech_commands, a.speech_commands_repeat)
        if a.speech_commands_other_words:
            digits = set(DIGITS.read_text().split())
            train += [u for u in speech_commands_words(a.speech_commands) if u.text not in digits]
    for corpus, root in a.digit_strings:
        train += digit_strings(corpus, root, a.digit_strings_repeat)
    for corpus, root in a.digit_words:
        train += digit_words(corpus, root, a.digit_words_dir, a.digit_words_repeat)
    train_path = write_manifest(train, a.out / "data" / "train_plus_synth.jsonl")
    cfg = load_config(a.config, [f"data.train={train_path}", f"data.valid={splits['valid']}", *a.set])
    result = Trainer(cfg, a.out / "ctc", init_from=a.init_from).fit()
    summary = {"train_utterances": len(train), "train_minutes": round(result.train_seconds / 60, 1),
               "model": str(result.model_path)}
    if "test" in splits:
        model, tok, _ = load_model(result.model_path)
        test = read_manifest(splits["test"])
        m = evaluate_model(model, tok, test, results_path=a.out / "test_results.jsonl")
        summary.update(test_speakers=a.test_speakers, **{k: m[k] for k in ("accuracy", "wer", "utterances")})
        # the task's closed vocabulary: rank the ten digit words by their likelihood
        closed = {"method": vocab_search(model),
                  "vocabulary": [tok.encode(word) for word in DIGITS.read_text().split()]}
        v = evaluate_model(model, tok, test, results_path=a.out / "test_results_vocab.jsonl", **closed)
        summary.update(accuracy_vocab=v["accuracy"])
        if cfg.decoding.warps:  # closed vocabulary plus test-time VTLN
            w = evaluate_model(model, tok, test, warps=cfg.decoding.warps,
                               results_path=a.out / "test_results_vocab_warps.jsonl", **closed)
            summary.update(accuracy_vocab_warps=w["accuracy"])
    if a.ship:
        a.ship.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.model_path, a.ship)
        summary["shipped"] = str(a.ship)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
