"""Which speakers the English recipe trains on, chooses settings on (dev) and reports on
(eval). Whole speakers are held out, chosen by a fixed rule on the sorted speaker ids so
the split is the same on every machine and needs no file."""
from __future__ import annotations

from typing import Dict, Iterable, List

from asr.data import Utterance

#: every EVERY-th speaker (sorted) is held out: offset DEV_OFFSET for dev, EVAL_OFFSET for eval
EVERY = 6
DEV_OFFSET, EVAL_OFFSET = 0, 3


def speaker_roles(speakers: Iterable[str]) -> Dict[str, str]:
    """speaker -> 'train' | 'dev' | 'eval'."""
    roles = {}
    for i, spk in enumerate(sorted(set(speakers))):
        roles[spk] = {DEV_OFFSET: "dev", EVAL_OFFSET: "eval"}.get(i % EVERY, "train")
    return roles


def split_by_speaker(utts: List[Utterance]) -> Dict[str, List[Utterance]]:
    """Partition a corpus's utterances by their speaker's role (see :func:`speaker_roles`)."""
    roles = speaker_roles(u.speaker or "" for u in utts)
    parts: Dict[str, List[Utterance]] = {"train": [], "dev": [], "eval": []}
    for u in utts:
        parts[roles[u.speaker or ""]].append(u)
    return parts
