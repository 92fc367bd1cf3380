"""The active-learning loop (``python -m active_learning simulate``) on the generated tone
corpus: rounds at equal labeled hours across strategies, no clip selected twice, simulated
labels that are the held-back transcripts, resume after an interruption, the labeling
queue as the label source, config errors that name the field."""
import json
import re
from pathlib import Path

import pytest
import yaml

from active_learning import loop as loop_mod
from active_learning.__main__ import main
from active_learning.loop import Loop, load_loop_config
from asr.config import ConfigError
from asr.data import read_manifest
from conftest import make_tone_corpus

CLIP = 0.8  # the tone corpus's longest clip (seconds)
BUDGET_S = 2.0  # seconds selected per round


def write_configs(tmp_path, **changes):
    pool = make_tone_corpus(tmp_path / "pool", n=24, seed=0)
    held = make_tone_corpus(tmp_path / "eval", n=6, seed=1)
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({
        "features": {"n_mels": 20}, "specaugment": None,
        "encoder": {"subsampling": 4, "conv_channels": 4, "hidden_size": 12, "num_layers": 1, "dropout": 0.0},
        "train": {"max_batch_seconds": 1.7, "lr": 5e-3, "warmup_steps": 1, "num_threads": 1}}))
    cfg = {"model": str(model), "train": str(pool), "eval": [str(held)], "seed_hours": 1.5 / 3600,
           "seed_steps": 3, "round_hours": BUDGET_S / 3600, "rounds": 2, "strategies": ["egl", "random"],
           "seeds": [0], "finetune": {"steps": 2, "lr": 3e-3, "warmup_steps": 1},
           "scoring": {"nbest": 2, "beam": 3, "batch_seconds": 4.0}}
    cfg.update(changes)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, pool


def results(out):
    return [json.loads(l) for l in (Path(out) / "results.jsonl").read_text().splitlines()]


def key(rows):
    return [(r["strategy"], r["seed"], r["round"], round(r["labeled_hours"], 9), r["wer"], r["cer"])
            for r in rows]


def test_two_rounds_two_strategies_equal_hours_no_reselection_true_labels(tmp_path):
    config, pool = write_configs(tmp_path)
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    rows = results(out)
    assert [(r["strategy"], r["round"]) for r in rows] == [(s, k) for s in ("egl", "random") for k in range(3)]
    truth = {u.id: u.text for u in read_manifest(pool)}
    by = {(r["strategy"], r["round"]): r for r in rows}
    seed_ids = [u.id for u in read_manifest(out / "seed" / "seed_set.jsonl")]
    for r in rows:
        assert r["eval_utterances"] == 6 and 0.0 <= r["cer"] and r["wer"] >= 0.0
    for k in (1, 2):
        for s in ("egl", "random"):
            grow = by[(s, k)]["labeled_hours"] - by[(s, k - 1)]["labeled_hours"]
            # the budget, less what no remaining clip could fill
            assert BUDGET_S - CLIP < 3600 * grow <= BUDGET_S + 1e-9
            assert 3600 * by[(s, k)]["selected_hours"] == pytest.approx(3600 * grow)
        # equal hours across strategies, to within one clip
        assert abs(by[("egl", k)]["labeled_hours"] - by[("random", k)]["labeled_hours"]) * 3600 < CLIP
    for s in ("egl", "random"):
        run = out / "runs" / s / "seed0"
        seen = set(seed_ids)
        for k in (1, 2):
            chosen = [u.id for u in read_manifest(run / f"round{k}" / "selected.jsonl")]
            scored = {json.loads(l)["id"] for l in (run / f"round{k}" / "scores.jsonl").read_text().splitlines()}
            assert chosen and not seen & set(chosen)  # never re-selected
            assert not seen & scored  # labeled clips are not scored again
            seen |= set(chosen)
            labeled = read_manifest(run / f"round{k}" / "labeled.jsonl")
            assert [u.id for u in labeled] == [u for u in seed_ids] + [
                i for j in range(1, k + 1) for i in (u.id for u in read_manifest(run / f"round{j}" / "selected.jsonl"))]
            # simulated labels are the held-back transcripts; what was scored had none
            assert all(u.text == truth[u.id] for u in labeled)
            assert all(u.text == "" for u in read_manifest(run / f"round{k}" / "selected.jsonl"))
    assert "egl WER" in (out / "results.md").read_text() and (out / "wer_vs_hours.png").stat().st_size > 0


