"""``python -m active_learning queue init-db|add-user|import|stats|export`` on a manifest
such as ``select`` writes (meta.al_score, meta.hypothesis)."""
import io
import json

from active_learning.__main__ import main
from active_learning.queue import auth, leases
from active_learning.queue.db import make_engine, session_factory
from asr.data import read_manifest, write_manifest
from queue_helpers import make_clips


def run(capsys, monkeypatch, *args, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["queue", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_queue_cli_init_add_user_import_stats_export(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "queue.db")  # a bare path means SQLite
    manifest = write_manifest(make_clips(tmp_path / "clips", 3), tmp_path / "selected.jsonl")
    assert run(capsys, monkeypatch, "init-db", "--db", db)["revision"] == "0001"
    assert run(capsys, monkeypatch, "init-db", "--db", db)["revision"] == "0001"  # idempotent
    run(capsys, monkeypatch, "add-user", "--db", db, "ann", "--password-stdin", stdin="a long secret\n")
    run(capsys, monkeypatch, "add-user", "--db", db, "boss", "--role", "admin", stdin="another secret\n")
    assert run(capsys, monkeypatch, "import", "--db", db, str(manifest))["added"] == 3
    assert run(capsys, monkeypatch, "import", "--db", db, str(manifest))["already_queued"] == 3

    sessions = session_factory(make_engine(db))
    with sessions() as s:
        assert auth.check_password(s, "ann", "a long secret").role == "labeler"
        assert auth.check_password(s, "boss", "another secret").role == "admin"
        assert auth.check_password(s, "ann", "another secret") is None
        clip = leases.take_next(s, 1, 60)
        leases.submit(s, 1, clip.id, "hello there")
        s.commit()

    stats = json.loads(run_raw(capsys, monkeypatch, "stats", "--db", db))
    assert stats["progress"] == {"clips": 3, "complete": 1, "flagged": 0, "remaining": 2,
                                 "leased_now": 0, "labels_left": 2}
    out = tmp_path / "labeled.jsonl"
    assert run(capsys, monkeypatch, "export", "--db", db, "--out", str(out))["clips"] == 1
    [utt] = read_manifest(out)
    assert (utt.id, utt.text, utt.meta["hypothesis"], utt.meta["al_score"]) == ("clip0000", "hello there", "hyp 0", 3.0)


def run_raw(capsys, monkeypatch, *args):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["queue", *args]) == 0
    return capsys.readouterr().out


def test_queue_import_leaves_out_clips_whose_audio_cannot_be_read(tmp_path, capsys, monkeypatch, caplog):
    from pathlib import Path

    from sqlalchemy import select

    from active_learning.queue.models import Clip

    db = str(tmp_path / "queue.db")
    clips = make_clips(tmp_path / "clips", 3)
    clips[1].audio = str(tmp_path / "clips" / "gone.wav")
    clips[2].audio = str(tmp_path / "clips" / "noise.wav")
    Path(clips[2].audio).write_bytes(b"not audio")
    manifest = write_manifest(clips, tmp_path / "selected.jsonl")
    run(capsys, monkeypatch, "init-db", "--db", db)
    counts = run(capsys, monkeypatch, "import", "--db", db, str(manifest))
    assert counts == {"manifest": str(manifest), "added": 1, "already_queued": 0, "unscored": 0,
                      "unreadable": 2}
    assert "gone.wav (id clip0001): no such file" in caplog.text
    assert "noise.wav (id clip0002): cannot read header" in caplog.text
    with session_factory(make_engine(db))() as s:
        assert s.scalars(select(Clip.utt_id)).all() == ["clip0000"]


def test_queue_import_takes_priority_and_hypothesis_from_a_scores_file(tmp_path, capsys, monkeypatch):
    """``import --scores``: a clip in the scores file is queued at its score with the
    scorer's hypothesis to start from; one not in it keeps its manifest's."""
    from sqlalchemy import select

    from active_learning.queue.models import Clip

    db = str(tmp_path / "queue.db")
    manifest = write_manifest(make_clips(tmp_path / "clips", 3), tmp_path / "pool.jsonl")
    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps({"id": "clip0001", "score": 9.5, "hypothesis": "turn left"}) + "\n"
                      + json.dumps({"id": "clip0002", "score": 0.5}) + "\n")
    run(capsys, monkeypatch, "init-db", "--db", db)
    assert run(capsys, monkeypatch, "import", "--db", db, str(manifest), "--scores", str(scores))["added"] == 3
    with session_factory(make_engine(db))() as s:
        got = {c.utt_id: (c.priority, c.hypothesis) for c in s.scalars(select(Clip))}
    assert got == {"clip0000": (3.0, "hyp 0"), "clip0001": (9.5, "turn left"), "clip0002": (0.5, "hyp 2")}
