"""LibriSpeech: download (where online), manifests from the standard folders, and the
training set as tar shards (``OUT/train_shards``, what the recipe's configs train from).

    python -m recipes.librispeech.prepare --corpus /data/LibriSpeech --out exp/libri/data \
        --train train-clean-100 --valid dev-clean --test test-clean --shard-mb 256
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

from asr.corpora import prepare_librispeech
from asr.data import read_manifest
from asr.shards import write_shards
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
            test: List[str], shard_mb: Optional[float] = None,
            shard_size: Optional[int] = None) -> Dict[str, Path]:
    """Manifests ``OUT/{train,valid,test}.jsonl``; with ``shard_mb`` or ``shard_size``,
    also the training set as shards in ``OUT/train_shards`` (returned as "train_shards")."""
    splits = {}
    for name, subsets in (("train", train), ("valid", valid), ("test", test)):
        if subsets:
            for s in subsets:
                if not (Path(corpus_dir) / s).is_dir():
                    raise FileNotFoundError(f"{Path(corpus_dir) / s}: subset folder not found")
            splits[name] = prepare_librispeech(corpus_dir, subsets)
    paths = write_splits(splits, Path(out_dir))
    if (shard_mb or shard_size) and "train" in paths:
        out = Path(out_dir) / "train_shards"
        write_shards(read_manifest(paths["train"]), out, shard_size=shard_size,
                     shard_mb=None if shard_size else shard_mb)
        paths["train_shards"] = out
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True, help="folder holding the subset folders")
    p.add_argument("--out", required=True)
    p.add_argument("--train", nargs="*", default=["train-clean-100"])
    p.add_argument("--valid", nargs="*", default=["dev-clean"])
    p.add_argument("--test", nargs="*", default=["test-clean"])
    p.add_argument("--download", action="store_true", help="fetch the subsets first")
    p.add_argument("--shard-mb", type=float, help="also write the training set as tar shards "
                   "of about this many megabytes in OUT/train_shards (the configs train from them)")
    p.add_argument("--shard-size", type=int, help="or shards of this many utterances")
    a = p.parse_args()
    corpus = a.corpus
    if a.download:
        corpus = download(a.corpus, a.train + a.valid + a.test)
    for name, path in prepare(corpus, a.out, a.train, a.valid, a.test, a.shard_mb,
                              a.shard_size).items():
        if Path(path).is_dir():
            print(f"{name}: {path}")
        else:
            print(f"{name}: {path} ({sum(1 for _ in open(path))} utterances)")


if __name__ == "__main__":
    main()
