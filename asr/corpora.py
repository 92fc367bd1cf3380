"""Corpora in their public layouts -> manifests. One ``prepare_<corpus>`` each, chosen by
name, so ``python -m asr evaluate --corpus NAME --data DIR`` works on any of them."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import List, Optional

from asr.audio import AudioError, audio_info
from asr.data import Utterance, read_manifest
from asr.registry import Registry

log = logging.getLogger(__name__)
CORPORA: Registry = Registry("corpus")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _utt(uid: str, path: Path, text: str, speaker: Optional[str] = None, **meta) -> Optional[Utterance]:
    """An utterance with duration and rate from the header; unreadable files are logged
    by path and left out (the evaluation reports how many)."""
    try:
        duration, sr = audio_info(path)
    except AudioError as exc:
        log.warning("skipping %s", exc)
        return None
    return Utterance(id=uid, audio=str(path.resolve()), duration=duration, text=text, sample_rate=sr,
                     speaker=speaker, meta=meta)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found; expected {what}")
    return path


@CORPORA.register("fsdd")
def prepare_fsdd(root: str | Path, speakers: Optional[List[str]] = None) -> List[Utterance]:
    """Free Spoken Digit Dataset: ``recordings/<digit>_<speaker>_<idx>.wav``.

    ``root`` may be the dataset folder or its ``recordings`` folder.
    """
    root = Path(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else _need_dir(
        root, "FSDD layout recordings/<digit>_<speaker>_<idx>.wav")
    utts = []
    for p in sorted(rec.glob("*.wav")):
        parts = p.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit():
            log.warning("skipping %s: name is not <digit>_<speaker>_<idx>.wav", p)
            continue
        if speakers is not None and parts[1] not in speakers:
            continue
        u = _utt(p.stem, p, DIGITS[int(parts[0])], parts[1])
        if u:
            utts.append(u)
    return utts


@CORPORA.register("ljspeech")
def prepare_ljspeech(root: str | Path) -> List[Utterance]:
    """LJSpeech: ``metadata.csv`` (id|raw|normalized) and ``wavs/<id>.wav|.flac``."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; expected the LJSpeech layout")
    utts = []
    with open(meta, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
            if len(row) < 2:
                continue
            uid, text = row[0], row[2] if len(row) > 2 and row[2] else row[1]
            path = next((root / "wavs" / f"{uid}{ext}" for ext in (".wav", ".flac")
                         if (root / "wavs" / f"{uid}{ext}").exists()), root / "wavs" / f"{uid}.wav")
            u = _utt(uid, path, text, "LJ")
            if u:
                utts.append(u)
    return utts


@CORPORA.register("librispeech")
def prepare_librispeech(root: str | Path, subsets: Optional[List[str]] = None) -> List[Utterance]:
    """LibriSpeech: ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` and
    ``.flac`` files. ``root`` may be ``LibriSpeech/`` or a single subset folder."""
    root = _need_dir(Path(root), "the LibriSpeech layout <subset>/<spk>/<chapter>/")
    utts = []
    for trans in sorted(root.rglob("*.trans.txt")):
        if subsets and not any(s in trans.parts for s in subsets):
            continue
        for line in open(trans, encoding="utf-8"):
            uid, _, text = line.strip().partition(" ")
            if not uid:
                continue
            u = _utt(uid, trans.parent / f"{uid}.flac", text, uid.split("-")[0],
                     subset=trans.parts[-4] if len(trans.parts) >= 4 else None)
            if u:
                utts.append(u)
    if not utts:
        raise FileNotFoundError(f"{root}: no *.trans.txt files found (LibriSpeech layout)")
    return utts


@CORPORA.register("manifest")
def prepare_manifest(path: str | Path) -> List[Utterance]:
    """A JSON-lines manifest file, or a folder holding ``test.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.jsonl"
    return read_manifest(path)


CORPORA.register("synth")(prepare_manifest)


def load_corpus(name: str, data: str | Path, **kwargs) -> List[Utterance]:
    return CORPORA.get(name)(data, **kwargs)
