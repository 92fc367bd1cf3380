"""``python -m active_learning queue {init-db,add-user,import,serve,export,stats}``.

The database is ``--db URL`` (a SQLite path or URL, or ``postgresql://user@host/db``),
else $QUEUE_DATABASE_URL, else ``sqlite:///queue.db``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from active_learning.queue.config import DEFAULT_DATABASE_URL, QueueConfig


def _sessions(url: str):
    from active_learning.queue.db import make_engine, session_factory

    return session_factory(make_engine(url))


def _init_db(args) -> int:
    from active_learning.queue.db import current_revision, make_engine, migrate

    engine = make_engine(args.db)
    migrate(engine)
    print(json.dumps({"db": engine.url.render_as_string(hide_password=True),
                      "revision": current_revision(engine)}))
    return 0


def _read_password(args) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("passwords differ")
    if len(password) < 8:
        raise SystemExit("a password needs at least 8 characters")
    return password


def _add_user(args) -> int:
    from active_learning.queue.auth import AuthError, add_user, set_password

    password = _read_password(args)
    with _sessions(args.db)() as db:
        try:
            if args.reset:
                set_password(db, args.name, password)
            else:
                add_user(db, args.name, password, args.role)
        except AuthError as exc:
            raise SystemExit(str(exc)) from None
        db.commit()
    print(json.dumps({"user": args.name, "role": args.role, "password_reset": args.reset}))
    return 0


def _import(args) -> int:
    from active_learning.pool import read_score_rows, selected_for_labeling
    from active_learning.queue.transfer import import_candidates
    from asr.data import read_manifest

    utts = read_manifest(args.manifest)
    if args.scores:  # its score is the priority, its hypothesis (where it decoded) the prefill
        rows = read_score_rows(args.scores)
        scored = {u.id: u for u in selected_for_labeling(
            [(u, rows[u.id]["score"]) for u in utts if u.id in rows], rows)}
        utts = [scored.get(u.id, u) for u in utts]
    with _sessions(args.db)() as db:
        counts = import_candidates(db, utts, labels_wanted=args.labels_per_clip)
        db.commit()
    print(json.dumps({"manifest": args.manifest, **counts}))
    return 0


def _export(args) -> int:
    from active_learning.queue.transfer import export_labeled
    from asr.data import write_manifest

    with _sessions(args.db)() as db:
        utts = export_labeled(db, complete_only=args.complete_only)
    write_manifest(utts, args.out)
    print(json.dumps({"out": args.out, "clips": len(utts),
                      "hours": round(sum(u.duration for u in utts) / 3600.0, 4)}))
    return 0


def _stats(args) -> int:
    from active_learning.queue.stats import queue_stats

    with _sessions(args.db)() as db:
        print(json.dumps(queue_stats(db), indent=2))
    return 0


def _serve(args) -> int:
    import uvicorn

    from active_learning.queue.app import create_app
    from active_learning.queue.db import make_engine, migrate

    migrate(make_engine(args.db))  # a no-op when the schema is current
    config = QueueConfig(database_url=args.db, lease_seconds=args.lease_seconds,
                         session_hours=args.session_hours, secure_cookies=args.secure_cookies)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_queue_parser(sub) -> None:
    q = sub.add_parser("queue", help="the labeling queue web app")
    qs = q.add_subparsers(dest="queue_command", required=True)
    default_db = os.environ.get("QUEUE_DATABASE_URL", DEFAULT_DATABASE_URL)

    def command(name, func, help):
        p = qs.add_parser(name, help=help)
        p.add_argument("--db", default=default_db, help=f"database URL or SQLite path (default {default_db})")
        p.set_defaults(func=func)
        return p

    command("init-db", _init_db, "create or upgrade the schema")

    p = command("add-user", _add_user, "add a user; the password is read from stdin or prompted")
    p.add_argument("name")
    p.add_argument("--role", choices=("labeler", "admin"), default="labeler")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--reset", action="store_true", help="set a new password for an existing user")

    p = command("import", _import, "queue scored candidates (e.g. the manifest `select` wrote)")
    p.add_argument("manifest")
    p.add_argument("--scores", help="scores file (`score` output: id, score and, where the scorer "
                   "decoded, hypothesis); default: each clip's meta.al_score and meta.hypothesis")
    p.add_argument("--labels-per-clip", type=int, default=1,
                   help="labels wanted per clip; 2 measures agreement between labelers")

    p = command("export", _export, "labeled clips as a training manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--complete-only", action="store_true",
                   help="leave out clips still waiting for more labels")

    command("stats", _stats, "progress, per-labeler counts and agreement as JSON")

    p = command("serve", _serve, "run the web app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lease-seconds", type=float, default=QueueConfig.lease_seconds)
    p.add_argument("--session-hours", type=float, default=QueueConfig.session_hours)
    p.add_argument("--secure-cookies", action="store_true", help="when served over HTTPS")
    p.add_argument("--log-level", default="info")
