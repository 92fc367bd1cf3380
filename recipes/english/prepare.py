"""English recipe, data: every real corpus in ``../shared/corpora`` in one training manifest,
with whole speakers of speechocean762 and AN4 held out for dev (choosing settings) and eval
(the reported figure), and the LM's training text.

    python -m recipes.english.prepare --corpora ../shared/corpora --out exp/english/data

Every clip's ``meta.corpus`` names its corpus. Writes ``train.jsonl``; ``dev_<corpus>.jsonl`` and ``eval_<corpus>.jsonl`` for speechocean762
and AN4; ``lm_texts.txt`` (the LJSpeech sentences of ``texts/`` and every training
transcript: never a dev or eval transcript); ``rejected.jsonl`` (entries the readers left
out) and ``summary.json`` (clips, hours and speakers per part).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

from asr.corpora import load_corpus
from asr.data import Utterance, write_manifest
from asr.metadata import read_metadata
from asr.text import normalize_text
from recipes.english.split import split_by_speaker
from recipes.fsdd.prepare import speech_commands_words

#: corpora whose speakers are split into train / dev / eval
HELD_OUT_CORPORA = ("speechocean762", "an4")


def _summary(utts: List[Utterance]) -> Dict:
    return {"clips": len(utts), "hours": round(sum(u.duration for u in utts) / 3600, 3),
            "speakers": len({u.speaker for u in utts})}


def lm_sentences(corpora: Path) -> List[str]:
    """The 12.7k LJSpeech sentences of ``texts/`` (normalised column), normalised."""
    path = corpora / "texts" / "ljspeech_metadata.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected the LJSpeech transcripts (id|raw|normalized)")
    return [text for row in read_metadata(path) if (text := normalize_text(row.normalized))]


def prepare(corpora: str | Path, out_dir: str | Path) -> Dict:
    corpora, out_dir = Path(corpora), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train: List[Utterance] = []
    rejected = []
    summary: Dict[str, Dict] = {}
    for name in HELD_OUT_CORPORA:
        corpus = load_corpus(name, corpora / name)
        rejected += corpus.rejected
        for u in corpus:
            u.meta = {**u.meta, "corpus": name}
        parts = split_by_speaker(corpus)
        train += parts["train"]
        for role in ("dev", "eval"):
            write_manifest(parts[role], out_dir / f"{role}_{name}.jsonl")
        summary[name] = {role: _summary(utts) for role, utts in parts.items()}
    # single-voice or word corpora: training only
    extra = {"ljspeech": load_corpus("ljspeech", corpora / "ljspeech"),
             "fsdd": load_corpus("fsdd", corpora / "fsdd"),
             "speech_commands": speech_commands_words(corpora / "speech_commands")}
    for name, utts in extra.items():
        rejected += getattr(utts, "rejected", [])
        for u in utts:
            u.meta = {**u.meta, "corpus": name}
        train += utts
        summary[name] = {"train": _summary(utts)}
    write_manifest(train, out_dir / "train.jsonl")
    summary["train"] = _summary(train)
    texts = lm_sentences(corpora) + [t for u in train if (t := normalize_text(u.text))]
    (out_dir / "lm_texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    summary["lm_texts"] = {"sentences": len(texts)}
    with open(out_dir / "rejected.jsonl", "w", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps(asdict(r)) + "\n")
    summary["rejected"] = len(rejected)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="../shared/corpora", help="folder of the real corpora")
    p.add_argument("--out", default="exp/english/data")
    args = p.parse_args(argv)
    print(json.dumps(prepare(args.corpora, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
