import json
import subprocess
import sys

import pytest
import torch

from asr.checkpoint import CheckpointError, load_model, read_checkpoint
from asr.config import (DataConfig, EncoderConfig, ExperimentConfig, FeatureConfig, TrainConfig,
                        save_config)
from asr.data import read_manifest
from asr.evaluate import evaluate_model
from asr.train import Trainer
from conftest import make_tone_corpus


def tiny_config(manifest, epochs=3):
    return ExperimentConfig(
        features=FeatureConfig(n_mels=20),
        encoder=EncoderConfig(subsampling=4, conv_channels=4, hidden_size=16, num_layers=1),
        data=DataConfig(train=str(manifest), valid=str(manifest), speed_perturb=[0.9, 1.1],
                        noise_prob=0.5),
        train=TrainConfig(epochs=epochs, max_batch_seconds=1.7, lr=3e-3, warmup_steps=2,
                          checkpoint_every=2, num_threads=1),
    )


def learnable_config(manifest, epochs):
    """Small enough to train in seconds, big enough to learn the tone corpus: no
    augmentation or dropout, a wider GRU and a high learning rate."""
    return ExperimentConfig(
        features=FeatureConfig(n_mels=20), specaugment=None,
        encoder=EncoderConfig(subsampling=4, conv_channels=8, hidden_size=64, num_layers=1,
                              dropout=0.0),
        data=DataConfig(train=str(manifest), valid=str(manifest)),
        train=TrainConfig(epochs=epochs, max_batch_seconds=1.0, lr=1e-2, warmup_steps=2,
                          checkpoint_every=1000, num_threads=1),
    )


class Killed(Exception):
    pass


def die_after_step(monkeypatch, trainer, step: int) -> None:
    """Make ``trainer`` raise :class:`Killed` in the optimiser step after ``step``
    completed steps (that step's update is applied, as when a process dies mid-step)."""
    real_step = trainer.optimizer.step

    def step_then_maybe_die(*a, **k):
        real_step(*a, **k)
        if trainer.step == step:  # trainer.step counts completed steps before this one
            raise Killed
    monkeypatch.setattr(trainer.optimizer, "step", step_then_maybe_die)


def test_killed_run_resumes_to_the_same_weights(tmp_path, tone_corpus, monkeypatch):
    cfg = tiny_config(tone_corpus)
    full = Trainer(cfg, tmp_path / "full").fit()
    ref = torch.load(full.model_path, weights_only=False)["model"]

    # kill the second run in the middle of epoch 2 (step 7), after the checkpoint at step 6
    trainer = Trainer(cfg, tmp_path / "killed")
    die_after_step(monkeypatch, trainer, 6)
    with pytest.raises(Killed):
        trainer.fit()
    state = read_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["step"] == 6 and state["epoch"] == 1

    resumed = Trainer(cfg, tmp_path / "killed").fit()
    assert resumed.steps == full.steps
    got = torch.load(resumed.model_path, weights_only=False)["model"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    rows = [json.loads(l) for l in open(tmp_path / "killed" / "metrics.jsonl")]
    assert any(r["kind"] == "valid" for r in rows)
    assert (tmp_path / "killed" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "killed" / "config.yaml").exists()


def test_training_learns_the_tone_corpus(tmp_path, tone_corpus):
    result = Trainer(learnable_config(tone_corpus, epochs=40), tmp_path / "exp").fit()
    valid = [json.loads(l) for l in open(tmp_path / "exp" / "metrics.jsonl")]
    valid = [r["loss"] for r in valid if r["kind"] == "valid"]
    assert valid[-1] < valid[0] / 10  # about 3.2 after the first epoch, under 0.1 at the end
    model, tok, _ = load_model(result.model_path)
    # a model that learnt nothing emits blanks (accuracy 0); this one names its clips
    assert evaluate_model(model, tok, read_manifest(tone_corpus))["accuracy"] >= 0.75


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctc_model_trains_to_a_wer_target_on_held_out_tones(tmp_path):
    """Training to a target: 16 tone clips, 60 epochs (under a minute on two cores), then
    a WER of at most 10% on 16 clips drawn with another seed (0% when written)."""
    train = make_tone_corpus(tmp_path / "train", n=16, seed=0)
    held_out = make_tone_corpus(tmp_path / "held_out", n=16, seed=1)
    cfg = learnable_config(train, epochs=60)
    cfg.train.max_batch_seconds = 2.0
    model, tok, _ = load_model(Trainer(cfg, tmp_path / "exp").fit().model_path)
    metrics = evaluate_model(model, tok, read_manifest(held_out))
    assert metrics["utterances"] == 16 and metrics["wer"] <= 0.10


def test_init_from_starts_from_the_given_weights(tmp_path, tone_corpus):
    import dataclasses

    cfg = tiny_config(tone_corpus, epochs=1)
    start = Trainer(cfg, tmp_path / "start").fit().model_path
    ref = read_checkpoint(start)["model"]
    # with a zero learning rate the weights stay where they start: the given model's
    frozen = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.0))
    got = read_checkpoint(Trainer(frozen, tmp_path / "tuned", init_from=str(start)).fit().model_path)["model"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    fresh = read_checkpoint(Trainer(frozen, tmp_path / "fresh").fit().model_path)["model"]
    assert any(not torch.equal(fresh[k], ref[k]) for k in ref)


def _ctc_then_ctc_and_rnnt(tmp_path, tone_corpus, **train):
    """A CTC run, then a CTC + RNN-T run started from it (``--init-from``) with ``train``
    changed: (the CTC run's config and model path, its weights, the RNN-T head's fresh
    weights, the second run's weights)."""
    import dataclasses

    from asr.config import HeadConfig

    cfg = tiny_config(tone_corpus, epochs=1)
    start = Trainer(cfg, tmp_path / "start").fit().model_path
    two = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train), heads={
        "ctc": HeadConfig(weight=1.0),
        "transducer": HeadConfig(weight=1.0, options={"pred_dim": 16, "joiner_dim": 16})})
    trainer = Trainer(two, tmp_path / "two", init_from=str(start))
    fresh_head = {k: v.clone() for k, v in trainer.model.state_dict().items()
                  if k.startswith("heads.transducer.")}
    got = read_checkpoint(trainer.fit().model_path)["model"]
    return cfg, start, read_checkpoint(start)["model"], fresh_head, got


