"""The labeling queue's database operations, on SQLite and on a real PostgreSQL server:
priority order, one holder per clip, leases that run out, skip/flag, clips labeled twice,
import and export."""
import json
import threading

import pytest
from sqlalchemy import func, select

from active_learning.queue import leases
from active_learning.queue.models import Clip, Label
from active_learning.queue.stats import queue_stats
from active_learning.queue.transfer import export_labeled, import_candidates
from asr.data import read_manifest, write_manifest
from queue_helpers import make_clips, make_queue

USERS = {"ann": "labeler", "bob": "labeler", "cat": "labeler", "boss": "admin"}
ANN, BOB, CAT = 1, 2, 3


@pytest.fixture
def queue(queue_db_url, tmp_path):
    return make_queue(queue_db_url, make_clips(tmp_path / "clips", 6), USERS)


def take(sessions, user, lease=60.0, now=None):
    with sessions() as db:
        clip = leases.take_next(db, user, lease, now=now)
        db.commit()
        return clip


def test_clips_come_by_priority_and_never_to_two_labelers(queue):
    got = [take(queue, u) for u in (ANN, BOB, CAT)]
    assert [c.utt_id for c in got] == ["clip0000", "clip0001", "clip0002"]  # highest score first
    assert take(queue, ANN).utt_id == "clip0000"  # asking again returns the clip you hold
    with queue() as db:
        holders = db.execute(select(Clip.utt_id, Clip.lease_user_id).where(Clip.lease_user_id.is_not(None))).all()
    assert sorted(holders) == [("clip0000", ANN), ("clip0001", BOB), ("clip0002", CAT)]


def test_concurrent_takers_get_distinct_clips(queue_db_url, tmp_path):
    sessions = make_queue(queue_db_url, make_clips(tmp_path / "clips", 40),
                          {f"u{i}": "labeler" for i in range(8)})
    taken, errors = [], []
    start = threading.Barrier(8)

    def worker(user):
        try:
            start.wait()
            for _ in range(5):
                with sessions() as db:  # as the app does: take, commit; submit, commit
                    clip = leases.take_next(db, user, 60.0)
                    db.commit()
                    taken.append(clip.utt_id)
                    leases.submit(db, user, clip.id, f"by {user}")
                    db.commit()
        except Exception as exc:  # surfaced below; a thread's assert would be lost
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(u,)) for u in range(1, 9)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors
    assert len(taken) == 40 and len(set(taken)) == 40
    with sessions() as db:
        assert db.scalar(select(func.count(Label.id))) == 40
        assert db.scalar(select(func.count(Clip.id)).where(Clip.labels_done == 1)) == 40


def test_an_abandoned_lease_returns_to_the_queue(queue):
    t0 = 1_000_000.0
    first = take(queue, ANN, lease=30, now=t0)
    assert take(queue, BOB, lease=30, now=t0 + 10).utt_id != first.utt_id  # still ann's
    again = take(queue, CAT, lease=30, now=t0 + 31)  # ann's lease ran out
    assert again.utt_id == first.utt_id
    assert take(queue, ANN, now=t0 + 32).utt_id not in (first.utt_id, "clip0001")  # ann moves on
    with queue() as db, pytest.raises(leases.LeaseError):
        leases.submit(db, ANN, first.id, "too late")  # cat holds it now
    with queue() as db:
        leases.submit(db, CAT, first.id, "in time")
        db.commit()
        assert [l.text for l in db.scalars(select(Label).where(Label.clip_id == first.id))] == ["in time"]


def test_a_late_submit_counts_when_nobody_took_the_clip(queue):
    clip = take(queue, ANN, lease=30, now=1_000_000.0)
    with queue() as db:  # long after the lease ran out, but the clip is still ann's
        leases.submit(db, ANN, clip.id, "slow but fine", now=1_000_500.0)
        db.commit()
        assert db.get(Clip, clip.id).labels_done == 1


