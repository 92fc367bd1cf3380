import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

WORDS = ["yes", "no", "up", "down"]


def make_tone_corpus(root: Path, n: int = 8, sr: int = 16000, seed: int = 0):
    """Tiny manifest of tones whose pitch depends on the word: learnable, instant to make."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        dur = float(rng.uniform(0.4, 0.8))
        t = np.arange(int(dur * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(word)) * t)
        wave += 0.01 * rng.standard_normal(t.size)
        path = root / f"utt{i}.wav"
        sf.write(path, wave.astype(np.float32), sr)
        lines.append({"id": f"utt{i}", "audio": str(path), "duration": dur,
                      "sample_rate": sr, "text": word, "speaker": f"s{i % 2}"})
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return manifest


@pytest.fixture
def tone_corpus(tmp_path):
    return make_tone_corpus(tmp_path / "tones")


# --- PostgreSQL for the labeling queue's tests: a throwaway server the tests start ---

def _postgres_binary(name: str):
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return versions[-1] if versions else None


def load_bench(filename: str):
    """A script of bench/ imported as a module (bench/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on a temporary directory and a free port for this test session
    (Debian's postgresql package; ./run.sh installs it). Yields its base URL."""
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="queue-pg-"))
    as_user = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as its own system user
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", account.pw_name, "--"]
    port = free_port()
    data, log = root / "data", root / "server.log"
    run = lambda cmd: subprocess.run(as_user + cmd, check=True, capture_output=True, text=True, cwd=root)
    run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
    try:
        run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200", "start"])
    except subprocess.CalledProcessError as exc:
        tail = log.read_text() if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{tail}") from None
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"queue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db_url(request, tmp_path):
    """The labeling queue's database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("postgres_url")