def test_init_from_a_model_with_fewer_heads(tmp_path, tone_corpus):
    """A CTC model starts a CTC + RNN-T model: the shared weights are the CTC model's, the
    new head keeps its fresh start; weights that do not fit are refused by file name."""
    import dataclasses

    cfg, start, ref, fresh_head, got = _ctc_then_ctc_and_rnnt(tmp_path, tone_corpus, lr=0.0)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    assert fresh_head and all(torch.equal(got[k], v) for k, v in fresh_head.items())
    wider = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder,
                                                                 hidden_size=cfg.encoder.hidden_size + 8))
    with pytest.raises(ValueError, match="start/model.pt.*do not fit"):
        Trainer(wider, tmp_path / "wider", init_from=str(start)).fit()


def test_frozen_parameters_keep_their_start_and_the_rest_trains(tmp_path, tone_corpus):
    """train.freeze [encoder, heads.ctc]: a new RNN-T head learns on a trained encoder that
    stays as it was; a prefix that names nothing is refused."""
    import dataclasses

    cfg, _, ref, fresh_head, got = _ctc_then_ctc_and_rnnt(tmp_path, tone_corpus,
                                                           freeze=["encoder", "heads.ctc"])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    assert any(not torch.equal(got[k], v) for k, v in fresh_head.items())
    bad = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, freeze=["encoders"]))
    with pytest.raises(ValueError, match="'encoders' names no parameters"):
        Trainer(bad, tmp_path / "bad")
    # the start run's last.pt trained every parameter: continuing it frozen is refused by name
    partly = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, freeze=["encoder"]))
    with pytest.raises(ValueError, match="start/last.pt: its optimiser state .* train.freeze"):
        Trainer(partly, tmp_path / "start").fit()


def test_truncated_checkpoint_is_refused_by_name(tmp_path, tone_corpus):
    cfg = tiny_config(tone_corpus, epochs=1)
    result = Trainer(cfg, tmp_path / "exp").fit()
    model, tok, loaded_cfg = load_model(result.model_path)
    assert loaded_cfg.encoder.hidden_size == 16 and tok.vocab_size == 29
    data = result.model_path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.pt: cannot read checkpoint"):
        load_model(broken)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a speechkit ASR checkpoint"):
        load_model(tmp_path / "foreign.pt")


def test_cli_train_and_evaluate_print_json(tmp_path, tone_corpus):
    cfg_path = tmp_path / "cfg.yaml"
    save_config(tiny_config(tone_corpus, epochs=1), cfg_path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "asr", *a], capture_output=True,
                                    text=True, timeout=300)
    out = run("train", "--config", str(cfg_path), "--exp", str(tmp_path / "e"))
    assert out.returncode == 0, out.stderr
    model = json.loads(out.stdout.strip().splitlines()[-1])["model"]
    ev = run("evaluate", "--model", model, "--corpus", "manifest", "--data", str(tone_corpus),
             "--results", str(tmp_path / "res.jsonl"))
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert {"wer", "cer", "utterances", "rtf", "accuracy"} <= set(metrics)
    # the printed scores are the model's: the same as evaluating it in this process
    loaded, tok, _ = load_model(model)
    direct = evaluate_model(loaded, tok, read_manifest(tone_corpus))
    assert metrics["utterances"] == 8
    assert metrics["wer"] == pytest.approx(direct["wer"], abs=1e-5)  # printed to 5 places
    assert metrics["cer"] == pytest.approx(direct["cer"], abs=1e-5)
    rows = [json.loads(l) for l in open(tmp_path / "res.jsonl")]
    assert sorted(r["id"] for r in rows) == [f"utt{i}" for i in range(8)]
    assert sum(r["correct"] for r in rows) / 8 == pytest.approx(metrics["accuracy"], abs=1e-5)
    bad = run("evaluate", "--model", str(tmp_path / "nope.pt"), "--corpus", "manifest",
              "--data", str(tone_corpus))
    assert bad.returncode == 2 and "nope.pt: checkpoint not found" in bad.stderr


def test_lr_schedule_anneals_over_steps_or_time_budget():
    from asr.train import LRSchedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, "cosine", lr=1.0, total_steps=100, warmup_steps=10)
    rates = []
    for i in range(100):
        sched.step(elapsed=float(i))
        rates.append(sched.get_last_lr()[0])
    assert rates[4] < rates[9] and max(rates) == pytest.approx(1.0, abs=0.05)
    assert rates[-1] == pytest.approx(0.01) and sched.done
    # a 20-second budget ends the same schedule after 20 steps of one second
    timed = LRSchedule(opt, "cosine", lr=1.0, total_steps=100, warmup_steps=0, budget_seconds=20)
    for i in range(1, 21):
        assert not timed.done
        timed.step(elapsed=float(i))
    assert timed.done and timed.get_last_lr()[0] == pytest.approx(0.01)
    again = LRSchedule(opt, "cosine", lr=1.0, total_steps=100, warmup_steps=0, budget_seconds=20)
    again.load_state_dict(timed.state_dict())
    assert again.done
    with pytest.raises(ValueError, match="schedule"):
        LRSchedule(opt, "onecycle-ish", 1.0, 10, 0)
