"""Who gets what from the labeling queue's app: nothing without a valid sign-in, nothing
of another labeler's lease, nothing of the admin pages for a labeler."""
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from active_learning.queue import auth
from active_learning.queue.app import create_app
from active_learning.queue.config import QueueConfig
from active_learning.queue.models import AuthSession, Clip, Label, User
from queue_helpers import PASSWORD, make_clips, make_queue

PUBLIC = {("GET", "/login"), ("POST", "/login")}
VALID = {"json": {"text": "x"}}
MALFORMED = {"content": b'{"text": "x"', "headers": {"content-type": "application/json"}}
WRONG_SHAPE = {"json": {"text": ["x"] * 3, "note": {"a": 1}}}


@pytest.fixture
def app_and_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    sessions = make_queue(url, make_clips(tmp_path / "clips", 3),
                          {"ann": "labeler", "bob": "labeler", "boss": "admin"})
    return create_app(QueueConfig(database_url=url)), sessions


def signed_in(app, name, password=PASSWORD):
    client = TestClient(app, follow_redirects=False)
    r = client.post("/login", data={"name": name, "password": password})
    assert r.status_code == 303, r.text
    return client


def every_route(app):
    """(method, path) of every route, from the app's OpenAPI description (public API)."""
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            yield method.upper(), path.replace("{clip_id}", "1")


def test_every_route_but_sign_in_refuses_requests_without_a_valid_session(app_and_db):
    app, sessions = app_and_db
    routes = [r for r in every_route(app) if r not in PUBLIC]
    assert len(routes) >= 10
    for cookie in (None, "forged-token"):
        client = TestClient(app, follow_redirects=False)
        if cookie:
            client.cookies.set(auth.SESSION_COOKIE, cookie)
        for method, path in routes:
            # a body or a path the route could not parse is no way past the sign-in either
            for body, where in ((VALID, path), (MALFORMED, path), (WRONG_SHAPE, path),
                                (VALID, path.replace("/1/", "/one/"))):
                r = client.request(method, where, **body)
                if path.startswith("/api/"):
                    assert r.status_code == 401, (method, where, body, r.status_code, r.text)
                    assert r.json() == {"detail": "sign in first"}
                else:  # pages send the browser to sign in, with nothing else
                    assert (r.status_code, r.headers["location"]) == (303, "/login"), (method, path)
                    assert r.content == b""
    with sessions() as db:
        assert db.scalar(select(func.count(Label.id))) == 0
        assert db.scalar(select(func.count(Clip.id)).where(Clip.lease_user_id.is_not(None))) == 0


def test_wrong_password_gets_no_session_and_passwords_are_hashed(app_and_db):
    app, sessions = app_and_db
    client = TestClient(app, follow_redirects=False)
    for name, password in (("ann", "wrong password"), ("nobody", PASSWORD), ("ann", "")):
        r = client.post("/login", data={"name": name, "password": password})
        assert r.status_code in (401, 422) and auth.SESSION_COOKIE not in r.cookies
    assert client.post("/api/next").status_code == 401
    with sessions() as db:
        hashes = db.scalars(select(User.password_hash)).all()
    assert all(h.startswith("$argon2id$") and PASSWORD not in h for h in hashes)


def test_expired_and_signed_out_sessions_stop_working(app_and_db):
    app, sessions = app_and_db
    client = signed_in(app, "ann")
    assert client.get("/api/me").json() == {"name": "ann", "role": "labeler"}
    token = client.cookies.get(auth.SESSION_COOKIE)
    with sessions() as db:
        db.execute(AuthSession.__table__.update().values(expires_at=0.0))
        db.commit()
    assert client.get("/api/me").status_code == 401
    client = signed_in(app, "ann")
    token = client.cookies.get(auth.SESSION_COOKIE)
    assert client.post("/logout").status_code == 303
    replay = TestClient(app, follow_redirects=False)
    replay.cookies.set(auth.SESSION_COOKIE, token)  # the old cookie, kept by someone
    assert replay.get("/api/me").status_code == 401


