"""Shared set-up for the labeling queue's tests: clips on disk, a migrated database with
users, and the real server in a subprocess."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import httpx
import numpy as np
import soundfile as sf

from active_learning.queue import auth
from active_learning.queue.db import make_engine, migrate, session_factory
from active_learning.queue.transfer import import_candidates
from asr.data import Utterance

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def make_clips(root: Path, n: int, sr: int = 8000, hypothesis: str = "") -> List[Utterance]:
    """``n`` short clips sharing one small wav file (their audio is served, not decoded),
    scores descending with the index, each with a hypothesis in meta."""
    root.mkdir(parents=True, exist_ok=True)
    wav = root / "tone.wav"
    t = np.arange(int(0.3 * sr)) / sr
    sf.write(wav, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    return [Utterance(id=f"clip{i:04d}", audio=str(wav), duration=0.3, text="", sample_rate=sr,
                      speaker=f"s{i % 3}", meta={"al_score": float(n - i),
                                                 "hypothesis": hypothesis or f"hyp {i}"})
            for i in range(n)]


def make_queue(url: str, clips: Sequence[Utterance], users: Dict[str, str], labels_wanted: int = 1):
    """Migrate ``url``, add ``users`` ({name: role}, all with PASSWORD) and import ``clips``.
    Returns a session factory on the database."""
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as db:
        for name, role in users.items():
            auth.add_user(db, name, PASSWORD, role)
        import_candidates(db, clips, labels_wanted=labels_wanted)
        db.commit()
    return sessions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QueueServer:
    """``python -m active_learning queue serve`` (uvicorn) on 127.0.0.1 and a free port."""

    def __init__(self, url: str, lease_seconds: float = 600.0, log_path: Path | None = None):
        self.db_url, self.lease_seconds, self.log_path = url, lease_seconds, log_path
        self.proc = None

    def start(self, timeout: float = 60.0) -> "QueueServer":
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "active_learning", "queue", "serve", "--db", self.db_url,
             "--port", str(self.port), "--lease-seconds", str(self.lease_seconds), "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"queue server exited with {self.proc.returncode} (log: {self.log_path})")
            try:
                if httpx.get(self.base + "/login", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("queue server did not come up")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def signed_in_client(base: str, name: str, timeout: float = 30.0) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=timeout)
    r = client.post("/login", data={"name": name, "password": PASSWORD})
    assert r.status_code == 303, (r.status_code, r.text)
    return client
