"""JSON routes used by the labeling page (and by scripts): take the next clip, fetch its
audio, submit/skip/flag, admin statistics. Every route needs a signed-in user."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from active_learning.queue import leases
from active_learning.queue.app import admin_user, config_of, current_user, get_db
from active_learning.queue.config import QueueConfig
from active_learning.queue.models import Clip, User
from active_learning.queue.stats import queue_stats

router = APIRouter(prefix="/api")

MAX_TEXT = 10_000


class Transcript(BaseModel):
    text: str = Field(max_length=MAX_TEXT)


class FlagNote(BaseModel):
    note: str = Field(default="", max_length=MAX_TEXT)


def clip_view(clip: Clip) -> dict:
    return {"id": clip.id, "utt_id": clip.utt_id, "duration": clip.duration,
            "hypothesis": clip.hypothesis, "priority": clip.priority,
            "lease_expires_at": clip.lease_expires_at, "audio_url": f"/api/clips/{clip.id}/audio"}


@router.post("/next")
def next_clip(user: User = Depends(current_user), db: Session = Depends(get_db),
              config: QueueConfig = Depends(config_of)) -> dict:
    """Lease the next clip for this labeler: ``{"clip": {...}}``, or ``{"clip": null}``
    when nothing is left for them."""
    clip = leases.take_next(db, user.id, config.lease_seconds)
    view = clip_view(clip) if clip is not None else None
    db.commit()
    return {"clip": view}


@router.get("/clips/{clip_id}/audio")
def clip_audio(clip_id: int, user: User = Depends(current_user), db: Session = Depends(get_db)):
    """The clip's audio, to its lease holder only (admins: any queued clip). The path comes
    from the queue's own row, never from the request."""
    clip = db.get(Clip, clip_id) if user.role == "admin" else leases.leased_to(db, clip_id, user.id)
    if clip is None or not Path(clip.audio).is_file():
        raise HTTPException(status_code=404, detail="no such clip for you")
    return FileResponse(clip.audio, headers={"Cache-Control": "private, no-store"})


def _answered(action, db: Session, **kwargs) -> dict:
    try:
        label = action(db, **kwargs)
        db.commit()  # the reply below is sent only after this commit is durable
    except leases.LeaseError as exc:
        db.rollback()
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except leases.EmptyTranscript as exc:
        db.rollback()
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return {"ok": True, "label_id": label.id}


@router.post("/clips/{clip_id}/submit")
def submit(clip_id: int, body: Transcript, user: User = Depends(current_user),
           db: Session = Depends(get_db)) -> dict:
    return _answered(leases.submit, db, user_id=user.id, clip_id=clip_id, text=body.text.strip())


@router.post("/clips/{clip_id}/skip")
def skip(clip_id: int, user: User = Depends(current_user), db: Session = Depends(get_db)) -> dict:
    return _answered(leases.skip, db, user_id=user.id, clip_id=clip_id)


@router.post("/clips/{clip_id}/flag")
def flag(clip_id: int, body: Optional[FlagNote] = None, user: User = Depends(current_user),
         db: Session = Depends(get_db)) -> dict:
    return _answered(leases.flag, db, user_id=user.id, clip_id=clip_id, note=(body.note if body else ""))


@router.get("/me")
def me(user: User = Depends(current_user)) -> dict:
    return {"name": user.name, "role": user.role}


@router.get("/admin/stats")
def admin_stats(_admin: User = Depends(admin_user), db: Session = Depends(get_db)) -> dict:
    return queue_stats(db)