class Killed(Exception):
    pass


def test_resume_after_a_kill_continues_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    config, _ = write_configs(tmp_path)
    cfg = load_loop_config(config)
    straight = Loop(cfg, tmp_path / "straight").run(progress=False)

    out = tmp_path / "killed"
    real_round, real_train = Loop.run_round, loop_mod.train_model

    def die_between_rounds(self, strategy, seed, r):
        if r == 2:
            raise Killed
        return real_round(self, strategy, seed, r)

    monkeypatch.setattr(Loop, "run_round", die_between_rounds)
    with pytest.raises(Killed):
        Loop(cfg, out).run(progress=False)
    assert sorted(r["round"] for r in results(out)) == [0, 0, 1, 1]  # round 1 finished everywhere

    # the rerun dies inside round 2 of the second run, after its selection, in training
    trained = []

    def die_in_training(exp, exp_dir, init_from=None):
        if "random" in str(exp_dir) and "round2" in str(exp_dir):
            raise Killed
        trained.append(exp_dir)
        return real_train(exp, exp_dir, init_from)

    monkeypatch.setattr(Loop, "run_round", real_round)
    monkeypatch.setattr(loop_mod, "train_model", die_in_training)
    with pytest.raises(Killed):
        Loop(cfg, out).run(progress=False)
    selected = out / "runs" / "random" / "seed0" / "round2" / "selected.jsonl"
    made = selected.stat().st_mtime_ns
    # finished rounds were not redone; seed model and round 1 came from disk
    assert [p.parent.name for p in trained if "round" in str(p)] == ["round2"]
    assert all("round1" not in str(p) for p in trained)

    def count_training(exp, exp_dir, init_from=None):
        trained.append(exp_dir)
        return real_train(exp, exp_dir, init_from)

    trained.clear()
    monkeypatch.setattr(loop_mod, "train_model", count_training)
    resumed = Loop(cfg, out).run(progress=False)
    assert selected.stat().st_mtime_ns == made  # the interrupted round kept its selection
    assert [str(p).split("runs/")[-1] for p in trained if "runs" in str(p)] == ["random/seed0/round2/train"]
    assert key(resumed) == key(straight)
    assert [u.id for u in read_manifest(selected)] == \
        [u.id for u in read_manifest(tmp_path / "straight" / "runs" / "random" / "seed0" / "round2" / "selected.jsonl")]


def answer_the_queue(loop, truth, suffix="", flag=()):
    """A labeler answers every clip the queue offers: flags those in ``flag``, labels the
    others with their true transcript (upper case, plus ``suffix``). Returns how many."""
    from sqlalchemy import select

    from active_learning.queue import auth
    from active_learning.queue.leases import flag as flag_clip, submit, take_next

    with loop.labels.sessions() as db:
        if db.scalar(select(auth.User).where(auth.User.name == "ann")) is None:
            auth.add_user(db, "ann", "correct horse battery", "labeler")
        user = db.scalar(select(auth.User).where(auth.User.name == "ann"))
        n = 0
        while (clip := take_next(db, user.id, 60.0)) is not None:
            if clip.utt_id in flag:
                flag_clip(db, user.id, clip.id, "no speech")
            else:
                submit(db, user.id, clip.id, truth[clip.utt_id].upper() + suffix)
            n += 1
        db.commit()
    return n