def test_a_labeler_gets_nothing_of_another_labelers_lease(app_and_db):
    app, sessions = app_and_db
    ann, bob = signed_in(app, "ann"), signed_in(app, "bob")
    clip = ann.post("/api/next").json()["clip"]
    assert clip["hypothesis"] == "hyp 0"
    assert ann.get(clip["audio_url"]).status_code == 200
    assert ann.get(clip["audio_url"]).content[:4] == b"RIFF"
    theirs = f"/api/clips/{clip['id']}"
    assert bob.get(theirs + "/audio").status_code == 404
    assert bob.post(theirs + "/submit", json={"text": "stolen"}).status_code == 409
    assert bob.post(theirs + "/skip").status_code == 409
    assert bob.post(theirs + "/flag", json={"note": "x"}).status_code == 409
    other = bob.post("/api/next").json()["clip"]
    assert other["id"] != clip["id"]
    assert ann.get(other["audio_url"]).status_code == 404  # and the other way round
    with sessions() as db:
        assert db.scalar(select(func.count(Label.id))) == 0
        row = db.get(Clip, clip["id"])
        assert row.lease_user_id == 1 and not row.flagged and row.labels_done == 0
    assert ann.post(theirs + "/submit", json={"text": "hello"}).json()["ok"] is True
    assert bob.post(theirs + "/submit", json={"text": "again"}).status_code == 409


def test_only_admins_reach_the_admin_pages(app_and_db):
    app, _ = app_and_db
    ann = signed_in(app, "ann")
    clip = ann.post("/api/next").json()["clip"]
    ann.post(f"/api/clips/{clip['id']}/submit", json={"text": "hello"})
    for path in ("/admin", "/api/admin/stats"):
        r = ann.get(path)
        assert r.status_code == 403 and "ann" not in r.text and "progress" not in r.text
    boss = signed_in(app, "boss")
    stats = boss.get("/api/admin/stats").json()
    assert stats["progress"]["complete"] == 1
    assert {l["name"]: l["labels"] for l in stats["labelers"]}["ann"] == 1
    page = boss.get("/admin")
    assert page.status_code == 200 and "<td>ann</td>" in page.text
    # an admin may listen to any queued clip; nobody to a clip that is not in the queue
    assert boss.get(f"/api/clips/{clip['id']}/audio").status_code == 200
    assert boss.get("/api/clips/999/audio").status_code == 404


def test_an_empty_transcript_is_refused_and_the_clip_stays_with_its_labeler(app_and_db):
    from active_learning.queue.transfer import export_labeled

    app, sessions = app_and_db
    ann = signed_in(app, "ann")
    clip = ann.post("/api/next").json()["clip"]
    for text in ("", "   ", " \n\t "):
        r = ann.post(f"/api/clips/{clip['id']}/submit", json={"text": text})
        assert r.status_code == 422, (text, r.status_code)
        assert "transcript is empty" in r.json()["detail"] and "skip" in r.json()["detail"]
    with sessions() as db:
        assert db.scalar(select(func.count(Label.id))) == 0
        row = db.get(Clip, clip["id"])
        assert row.lease_user_id == 1 and row.labels_done == 0
    assert ann.post("/api/next").json()["clip"]["id"] == clip["id"]  # still hers to answer
    assert ann.post(f"/api/clips/{clip['id']}/submit", json={"text": " hello "}).json()["ok"] is True
    with sessions() as db:
        assert [(u.id, u.text) for u in export_labeled(db)] == [(clip["utt_id"], "hello")]


def test_a_signed_in_labeler_still_gets_the_details_of_a_malformed_body(app_and_db):
    app, sessions = app_and_db
    ann = signed_in(app, "ann")
    clip = ann.post("/api/next").json()["clip"]
    r = ann.post(f"/api/clips/{clip['id']}/submit", **MALFORMED)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = ann.post(f"/api/clips/{clip['id']}/submit", **WRONG_SHAPE)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "text"]
    with sessions() as db:
        assert db.scalar(select(func.count(Label.id))) == 0
