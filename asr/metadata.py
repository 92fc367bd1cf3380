"""LJSpeech-style transcript files: ``id|raw text|normalized text`` a line (LJSpeech's
``metadata.csv``, the shared ``texts/ljspeech_metadata.csv``), read one way everywhere.

No quoting (LJSpeech's text holds bare ``"``). A row of two columns (``id|text``, as some
copies have) or with an empty third column uses its raw text as the normalized one.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List


@dataclass(frozen=True)
class MetadataRow:
    id: str
    raw: str
    normalized: str


def read_metadata(path: str | Path, strict: bool = False) -> List[MetadataRow]:
    """The rows of ``path`` in file order; blank lines are skipped. A line with one column
    raises ``ValueError`` naming ``path:line`` when ``strict``, and is skipped otherwise."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, cols in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1):
            if not cols or not any(c.strip() for c in cols):
                continue
            if len(cols) < 2:
                if strict:
                    raise ValueError(f"{path}:{i}: expected 'id|raw text|normalized text', got {cols[0]!r}")
                continue
            raw = cols[1]
            normalized = cols[2] if len(cols) > 2 and cols[2].strip() else raw
            rows.append(MetadataRow(cols[0], raw, normalized))
    return rows