def test_nobody_answers_for_a_clip_they_do_not_hold(queue):
    clip = take(queue, ANN)
    for action in (lambda db: leases.submit(db, BOB, clip.id, "mine now"),
                   lambda db: leases.skip(db, BOB, clip.id),
                   lambda db: leases.flag(db, BOB, clip.id, "bad")):
        with queue() as db, pytest.raises(leases.LeaseError):
            action(db)
    with queue() as db:
        assert db.get(Clip, clip.id).lease_user_id == ANN
        assert db.scalar(select(func.count(Label.id))) == 0


def test_skip_passes_the_clip_to_others_and_flag_removes_it(queue):
    first = take(queue, ANN)
    with queue() as db:
        leases.skip(db, ANN, first.id)
        db.commit()
    assert take(queue, ANN).utt_id != first.utt_id  # not offered again to who skipped it
    assert take(queue, BOB).utt_id == first.utt_id  # but back for everyone else
    with queue() as db:
        leases.flag(db, BOB, first.id, "no speech")
        db.commit()
    offered = {take(queue, CAT).utt_id}
    with queue() as db:
        assert db.get(Clip, first.id).flagged
        assert queue_stats(db)["progress"]["flagged"] == 1
    assert first.utt_id not in offered


def test_clips_labeled_twice_go_to_two_labelers_and_give_agreement(queue_db_url, tmp_path):
    sessions = make_queue(queue_db_url, make_clips(tmp_path / "clips", 2), USERS, labels_wanted=2)
    said = {ANN: ["hello world", "one two"], BOB: ["Hello  World", "one too"]}
    for user in (ANN, BOB):
        for text in said[user]:
            clip = take(sessions, user)
            with sessions() as db:
                leases.submit(db, user, clip.id, text)
                db.commit()
        assert take(sessions, user) is None  # never the same clip twice to one labeler
    assert take(sessions, CAT) is None  # both clips have their two labels
    with sessions() as db:
        stats = queue_stats(db)
        exported = export_labeled(db, complete_only=True)
    assert stats["agreement"] == {"clips_labeled_twice": 2, "exact_agreement": 0.5, "mean_wer": 0.25}
    assert stats["progress"]["complete"] == 2
    counts = {l["name"]: l["labels"] for l in stats["labelers"]}
    assert counts == {"ann": 2, "bob": 2, "cat": 0, "boss": 0}
    assert [u.meta["labels_agree"] for u in exported] == [True, False]
    assert exported[0].meta["labelers"] == ["ann", "bob"]


def test_import_takes_scores_and_hypotheses_and_export_writes_a_manifest(queue_db_url, tmp_path):
    clips = make_clips(tmp_path / "clips", 4, hypothesis="the model's guess")
    clips[3].meta = {"nbest": [{"text": "best of n"}, {"text": "second"}]}  # no al_score
    clips[2].meta["al_score"] = 99.0  # a scores file's priority, as `queue import --scores` sets it
    sessions = make_queue(queue_db_url, [], USERS)
    with sessions() as db:
        counts = import_candidates(db, clips)
        again = import_candidates(db, clips)  # importing twice adds nothing
        db.commit()
    assert counts == {"added": 4, "already_queued": 0, "unscored": 1, "unreadable": 0}
    assert again["added"] == 0
    order = []
    for user in (ANN, BOB, CAT, 4):
        clip = take(sessions, user)
        order.append((clip.utt_id, clip.hypothesis))
        with sessions() as db:
            leases.submit(db, user, clip.id, f"text of {clip.utt_id}")
            db.commit()
    assert order == [("clip0002", "the model's guess"), ("clip0000", "the model's guess"),
                     ("clip0001", "the model's guess"), ("clip0003", "best of n")]
    with sessions() as db:
        path = write_manifest(export_labeled(db), tmp_path / "labeled.jsonl")
    back = read_manifest(path)
    assert [u.id for u in back] == ["clip0002", "clip0000", "clip0001", "clip0003"]
    assert all(u.text == f"text of {u.id}" for u in back)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["meta"]["al_score"] == 99.0 and first["meta"]["labelers"] == ["ann"]
    assert first["audio"] == clips[2].audio and first["sample_rate"] == 8000


def test_the_migrations_build_the_schema_the_models_describe(queue_db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from active_learning.queue.db import make_engine, migrate
    from active_learning.queue.models import Base

    engine = make_engine(queue_db_url)
    migrate(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
