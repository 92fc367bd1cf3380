"""`python -m active_learning score|select` on a small generated manifest, and pool
scoring that streams (rows written per batch, not held for the whole pool)."""
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from active_learning.__main__ import main
from active_learning.pool import read_scores, score_pool
from active_learning.scorers import ScoringConfig, build_scorer
from asr.checkpoint import save_checkpoint
from asr.config import EncoderConfig, ExperimentConfig, FeatureConfig, HeadConfig
from asr.data import read_manifest
from asr.model import ASRModel
from asr.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path, heads=None):
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = ExperimentConfig(features=FeatureConfig(n_mels=20),
                           encoder=EncoderConfig(subsampling=4, conv_channels=4, hidden_size=12, num_layers=1),
                           heads=heads or {"ctc": HeadConfig()})
    return save_checkpoint(path, cfg, tok, ASRModel(cfg, tok.vocab_size))


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_score_cli_writes_one_json_line_per_clip_then_select(tmp_path, tone_corpus):
    model = tiny_checkpoint(tmp_path / "m" / "model.pt")
    ids = [u.id for u in read_manifest(tone_corpus)]
    out = tmp_path / "egl.jsonl"
    proc = subprocess.run([sys.executable, "-m", "active_learning", "score", "--model", str(model),
                           "--corpus", "manifest", "--data", str(tone_corpus), "--method", "egl",
                           "--nbest", "2", "--beam", "3", "--batch-seconds", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "scoring" in proc.stderr  # the tqdm progress bar
    rows = read_lines(out)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(set(r) == {"id", "score", "hypothesis"} for r in rows)
    assert all(isinstance(r["score"], float) and r["score"] > 0 for r in rows)
    assert json.loads(proc.stdout.splitlines()[-1])["scored"] == len(ids)

    for method in ("confidence", "entropy", "random"):
        path = tmp_path / f"{method}.jsonl"
        args = ["score", "--corpus", "manifest", "--data", str(tone_corpus), "--method", method,
                "--out", str(path), "--no-progress"]
        assert main(args + ([] if method == "random" else ["--model", str(model)])) == 0
        got = read_lines(path)
        assert sorted(r["id"] for r in got) == sorted(ids) and all(r["score"] >= 0 for r in got)
        # the scorers that decode give their best hypothesis; random decodes nothing
        assert all(("hypothesis" in r) == (method != "random") for r in got)

    queue = tmp_path / "queue.jsonl"
    assert main(["select", "--scores", str(out), "--corpus", "manifest", "--data", str(tone_corpus),
                 "--hours", str(1.5 / 3600), "--out", str(queue)]) == 0
    chosen = read_manifest(queue)
    assert 0 < len(chosen) < len(ids) and sum(u.duration for u in chosen) <= 1.5
    by_id = {r["id"]: r["score"] for r in rows}
    assert all(u.meta["al_score"] == by_id[u.id] for u in chosen)
    assert chosen[0].meta["al_score"] == max(by_id.values())
    assert all(u.meta["hypothesis"] == r["hypothesis"] for u in chosen for r in rows if r["id"] == u.id)


def test_score_select_import_and_the_labeler_is_served_the_models_hypothesis(tmp_path, tone_corpus, capsys):
    """End to end: ``score`` (a decoding scorer) -> ``select`` -> ``queue import`` -> the
    clip the app gives a labeler carries the model's best hypothesis to correct."""
    from fastapi.testclient import TestClient

    from active_learning.queue import auth
    from active_learning.queue.app import create_app
    from active_learning.queue.config import QueueConfig
    from active_learning.queue.db import make_engine, session_factory
    from queue_helpers import PASSWORD

    model = tiny_checkpoint(tmp_path / "m" / "model.pt")
    scores, selected = tmp_path / "scores.jsonl", tmp_path / "selected.jsonl"
    db = f"sqlite:///{tmp_path / 'queue.db'}"
    assert main(["score", "--model", str(model), "--corpus", "manifest", "--data", str(tone_corpus),
                 "--method", "confidence", "--nbest", "2", "--beam", "3", "--out", str(scores),
                 "--no-progress"]) == 0
    hypotheses = {r["id"]: r["hypothesis"] for r in read_lines(scores)}
    assert all(hypotheses.values())  # the untrained model does say something
    assert main(["select", "--scores", str(scores), "--corpus", "manifest", "--data", str(tone_corpus),
                 "--hours", str(2.5 / 3600), "--out", str(selected)]) == 0
    chosen = [u.id for u in read_manifest(selected)]
    assert chosen
    assert main(["queue", "init-db", "--db", db]) == 0
    assert main(["queue", "import", "--db", db, str(selected)]) == 0
    with session_factory(make_engine(db))() as s:
        auth.add_user(s, "ann", PASSWORD)
        s.commit()
    capsys.readouterr()

    labeler = TestClient(create_app(QueueConfig(database_url=db)))
    assert labeler.post("/login", data={"name": "ann", "password": PASSWORD}).status_code == 200
    served = {}
    while (clip := labeler.post("/api/next").json()["clip"]) is not None:
        served[clip["utt_id"]] = clip["hypothesis"]
        assert labeler.post(f"/api/clips/{clip['id']}/submit", json={"text": "yes"}).json()["ok"]
    assert served == {uid: hypotheses[uid] for uid in chosen}


class FailingSecondBatch:
    """A scorer that dies on its second batch, as a long run might."""

    needs_audio = True

    def __init__(self):
        self.calls = 0

    def rows(self, ids, waves, wave_lens):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("killed")
        return [{"id": i, "score": float(n)} for i, n in zip(ids, wave_lens)]


def test_pool_scores_are_written_as_each_batch_finishes(tmp_path, tone_corpus):
    utts = read_manifest(tone_corpus)
    out = tmp_path / "scores.jsonl"
    with open(out, "w") as f, pytest.raises(RuntimeError, match="killed"):
        score_pool(FailingSecondBatch(), utts, f, batch_seconds=1.7, progress=False)
    first = read_lines(out)  # on disk before the failure
    assert 0 < len(first) < len(utts)
    # the whole pool with a real scorer: one row per clip, batch by batch
    scorer = build_scorer(None, ScoringConfig(method="random"))
    buf = io.StringIO()
    assert score_pool(scorer, utts, buf, progress=False) == {"scored": len(utts), "skipped": 0}
    assert len(buf.getvalue().splitlines()) == len(utts)


@pytest.mark.parametrize("method", ["confidence", "random"])
def test_unreadable_clip_is_skipped_and_counted(tmp_path, tone_corpus, method):
    """By every scorer, the random one too (which never decodes): all draw from one pool."""
    utts = read_manifest(tone_corpus)
    Path(utts[3].audio).write_bytes(b"not audio")
    Path(utts[5].audio).unlink()
    model = tiny_checkpoint(tmp_path / "m" / "model.pt")
    from asr.checkpoint import load_model
    scorer = build_scorer(load_model(model)[0], ScoringConfig(method=method, nbest=2, beam=2))
    buf = io.StringIO()
    assert score_pool(scorer, utts, buf, progress=False) == {"scored": len(utts) - 2, "skipped": 2}
    assert sorted(r["id"] for r in map(json.loads, buf.getvalue().splitlines())) == \
        sorted(u.id for i, u in enumerate(utts) if i not in (3, 5))


@pytest.mark.parametrize("bad, why", [
    ('{"id": "b", "score": 0.5', "not valid JSON"),
    ('["b", 0.5]', "JSON object"),
    ('{"id": "b"}', r"missing field\(s\) \['score'\]"),
    ('{"score": 0.5}', r"missing field\(s\) \['id'\]"),
    ('{"id": "b", "score": "high"}', "'score' must be a finite number"),
    ('{"id": "b", "score": NaN}', "'score' must be a finite number"),
    ('{"id": "b", "score": null}', "'score' must be a finite number"),
    ('{"id": "b", "score": 1, "hypothesis": ["b"]}', "'hypothesis' must be text"),
])
def test_a_bad_scores_line_is_refused_naming_the_file_and_line(tmp_path, bad, why):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"id": "a", "score": 1.0}\n\n' + bad + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + why):
        read_scores(path)
    path.write_text('{"id": 7, "score": 1}\n')
    assert read_scores(path) == {"7": 1.0}


def test_score_refuses_bad_arguments_before_touching_out_with_a_one_line_error(tmp_path, tone_corpus, capsys):
    model = tiny_checkpoint(tmp_path / "m" / "model.pt")
    out = tmp_path / "scores.jsonl"
    out.write_text('{"id": "earlier", "score": 1.0}\n')  # a scores file from an earlier run
    base = ["score", "--corpus", "manifest", "--data", str(tone_corpus), "--method", "egl",
            "--model", str(model), "--out", str(out), "--no-progress"]
    cases = [
        (["--nbest", "5", "--beam", "3"], "need 1 <= nbest <= beam"),
        (["--params", "decoder."], "no parameters"),
        (["--head", "transducer"], "not 'transducer'"),
        (["--model", str(tmp_path / "no" / "model.pt")], "checkpoint not found"),
        (["--data", str(tmp_path / "no" / "data.jsonl")], "manifest not found"),
        (["--corpus", "an5"], "unknown corpus 'an5'"),
        (["--corpus", "fsdd", "--data", str(tmp_path / "no")], "not found"),
        (["--limit", "0"], "--limit must be >= 1"),
    ]
    for extra, why in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and why in err[0], (extra, err)
        assert out.read_text() == '{"id": "earlier", "score": 1.0}\n', extra
    assert main(["score", "--corpus", "manifest", "--data", str(tone_corpus), "--method", "egl",
                 "--out", str(out)]) == 2
    assert "--model is needed" in capsys.readouterr().err


def test_a_scoring_run_that_fails_midway_leaves_the_earlier_scores_file(tmp_path, tone_corpus, capsys,
                                                                       monkeypatch):
    out = tmp_path / "scores.jsonl"
    out.write_text('{"id": "earlier", "score": 1.0}\n')
    monkeypatch.setattr("active_learning.scorers.RandomScorer.draw",
                        lambda self, uid: (_ for _ in ()).throw(RuntimeError("killed")))
    args = ["score", "--corpus", "manifest", "--data", str(tone_corpus), "--method", "random",
            "--out", str(out), "--no-progress"]
    assert main(args) == 2 and "error: killed" in capsys.readouterr().err
    assert out.read_text() == '{"id": "earlier", "score": 1.0}\n'
    monkeypatch.undo()
    assert main(args) == 0
    assert sorted(r["id"] for r in read_lines(out)) == sorted(u.id for u in read_manifest(tone_corpus))
    assert not Path(str(out) + ".tmp").exists()


def test_score_with_limit_counts_only_the_skipped_clips_among_those_scored(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for name in ("0_ann_0", "1_ann_0", "2_bob_0", "3_bob_0"):
        sf.write(rec / f"{name}.wav", np.zeros(4000, dtype=np.float32) + 0.1, 8000)
    (rec / "4_bob_0.wav").write_bytes(b"not audio")  # left out by the reader
    (rec / "notes.wav").write_bytes(b"not a digit")  # so is this one

    def score(*extra):
        assert main(["score", "--corpus", "fsdd", "--data", str(tmp_path / "fsdd"), "--method", "random",
                     "--out", str(tmp_path / "s.jsonl"), "--no-progress", *extra]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    whole = score()
    assert (whole["scored"], whole["skipped"]) == (4, 2)
    limited = score("--limit", "2")
    assert (limited["scored"], limited["skipped"]) == (2, 0)
