"""Into and out of the queue: scored candidates in (a manifest, e.g. the output of
``python -m active_learning select``, optionally with a scores file), labeled clips out as
a training manifest."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from active_learning.queue.models import Clip, Label, User
from asr.data import Utterance, readable_audio


def hypothesis_of(utt: Utterance) -> str:
    """The model's best transcript if the pool recorded one (``meta.hypothesis``, or the
    first of ``meta.nbest``), else empty."""
    hyp = utt.meta.get("hypothesis")
    if isinstance(hyp, str):
        return hyp
    nbest = utt.meta.get("nbest")
    if isinstance(nbest, list) and nbest:
        first = nbest[0]
        if isinstance(first, dict) and isinstance(first.get("text"), str):
            return first["text"]
        if isinstance(first, str):
            return first
    return ""


def import_candidates(db: Session, utts: Sequence[Utterance], labels_wanted: int = 1) -> Dict[str, int]:
    """Add clips to the queue. Priority: ``meta.al_score`` (as ``select`` writes it, or
    :func:`active_learning.pool.selected_for_labeling` from a scores file), else 0. Clips already in the queue (same id) are left as they are.
    A clip whose audio cannot be read (missing file, unreadable header) is not queued:
    nobody could label it; each is logged with its file and reason. Audio paths are
    stored absolute. The caller commits. Returns counts."""
    if labels_wanted < 1:
        raise ValueError(f"labels_wanted must be >= 1, got {labels_wanted}")
    existing = set(db.scalars(select(Clip.utt_id)))
    _, unreadable = readable_audio([u for u in utts if u.id not in existing])
    existing |= {r.id for r in unreadable}
    now = time.time()
    added = unscored = 0
    for u in utts:
        if u.id in existing:
            continue
        if isinstance(u.meta.get("al_score"), (int, float)):
            priority = float(u.meta["al_score"])
        else:
            priority, unscored = 0.0, unscored + 1
        db.add(Clip(utt_id=u.id, audio=str(Path(u.audio).resolve()), duration=u.duration,
                    sample_rate=u.sample_rate, speaker=u.speaker, hypothesis=hypothesis_of(u),
                    priority=float(priority), meta=dict(u.meta), labels_wanted=labels_wanted,
                    labels_done=0, flagged=False, imported_at=now))
        existing.add(u.id)
        added += 1
    db.flush()
    return {"added": added, "already_queued": len(utts) - added - len(unreadable), "unscored": unscored,
            "unreadable": len(unreadable)}


def never_labeled(db: Session, utt_ids: Iterable[str]) -> Dict[str, str]:
    """Those of ``utt_ids`` the queue will never label, each with why: ``"flagged"`` (taken
    out of the queue by a labeler) or ``"not queued"`` (refused at import: its audio could
    not be read)."""
    flagged = dict(db.execute(select(Clip.utt_id, Clip.flagged)).all())
    why = {}
    for i in set(utt_ids):
        if i not in flagged:
            why[i] = "not queued"
        elif flagged[i]:
            why[i] = "flagged"
    return why


def normalize(text: str) -> str:
    """For comparing labels: case and spacing do not count as disagreement."""
    return " ".join(text.casefold().split())


def export_labeled(db: Session, complete_only: bool = False) -> List[Utterance]:
    """Labeled clips as training utterances, highest priority first. A clip labeled more
    than once gets its most common transcript (ties: the earliest). Flagged clips are left
    out; ``complete_only`` leaves out clips still waiting for more labels.
    ``meta`` keeps the import's meta plus al_score, hypothesis, labelers and, for clips
    labeled more than once, whether the labels agreed."""
    rows = db.execute(select(Label.clip_id, Label.text, User.name).join(User, User.id == Label.user_id)
                      .where(Label.action == "label").order_by(Label.created_at, Label.id)).all()
    labels = defaultdict(list)
    for clip_id, text, name in rows:
        labels[clip_id].append((text or "", name))
    query = select(Clip).where(Clip.flagged == false(), Clip.labels_done > 0)
    if complete_only:
        query = query.where(Clip.labels_done >= Clip.labels_wanted)
    out = []
    for clip in db.scalars(query.order_by(Clip.priority.desc(), Clip.id)):
        given = labels.get(clip.id)
        if not given:
            continue
        counts = Counter(normalize(t) for t, _ in given)
        top = max(counts.values())
        text = next(t for t, _ in given if counts[normalize(t)] == top)
        meta = {**clip.meta, "al_score": clip.priority, "hypothesis": clip.hypothesis,
                "labelers": [name for _, name in given]}
        if len(given) > 1:
            meta["labels_agree"] = len(counts) == 1
        out.append(Utterance(id=clip.utt_id, audio=clip.audio, duration=clip.duration, text=text,
                             sample_rate=clip.sample_rate, speaker=clip.speaker, meta=meta))
    return out
