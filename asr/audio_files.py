"""Audio files on disk: the suffixes the toolkit reads, and listing them under folders.

torch-free and numpy-free (``kws.layout`` and the evaluation commands import it)."""
from __future__ import annotations

from pathlib import Path
from typing import List

# compared lower-cased: ".WAV" is audio too; .sph: NIST SPHERE (AN4, TIMIT), uncompressed
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph")


def is_audio(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_SUFFIXES


def list_audio(root: str | Path, what: str = "") -> List[Path]:
    """``root`` itself when it is a file, else the audio files under it (recursive, symlinks
    followed), sorted. A missing ``root`` is refused, naming it (after ``what``, e.g. the
    config field that gave it)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{what + ': ' if what else ''}{root}: no such file or folder")
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if is_audio(p))
