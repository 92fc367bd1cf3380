"""Corpus layouts and speaker splits, torch-free (the evaluation commands use them)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence, Tuple

from asr.audio_files import AUDIO_SUFFIXES, list_audio  # noqa: F401 (kws code imports them from here)

SPEECH_COMMANDS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SPEECH_COMMANDS_LABELS = ["_silence_", "_unknown_"] + SPEECH_COMMANDS_WORDS
SHARED_CORPORA = Path("..") / "shared" / "corpora"  # the shared corpora, beside the repository
BACKGROUND_NOISE = Path("speech_commands") / "_background_noise_"  # real noise, under a corpora root


def speaker_of(path: str | Path) -> str:
    """Speech Commands speaker id: the part of the file name before ``_nohash_``
    (after the word for ``_unknown_/<word>_<speaker>_nohash_<n>``). Files without
    ``_nohash_`` (``_silence_``) are their own "speaker"."""
    name = Path(path).name
    if "_nohash_" not in name:
        return Path(path).stem
    head = name.split("_nohash_")[0]
    return head.split("_")[-1]


def hash_split(key: str, val_percent: float = 10.0, test_percent: float = 20.0) -> str:
    """Deterministic 'train' / 'val' / 'test' from a key (a speaker id), like the
    Speech Commands reference ``which_set`` (SHA-1 of the key)."""
    h = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 10000 / 100.0
    if h < test_percent:
        return "test"
    if h < test_percent + val_percent:
        return "val"
    return "train"


def scan_speech_commands(root: str | Path, labels: Sequence[str] = SPEECH_COMMANDS_LABELS
                         ) -> List[Tuple[Path, str, str]]:
    """The v0.02 test-set layout ``<class>/<file>``: [(path, label, speaker)].

    Also accepts the full v0.02 layout (``<word>/...`` for all 35 words and
    ``_background_noise_``): words outside ``labels`` become ``_unknown_``, and
    ``_background_noise_`` is skipped (cut it into ``_silence_`` clips separately: a folder
    without ``_silence_`` clips is refused, saying so).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Speech Commands directory not found")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name == "_background_noise_":
            continue
        label = d.name if d.name in labels else "_unknown_"
        for f in list_audio(d):
            out.append((f, label, speaker_of(f)))
    found = {lab for _, lab, _ in out}
    missing = [lab for lab in labels if lab not in found]
    if missing == ["_silence_"] and (root / "_background_noise_").is_dir():
        raise FileNotFoundError(
            f"{root}: no _silence_ clips: a full v0.02 release has none (only _background_noise_ "
            f"recordings); evaluate on the official test-set layout (speech_commands_test_set_v0.02, "
            f"which has _silence_/), or cut 1 s clips of _background_noise_ into {root / '_silence_'}")
    if missing:
        raise FileNotFoundError(f"{root}: no clips for class(es) {missing}; expected "
                                f"<class>/<speaker>_nohash_<n>.wav|flac folders")
    return out
