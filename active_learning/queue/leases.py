"""Taking, submitting, skipping and flagging clips.

Every change of hands is one conditional UPDATE in the database, never a decision made in
Python memory, so any number of server workers or processes can share one queue:
- taking: ``UPDATE clips SET lease = me WHERE id = (best free clip) AND lease is free or
  expired``. On PostgreSQL the inner SELECT is ``FOR UPDATE SKIP LOCKED``, so concurrent
  takers pass over each other's rows; SQLite runs the whole statement under its single
  writer lock. The outer condition is re-checked on the row itself, so two labelers can
  never both hold a clip.
- submit/skip/flag: ``UPDATE clips ... WHERE id = ? AND lease_user_id = me`` plus the
  label row, in one transaction; if the row count is not 1 the labeler no longer holds the
  clip (its lease ran out and someone else took it) and nothing is written.
A lease that runs out stays with its holder until someone else takes the clip, so a slow
labeler can still submit when nobody was waiting for that clip.
"""
from __future__ import annotations

import time
from typing import Optional

from sqlalchemy import and_, exists, false, or_, select, update
from sqlalchemy.orm import Session

from active_learning.queue.models import Clip, Label

# PostgreSQL's SKIP LOCKED can come back empty while a row is being re-checked; try again
_TAKE_ATTEMPTS = 20


class LeaseError(Exception):
    """The labeler does not hold the clip (never did, or lost it to someone else)."""


class EmptyTranscript(ValueError):
    """A submitted transcript with no words; skip or flag is the answer for a clip with
    nothing to transcribe."""


def _open(now: float):
    """Still wants labels and nobody holds it (or the holder's time ran out)."""
    return and_(Clip.labels_done < Clip.labels_wanted, Clip.flagged == false(),
                or_(Clip.lease_user_id.is_(None), Clip.lease_expires_at < now))


def _not_answered_by(user_id: int):
    return ~exists().where(Label.clip_id == Clip.id, Label.user_id == user_id)


def held_clip(db: Session, user_id: int) -> Optional[Clip]:
    return db.scalar(select(Clip).where(Clip.lease_user_id == user_id,
                                        Clip.labels_done < Clip.labels_wanted,
                                        Clip.flagged == false()).order_by(Clip.id).limit(1))


def take_next(db: Session, user_id: int, lease_seconds: float, now: Optional[float] = None) -> Optional[Clip]:
    """Lease the highest-priority clip ``user_id`` may label and return it, or None when
    there is none. A clip the user already holds comes back first (its lease renewed), so
    a reloaded page gets the same clip. The caller commits."""
    now = time.time() if now is None else now
    expires = now + lease_seconds
    held = held_clip(db, user_id)
    if held is not None:
        renewed = db.execute(update(Clip).where(Clip.id == held.id, Clip.lease_user_id == user_id)
                             .values(lease_expires_at=expires).execution_options(synchronize_session=False))
        if renewed.rowcount == 1:  # else someone took it since it expired: find another
            return db.get(Clip, held.id, populate_existing=True)
    for _ in range(_TAKE_ATTEMPTS):
        best = (select(Clip.id).where(_open(now), _not_answered_by(user_id))
                .order_by(Clip.priority.desc(), Clip.id).limit(1)
                .with_for_update(skip_locked=True).scalar_subquery())
        taken = db.execute(update(Clip).where(Clip.id == best, _open(now))
                           .values(lease_user_id=user_id, lease_expires_at=expires)
                           .returning(Clip.id).execution_options(synchronize_session=False)).scalar()
        if taken is not None:
            return db.get(Clip, taken, populate_existing=True)
        if db.scalar(select(Clip.id).where(_open(now), _not_answered_by(user_id)).limit(1)) is None:
            return None
    return None


def _release(db: Session, user_id: int, clip_id: int, **values) -> None:
    done = db.execute(update(Clip).where(Clip.id == clip_id, Clip.lease_user_id == user_id,
                                         Clip.labels_done < Clip.labels_wanted, Clip.flagged == false())
                      .values(lease_user_id=None, lease_expires_at=None, **values)
                      .execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise LeaseError(f"clip {clip_id} is not leased to you")


def submit(db: Session, user_id: int, clip_id: int, text: str, now: Optional[float] = None) -> Label:
    """Record ``text`` as the user's transcript of a clip they hold and give the clip back
    (to the queue if it wants more labels). The caller commits; the label is safe once
    that commit returns. An empty (or whitespace-only) ``text`` is refused with
    :class:`EmptyTranscript` and nothing is written: it would become a training clip that
    says nothing."""
    if not text.strip():
        raise EmptyTranscript(f"clip {clip_id}: the transcript is empty; type what is said, or "
                              "skip the clip (someone else may hear it) or flag it (nothing to transcribe)")
    _release(db, user_id, clip_id, labels_done=Clip.labels_done + 1)
    return _answer(db, user_id, clip_id, "label", text=text, now=now)


def skip(db: Session, user_id: int, clip_id: int, now: Optional[float] = None) -> Label:
    """Give a clip back without a label; it is not offered to this user again."""
    _release(db, user_id, clip_id)
    return _answer(db, user_id, clip_id, "skip", now=now)


def flag(db: Session, user_id: int, clip_id: int, note: str = "", now: Optional[float] = None) -> Label:
    """Take a clip out of the queue for everyone (bad audio, wrong language, ...)."""
    _release(db, user_id, clip_id, flagged=True)
    return _answer(db, user_id, clip_id, "flag", note=note, now=now)


def _answer(db: Session, user_id: int, clip_id: int, action: str, text: Optional[str] = None,
            note: Optional[str] = None, now: Optional[float] = None) -> Label:
    label = Label(clip_id=clip_id, user_id=user_id, action=action, text=text, note=note,
                  created_at=time.time() if now is None else now)
    db.add(label)
    db.flush()
    return label


def leased_to(db: Session, clip_id: int, user_id: int) -> Optional[Clip]:
    """The clip if ``user_id`` holds it now, else None."""
    return db.scalar(select(Clip).where(Clip.id == clip_id, Clip.lease_user_id == user_id))
