"""Settings of the labeling queue."""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite:///queue.db"


@dataclass
class QueueConfig:
    """database_url: SQLAlchemy URL; SQLite by default, ``postgresql://...`` for PostgreSQL
    (driven by psycopg 3). lease_seconds: how long a clip stays with a labeler who took it
    before it returns to the queue. session_hours: how long a sign-in lasts.
    secure_cookies: mark the session cookie Secure (set when served over HTTPS)."""

    database_url: str = DEFAULT_DATABASE_URL
    lease_seconds: float = 600.0
    session_hours: float = 12.0
    secure_cookies: bool = False

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if self.session_hours <= 0:
            raise ValueError(f"session_hours must be > 0, got {self.session_hours}")
