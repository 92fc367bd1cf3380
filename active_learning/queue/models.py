"""Tables of the labeling queue. Times are UNIX seconds (floats), the same on SQLite and
PostgreSQL."""
from __future__ import annotations

from typing import Optional

from sqlalchemy import (JSON, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("labeler", "admin")
# what a labeler did with a leased clip
ACTIONS = ("label", "skip", "flag")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (CheckConstraint("role IN ('labeler', 'admin')", name="ck_users_role"),)


class AuthSession(Base):
    """A sign-in. Only the SHA-256 of the cookie's token is stored, so a copy of the
    database does not let anyone sign in."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[float] = mapped_column(Float)


class Clip(Base):
    """A candidate to label. ``lease_user_id``/``lease_expires_at`` say who holds it and
    until when; ``labels_done`` counts its labels, and it leaves the queue when that reaches
    ``labels_wanted`` or someone flags it."""

    __tablename__ = "clips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    utt_id: Mapped[str] = mapped_column(String(300), unique=True)
    audio: Mapped[str] = mapped_column(Text)
    duration: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[float] = mapped_column(Float)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    labels_wanted: Mapped[int] = mapped_column(Integer, default=1)
    labels_done: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_user_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"), nullable=True)
    lease_expires_at: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    imported_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_clips_queue", "labels_done", "priority"),)


class Label(Base):
    """One labeler's answer for one clip: a transcript, a skip or a flag. One row per
    (clip, labeler): nobody labels the same clip twice."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    action: Mapped[str] = mapped_column(String(10))
    text: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    note: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("clip_id", "user_id", name="uq_labels_clip_user"),
                      CheckConstraint("action IN ('label', 'skip', 'flag')", name="ck_labels_action"))
