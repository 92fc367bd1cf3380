"""Small helpers shared by the recipes' prepare scripts (data handling only, no models)."""
from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Dict, Iterable

from asr.data import Utterance, write_manifest


def download(url: str, dest: Path) -> Path:
    """Fetch ``url`` to ``dest``; offline, fail with a message that says what to do."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as exc:
        raise RuntimeError(
            f"cannot download {url} ({exc}). This machine may be offline: fetch the file "
            f"elsewhere, put it at {dest}, and run prepare on the unpacked folder.") from None
    tmp.replace(dest)
    return dest


def download_and_unpack(url: str, dest: Path, archive_name: str) -> Path:
    """Fetch a tar archive into ``dest`` (kept for re-runs) and unpack it there."""
    import tarfile

    archive = download(url, Path(dest) / archive_name)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return Path(dest)


def speaker_split(speaker: str, test_fraction: float, salt: str = "") -> bool:
    """Deterministic speaker-level split: True if ``speaker`` belongs to the held-out part."""
    h = int(hashlib.sha1((salt + speaker).encode()).hexdigest()[:8], 16)
    return (h % 10000) / 10000.0 < test_fraction


def write_splits(splits: Dict[str, Iterable[Utterance]], out_dir: Path) -> Dict[str, Path]:
    out_dir = Path(out_dir)
    return {name: write_manifest(list(utts), out_dir / f"{name}.jsonl")
            for name, utts in splits.items()}
