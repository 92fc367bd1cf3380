"""Killing the labeling queue's server (SIGKILL) while labelers submit loses no label whose
submit was acknowledged; after a restart on the same database the labelers carry on and
every clip ends with exactly one label."""
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select

from active_learning.queue.models import Clip, Label, User
from queue_helpers import QueueServer, make_clips, make_queue, signed_in_client

LABELERS = 6
CLIPS = 150
KILL_AFTER = 40  # acknowledged labels before the kill


def label_until_done_or_gone(base, name, cookies, acked, errors, stop, cut_off):
    """Take and submit clips until the queue is empty or the server goes away."""
    client = httpx.Client(base_url=base, timeout=30, cookies=cookies)
    try:
        while not stop.is_set():
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
                errors.append(f"{name}: submit answered {r.status_code}")
    except httpx.TransportError:
        cut_off.append(name)
        return  # the server died under us: whatever was not acknowledged may be lost
    except Exception as exc:
        errors.append(f"{name}: {exc!r}")
    finally:
        client.close()


def run_labelers(base, cookies, acked, errors, stop, cut_off):
    threads = [threading.Thread(target=label_until_done_or_gone, args=(base, n, c, acked, errors, stop, cut_off))
               for n, c in cookies.items()]
    [t.start() for t in threads]
    return threads


@pytest.mark.timeout(240)
def test_sigkill_during_submissions_loses_no_acknowledged_label(queue_db_url, tmp_path):
    names = [f"labeler{i}" for i in range(LABELERS)]
    sessions = make_queue(queue_db_url, make_clips(tmp_path / "clips", CLIPS), {n: "labeler" for n in names})
    server = QueueServer(queue_db_url, log_path=tmp_path / "server.log").start()
    cookies = {}
    for n in names:
        client = signed_in_client(server.base, n)
        cookies[n] = dict(client.cookies)
        client.close()
    acked, errors, stop, cut_off = [], [], threading.Event(), []
    try:
        threads = run_labelers(server.base, cookies, acked, errors, stop, cut_off)
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()  # mid-stream: others' submits are in flight
        [t.join(60) for t in threads]
        before_kill = list(acked)
        assert not errors and KILL_AFTER <= len(before_kill) < CLIPS
        assert len(cut_off) == LABELERS  # the kill came while every labeler was still at work

        with sessions() as db:  # straight from the database, before anything else runs
            stored = set(db.execute(select(Clip.utt_id, User.name, Label.text)
                                    .join(Label, Label.clip_id == Clip.id)
                                    .join(User, User.id == Label.user_id)).all())
        lost = [a for a in before_kill if a not in stored]
        assert not lost, f"acknowledged but lost: {lost[:5]}"

        # same database, new process; sign-ins and leases live in the database, so the
        # labelers carry on with their cookies and the clips they held
        server = QueueServer(queue_db_url, log_path=tmp_path / "server.log").start()
        [t.join(200) for t in run_labelers(server.base, cookies, acked, errors, stop, [])]
    finally:
        stop.set()
        server.stop()
    assert not errors
    with sessions() as db:
        per_clip = dict(db.execute(select(Clip.utt_id, func.count(Label.id))
                                   .outerjoin(Label, Label.clip_id == Clip.id).group_by(Clip.utt_id)).all())
        stored = set(db.execute(select(Clip.utt_id, User.name, Label.text).join(Label, Label.clip_id == Clip.id)
                                .join(User, User.id == Label.user_id)).all())
    assert set(per_clip.values()) == {1} and len(per_clip) == CLIPS  # none lost, none twice
    assert set(acked) <= stored
