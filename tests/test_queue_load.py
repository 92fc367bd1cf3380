"""The labeling queue under load, through the real server (uvicorn in a subprocess): 20
labelers at once submit 500 labels in all, on SQLite and on PostgreSQL; every label
acknowledged is stored once, no clip is labeled twice, none is left out."""
import threading
from collections import Counter

import pytest
from sqlalchemy import select

from active_learning.queue.models import Clip, Label, User
from queue_helpers import QueueServer, make_clips, make_queue, signed_in_client

LABELERS = 20
CLIPS = 500


@pytest.mark.timeout(240)
def test_twenty_labelers_submit_500_labels_and_lose_or_duplicate_none(queue_db_url, tmp_path):
    names = [f"labeler{i:02d}" for i in range(LABELERS)]
    sessions = make_queue(queue_db_url, make_clips(tmp_path / "clips", CLIPS),
                          {n: "labeler" for n in names})
    server = QueueServer(queue_db_url, log_path=tmp_path / "server.log").start()
    acked, refused, errors = [], [], []
    start = threading.Barrier(LABELERS)

    def labeler(name):
        try:
            client = signed_in_client(server.base, name)
            start.wait()
            try:
                while True:
                    r = client.post("/api/next")
                    r.raise_for_status()
                    clip = r.json()["clip"]
                    if clip is None:
                        return
                    text = f"{name} says {clip['utt_id']}"
                    r = client.post(f"/api/clips/{clip['id']}/submit", json={"text": text})
                    if r.is_success:
                        acked.append((clip["utt_id"], name, text))
                    else:
                        refused.append((clip["utt_id"], name, r.status_code))
            finally:
                client.close()
        except Exception as exc:  # surfaced below; an assert in a thread would be lost
            errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=labeler, args=(n,)) for n in names]
    try:
        [t.start() for t in threads]
        [t.join(200) for t in threads]
    finally:
        server.stop()
    assert not errors and not refused
    assert len(acked) == CLIPS
    assert len({utt for utt, _, _ in acked}) == CLIPS  # no clip handed out twice
    with sessions() as db:
        stored = db.execute(select(Clip.utt_id, User.name, Label.text).join(Label, Label.clip_id == Clip.id)
                            .join(User, User.id == Label.user_id)).all()
        assert db.scalar(select(Clip.id).where(Clip.labels_done != 1)) is None
        assert db.scalar(select(Clip.id).where(Clip.lease_user_id.is_not(None))) is None
    assert sorted(map(tuple, stored)) == sorted(acked)  # nothing lost, nothing extra
    per_labeler = Counter(name for _, name, _ in acked)
    assert len(per_labeler) == LABELERS  # all twenty really worked at once
