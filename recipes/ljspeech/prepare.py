"""LJSpeech (one reader): manifests with held-out chapters.

    python -m recipes.ljspeech.prepare --corpus ../shared/corpora/ljspeech --out exp/lj/data

LJSpeech has a single speaker, so the test split holds out whole *passages*: every
utterance whose number falls in the last ``test_fraction`` of each chapter's range.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

from asr.corpora import prepare_ljspeech
from recipes.common import download_and_unpack, write_splits

URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"


def download(dest: str | Path) -> Path:
    return download_and_unpack(URL, Path(dest), "LJSpeech-1.1.tar.bz2") / "LJSpeech-1.1"


def prepare(corpus_dir: str | Path, out_dir: str | Path, test_fraction: float = 0.2,
            valid_fraction: float = 0.1) -> Dict[str, Path]:
    utts = prepare_ljspeech(corpus_dir)
    if not utts:
        raise FileNotFoundError(f"{corpus_dir}: no LJSpeech utterances found")
    by_chapter: Dict[str, list] = {}
    for u in utts:
        by_chapter.setdefault(u.id.split("-")[0], []).append(u)
    splits = {"train": [], "valid": [], "test": []}
    for chapter in by_chapter.values():
        chapter.sort(key=lambda u: u.id)
        n = len(chapter)
        n_test, n_valid = max(1, int(n * test_fraction)), max(1, int(n * valid_fraction))
        splits["test"] += chapter[n - n_test:]
        splits["valid"] += chapter[n - n_test - n_valid: n - n_test]
        splits["train"] += chapter[: n - n_test - n_valid]
    return write_splits(splits, Path(out_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    for name, path in prepare(a.corpus, a.out).items():
        print(f"{name}: {path} ({sum(1 for _ in open(path))} utterances)")


if __name__ == "__main__":
    main()