def test_queue_labels_stop_the_loop_until_people_have_labeled(tmp_path):
    from sqlalchemy import select

    from active_learning.queue.models import Clip

    db_url = f"sqlite:///{tmp_path / 'queue.db'}"
    config, pool = write_configs(tmp_path, labels="queue", queue_db=db_url, rounds=1, strategies=["egl"])
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="waiting for labels"):
        main(["loop", "--config", str(config), "--out", str(out), "--no-progress"])
    loop = Loop(load_loop_config(config), out)
    truth = {u.id: u.text for u in read_manifest(pool)}

    def label_everything(suffix=""):
        return answer_the_queue(loop, truth, suffix)

    assert label_everything() > 0  # the seed set
    loop.run(progress=False)  # round 1 selects, queues and waits
    assert not (out / "runs" / "egl" / "seed0" / "round1" / "state.json").exists()
    queued = read_manifest(out / "runs" / "egl" / "seed0" / "round1" / "selected.jsonl")
    # the labeler starts from the scorer's best hypothesis, carried from the scores to the queue
    scores = {json.loads(l)["id"]: json.loads(l) for l in
              (out / "runs" / "egl" / "seed0" / "round1" / "scores.jsonl").read_text().splitlines()}
    with loop.labels.sessions() as db:
        in_queue = dict(db.execute(select(Clip.utt_id, Clip.hypothesis)).all())
    assert all(scores[u.id]["hypothesis"] for u in queued)
    assert {u.id: in_queue[u.id] for u in queued} == {u.id: scores[u.id]["hypothesis"] for u in queued} \
        == {u.id: u.meta["hypothesis"] for u in queued}
    assert label_everything(" X") == len(queued)
    rows = loop.run(progress=False)
    assert [r["round"] for r in rows] == [0, 1]
    labeled = read_manifest(out / "runs" / "egl" / "seed0" / "round1" / "labeled.jsonl")
    new = {u.id: u.text for u in labeled[-len(queued):]}
    assert new == {u.id: truth[u.id].upper() + " X" for u in queued}  # the people's labels


def test_clips_flagged_in_the_queue_or_unreadable_count_as_answered_and_are_left_out(tmp_path, caplog):
    db_url = f"sqlite:///{tmp_path / 'queue.db'}"
    config, pool = write_configs(tmp_path, labels="queue", queue_db=db_url, rounds=1, strategies=["random"],
                                 seed_hours=2.5 / 3600)
    out = tmp_path / "run"
    loop = Loop(load_loop_config(config), out)
    truth = {u.id: u.text for u in read_manifest(pool)}
    drawn = loop_mod.draw_hours(loop.data.pool, loop.cfg.seed_hours, loop.cfg.seed_set_seed)
    assert len(drawn) >= 3
    Path(drawn[1].audio).write_bytes(b"not audio")  # the queue cannot take it
    with pytest.raises(SystemExit, match="waiting for labels"):
        loop.run(progress=False)
    caplog.clear()
    answer_the_queue(loop, truth, flag={drawn[0].id})
    with caplog.at_level("WARNING", logger="active_learning.loop"):
        loop.run(progress=False)  # the seed set is answered: round 1 selects, queues and waits
    assert f"2 of {len(drawn)} clips will not be labeled" in caplog.text
    assert f"{drawn[0].id} (flagged)" in caplog.text and f"{drawn[1].id} (not queued)" in caplog.text
    scored = [json.loads(l)["id"] for l in
              (out / "runs" / "random" / "seed0" / "round1" / "scores.jsonl").read_text().splitlines()]
    assert drawn[1].id not in scored and drawn[0].id in scored  # the unreadable clip is not a candidate
    loop.run(progress=False)  # the seed set is answered: round 1 selects, queues and waits
    selected = read_manifest(out / "runs" / "random" / "seed0" / "round1" / "selected.jsonl")
    assert len(selected) >= 2
    caplog.clear()
    answer_the_queue(loop, truth, flag={selected[-1].id})
    with caplog.at_level("WARNING", logger="active_learning.loop"):
        rows = loop.run(progress=False)
    assert [r["round"] for r in rows] == [0, 1]
    assert f"1 of {len(selected)} clips will not be labeled" in caplog.text
    assert f"are left out: {selected[-1].id} (flagged)" in caplog.text
    seed_set = read_manifest(out / "seed" / "seed_set.jsonl")
    assert [u.id for u in seed_set] == [u.id for u in drawn[2:]]
    labeled = read_manifest(out / "runs" / "random" / "seed0" / "round1" / "labeled.jsonl")
    assert [u.id for u in labeled] == [u.id for u in drawn[2:] + selected[:-1]]
    assert all(u.text == truth[u.id].upper() for u in labeled)
    assert (rows[1]["selected_clips"], rows[1]["dropped_clips"], rows[1]["labeled_clips"]) == \
        (len(selected), 1, len(labeled))


@pytest.mark.parametrize("change, field", [
    ({"rounds": 0}, "rounds"),
    ({"round_hours": 0}, "round_hours"),
    ({"strategies": ["egl", "gradient"]}, "strategies"),
    ({"finetune": {"steps": 2, "init": "scratch"}}, "finetune.init"),
    ({"finetune": {"stepz": 2}}, "finetune"),
    ({"seed_steps": "many"}, "seed_steps"),
    ({"pool_corpora": ["an4"]}, "pool_corpora"),
    ({"labels": "queue"}, "queue_db"),
    ({"eval": []}, "eval"),
    ({"seed_init": "no/such/model.pt"}, "seed_init"),
])
def test_bad_config_fields_name_the_field(tmp_path, change, field):
    config, _ = write_configs(tmp_path, **change)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Loop(load_loop_config(config), tmp_path / "run")


