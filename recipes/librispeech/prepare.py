"""LibriSpeech: download (where online) and manifests from the standard folders.

    python -m recipes.librispeech.prepare --corpus /data/LibriSpeech --out exp/libri/data \
        --train train-clean-100 --valid dev-clean --test test-clean
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

from asr.corpora import prepare_librispeech
from recipes.common import download_and_unpack, write_splits

URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
SUBSETS = ["dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100",
           "train-clean-360", "train-other-500"]


def download(dest: str | Path, subsets: List[str]) -> Path:
    """Fetch and unpack subsets into ``dest/LibriSpeech``; fails clearly when offline."""
    dest = Path(dest)
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"unknown LibriSpeech subset {subset!r}; known: {SUBSETS}")
        if (dest / "LibriSpeech" / subset).is_dir():
            continue
        download_and_unpack(URL.format(subset=subset), dest, f"{subset}.tar.gz")
    return dest / "LibriSpeech"


def prepare(corpus_dir: str | Path, out_dir: str | Path, train: List[str], valid: List[str],
            test: List[str]) -> Dict[str, Path]:
    splits = {}
    for name, subsets in (("train", train), ("valid", valid), ("test", test)):
        if subsets:
            for s in subsets:
                if not (Path(corpus_dir) / s).is_dir():
                    raise FileNotFoundError(f"{Path(corpus_dir) / s}: subset folder not found")
            splits[name] = prepare_librispeech(corpus_dir, subsets)
    return write_splits(splits, Path(out_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True, help="folder holding the subset folders")
    p.add_argument("--out", required=True)
    p.add_argument("--train", nargs="*", default=["train-clean-100"])
    p.add_argument("--valid", nargs="*", default=["dev-clean"])
    p.add_argument("--test", nargs="*", default=["test-clean"])
    p.add_argument("--download", action="store_true", help="fetch the subsets first")
    a = p.parse_args()
    corpus = a.corpus
    if a.download:
        corpus = download(a.corpus, a.train + a.valid + a.test)
    for name, path in prepare(corpus, a.out, a.train, a.valid, a.test).items():
        print(f"{name}: {path} ({sum(1 for _ in open(path))} utterances)")


if __name__ == "__main__":
    main()
