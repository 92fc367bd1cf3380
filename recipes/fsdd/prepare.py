"""Free Spoken Digit Dataset: manifests with whole speakers held out.

    python -m recipes.fsdd.prepare --corpus ../shared/corpora/fsdd --out exp/fsdd/data \
        --test-speakers theo

Writes train.jsonl / valid.jsonl / test.jsonl. The valid split is a few recordings of
each training speaker (index 45-49); test holds every recording of the held-out speakers.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Dict, List, Optional

from asr.corpora import DIGITS, Corpus, prepare_fsdd
from asr.data import Utterance
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


def repeated(utts: List[Utterance], repeat: int) -> List[Utterance]:
    """Each utterance listed ``repeat`` times, the copies with ids ``<id>_r1`` ... (few
    clips of many voices, weighted up)."""
    return [dataclasses.replace(u, id=f"{u.id}_r{r}") if r else u for u in utts for r in range(repeat)]


def speech_commands_words(root: str | Path, words: Optional[List[str]] = None,
                          repeat: int = 1) -> List[Utterance]:
    """Spoken words from a Speech Commands tree, as extra real training speakers.

    Reads the word folders of the full v0.02 layout (``<word>/<speaker>_nohash_<n>``) and
    the words filed under ``_unknown_/<word>_<speaker>_nohash_<n>`` in its test-set layout;
    ``words`` keeps only these (None: every word; ``_silence_`` and the background-noise
    folder are never words). Each clip is listed ``repeat`` times (many voices, few clips:
    weight them up).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; expected a Speech Commands folder")
    wanted = None if words is None else set(words)
    found = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("_")):
        if wanted is None or folder.name in wanted:
            found += [(f"sc_{folder.name}_{p.stem}", p, folder.name, p.stem.split("_")[0])
                      for p in sorted(folder.glob("*.*"))]
    for p in sorted((root / "_unknown_").glob("*_*.*")):
        word, spk = p.stem.split("_")[:2]
        if wanted is None or word in wanted:
            found.append((f"sc_{p.stem}", p, word, spk))
    utts = Corpus()
    for uid, p, word, spk in found:
        if p.suffix.lower() in (".wav", ".flac"):
            utts.add(uid, p, word, f"sc:{spk}")
    return repeated(utts, repeat)


def speech_commands_digits(root: str | Path, repeat: int = 1) -> List[Utterance]:
    """The digit words (``zero`` ... ``nine``) of a Speech Commands tree; see
    :func:`speech_commands_words`."""
    return speech_commands_words(root, DIGITS, repeat)


#: spoken digit strings in other corpora also say "oh" for zero; kept (a char model spells it)
STRING_WORDS = set(DIGITS) | {"oh"}


def digit_strings(corpus: str, root: str | Path, repeat: int = 1) -> List[Utterance]:
    """Utterances of another corpus (``an4``, ``speechocean762``, or any name
    :func:`asr.corpora.load_corpus` reads) that say nothing but digits, e.g. AN4's "two six
    eight": more real voices saying digits, none of them an FSDD speaker. Every split found
    is read; each clip is listed ``repeat`` times (few clips, many voices)."""
    from asr.corpora import load_corpus
    from asr.text import normalize_text

    utts = load_corpus(corpus, root)
    found = []
    for u in utts:
        text = normalize_text(u.text)
        if text and set(text.split()) <= STRING_WORDS:
            found.append(dataclasses.replace(u, text=text, speaker=f"{corpus}:{u.speaker}"))
    if not found:
        raise ValueError(f"{root}: no {corpus} utterance says only digits")
    return repeated(found, repeat)


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
