"""Free Spoken Digit Dataset: manifests with whole speakers held out.

    python -m recipes.fsdd.prepare --corpus ../shared/corpora/fsdd --out exp/fsdd/data \
        --test-speakers theo

Writes train.jsonl / valid.jsonl / test.jsonl. The valid split is a few recordings of
each training speaker (index 45-49); test holds every recording of the held-out speakers.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

from asr.corpora import prepare_fsdd
from recipes.common import download_and_unpack, write_splits

URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"


def download(dest: str | Path) -> Path:
    """Download and unpack FSDD into ``dest``; returns the dataset folder."""
    return next(download_and_unpack(URL, Path(dest), "fsdd.tar.gz").glob("free-spoken-digit-dataset-*"))


def prepare(corpus_dir: str | Path, out_dir: str | Path,
            test_speakers: Optional[List[str]] = None, valid_index_from: int = 45) -> Dict[str, Path]:
    utts = prepare_fsdd(corpus_dir)
    if not utts:
        raise FileNotFoundError(f"{corpus_dir}: no FSDD recordings found")
    test_speakers = set(test_speakers or [])
    speakers = {u.speaker for u in utts}
    unknown = test_speakers - speakers
    if unknown:
        raise ValueError(f"test speakers {sorted(unknown)} not in corpus (has {sorted(speakers)})")
    test = [u for u in utts if u.speaker in test_speakers]
    rest = [u for u in utts if u.speaker not in test_speakers]
    valid = [u for u in rest if int(u.id.split("_")[2]) >= valid_index_from]
    train = [u for u in rest if int(u.id.split("_")[2]) < valid_index_from]
    splits = {"train": train, "valid": valid}
    if test:
        splits["test"] = test
    return write_splits(splits, Path(out_dir))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--test-speakers", nargs="*", default=[])
    a = p.parse_args()
    for name, path in prepare(a.corpus, a.out, a.test_speakers).items():
        print(f"{name}: {path} ({sum(1 for _ in open(path))} utterances)")


if __name__ == "__main__":
    main()
