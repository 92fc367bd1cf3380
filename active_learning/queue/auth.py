"""Users, passwords (argon2id via argon2-cffi) and sign-in sessions (a random token in an
HttpOnly cookie; the database keeps only its hash)."""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from active_learning.queue.models import ROLES, AuthSession, User

SESSION_COOKIE = "queue_session"
_hasher = PasswordHasher()
# verified when the name is unknown, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash("not a password")


class AuthError(ValueError):
    pass


def add_user(db: Session, name: str, password: str, role: str = "labeler") -> User:
    if role not in ROLES:
        raise AuthError(f"role must be one of {ROLES}, got {role!r}")
    if not name or not password:
        raise AuthError("name and password must not be empty")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise AuthError(f"user {name!r} exists")
    user = User(name=name, password_hash=_hasher.hash(password), role=role, created_at=time.time())
    db.add(user)
    db.flush()
    return user


def set_password(db: Session, name: str, password: str) -> None:
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise AuthError(f"no user {name!r}")
    user.password_hash = _hasher.hash(password)
    db.execute(delete(AuthSession).where(AuthSession.user_id == user.id))  # sign out everywhere


def check_password(db: Session, name: str, password: str) -> Optional[User]:
    user = db.scalar(select(User).where(User.name == name))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(db: Session, user: User, hours: float) -> str:
    """A new sign-in for ``user``; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    db.execute(delete(AuthSession).where(AuthSession.expires_at < now))  # tidy old ones
    db.add(AuthSession(token_hash=_token_hash(token), user_id=user.id, expires_at=now + hours * 3600))
    return token


def close_session(db: Session, token: str) -> None:
    db.execute(delete(AuthSession).where(AuthSession.token_hash == _token_hash(token)))


def session_user(db: Session, token: Optional[str]) -> Optional[User]:
    """The user a cookie's token signs in, or None (no token, unknown or expired)."""
    if not token:
        return None
    return db.scalar(select(User).join(AuthSession, AuthSession.user_id == User.id)
                     .where(AuthSession.token_hash == _token_hash(token),
                            AuthSession.expires_at > time.time()))