@pytest.mark.parametrize("scoring, field, what", [
    ({"nbest": 4, "beam": 3}, "scoring", "need 1 <= nbest <= beam.*nbest=4, beam=3"),
    ({"nbest": 0, "beam": 3}, "scoring", "need 1 <= nbest <= beam.*nbest=0"),
    ({"params": "decoder."}, "scoring.params", "no parameters .* match 'decoder.'"),
    ({"params": "last_encoder_layer", "head": "transducer"}, "scoring.head", "'transducer' is not a head"),
])
def test_scoring_options_the_rounds_would_fail_on_are_refused_before_any_training(
        tmp_path, monkeypatch, scoring, field, what):
    config, _ = write_configs(tmp_path, scoring={"nbest": 2, "beam": 3, **scoring})
    monkeypatch.setattr(loop_mod, "train_model", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(ConfigError, match=re.escape(f"{field}: ") + what):
        Loop(load_loop_config(config), tmp_path / "run").run(progress=False)
    assert not (tmp_path / "run" / "seed").exists()


def test_a_rerun_with_another_model_config_is_refused(tmp_path):
    config, _ = write_configs(tmp_path)
    cfg = load_loop_config(config)
    Loop(cfg, tmp_path / "run")
    Loop(cfg, tmp_path / "run")  # the same configs: fine
    model = Path(cfg.model)
    model.write_text(model.read_text().replace("hidden_size: 12", "hidden_size: 16"))
    with pytest.raises(ConfigError, match="model.yaml"):
        Loop(cfg, tmp_path / "run")


def test_pool_manifests_unseen_by_the_seed_model_and_runs_split_across_processes(tmp_path):
    """``pool``: clips of other manifests form the pool and all of ``train`` is the base;
    ``--only`` runs some strategies in one process and the rest in another, the same as one
    process doing all; round 1 of a model scorer is scored once for every seed."""
    held = make_tone_corpus(tmp_path / "held", n=20, seed=3)
    pool = tmp_path / "pool.jsonl"  # ids of their own: the pool is not in train
    pool.write_text("".join(json.dumps({**json.loads(l), "id": "p-" + json.loads(l)["id"]}) + "\n"
                            for l in held.read_text().splitlines()))
    config, base = write_configs(tmp_path, pool=[str(pool)], seeds=[0, 1], rounds=1)
    cfg = load_loop_config(config)
    data = loop_mod.load_data(cfg)
    assert {u.id for u in data.pool} == {"p-" + u.id for u in read_manifest(held)}
    assert [u.id for u in data.base] == [u.id for u in read_manifest(base)]
    assert all(u.text == "" for u in data.pool)

    together = Loop(cfg, tmp_path / "together").run(progress=False)
    split = tmp_path / "split"
    assert main(["simulate", "--config", str(config), "--out", str(split), "--no-progress",
                 "--only", "random"]) == 0
    assert {r["strategy"] for r in results(split)} == {"random"}
    assert main(["simulate", "--config", str(config), "--out", str(split), "--no-progress",
                 "--only", "egl"]) == 0
    assert key(results(split)) == key(together)
    runs = split / "runs" / "egl"
    assert (split / "seed" / "scores_egl.jsonl").read_text() == \
        (runs / "seed0" / "round1" / "scores.jsonl").read_text() == \
        (runs / "seed1" / "round1" / "scores.jsonl").read_text()
    with pytest.raises(ConfigError, match="--only"):
        Loop(cfg, split).run(progress=False, only=["gradient"])

    overlapping = tmp_path / "overlap.jsonl"
    overlapping.write_text(base.read_text())
    config, _ = write_configs(tmp_path, pool=[str(overlapping)])
    with pytest.raises(ConfigError, match="pool: 24 clips are also in train"):
        loop_mod.load_data(load_loop_config(config))
    config, _ = write_configs(tmp_path, pool=[str(pool)], pool_corpora=["an4"])
    with pytest.raises(ConfigError, match="pool"):
        load_loop_config(config)
