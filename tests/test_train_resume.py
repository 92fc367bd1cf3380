"""What a resumed or re-initialised run keeps: the checkpoint's tokenizer, the time budget,
the bad-audio list; and what it reports: this run's throughput, a schedule that ends."""
import dataclasses
import json
import time
import types

import pytest
import torch

from asr.checkpoint import CheckpointError, read_checkpoint
from asr.data import read_manifest, write_manifest
from asr.text import build_tokenizer
from asr.train import Trainer
from test_train import Killed, die_after_step, tiny_config


def plain_config(manifest, **train):
    """tiny_config without augmentation (faster), with ``train`` fields replaced."""
    cfg = tiny_config(manifest)
    cfg.data.speed_perturb, cfg.data.noise_prob = [], 0.0
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def retexted(manifest, path, texts):
    """The same clips with other transcripts."""
    utts = read_manifest(manifest)
    for u, text in zip(utts, texts):
        u.text = text
    return write_manifest(utts, path)


def test_resume_and_init_from_keep_the_checkpoints_tokenizer(tmp_path, tone_corpus):
    cfg = plain_config(tone_corpus, epochs=1)
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "sentencepiece", 12
    saved = Trainer(cfg, tmp_path / "exp").fit()
    saved_tok = read_checkpoint(saved.model_path)["tokenizer"]

    other = retexted(tone_corpus, tmp_path / "other.jsonl",
                     ["down down up", "no yes", "up up up", "yes no down", "downs", "ups",
                      "nod", "yep"])
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    cfg2.data = dataclasses.replace(cfg.data, train=str(other))
    rebuilt = build_tokenizer("sentencepiece", [u.text for u in read_manifest(other)], 12)
    assert rebuilt.to_dict() != saved_tok  # these texts would build another vocabulary

    resumed = Trainer(cfg2, tmp_path / "exp")
    assert resumed.tokenizer.to_dict() == saved_tok
    assert read_checkpoint(resumed.fit().model_path)["tokenizer"] == saved_tok
    tuned = Trainer(cfg2, tmp_path / "tuned", init_from=str(saved.model_path))
    assert tuned.tokenizer.to_dict() == saved_tok
    assert read_checkpoint(tuned.fit().model_path)["tokenizer"] == saved_tok

    # a checkpoint without its tokenizer: a rebuilt subword vocabulary cannot be trusted
    state = read_checkpoint(saved.model_path)
    del state["tokenizer"]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare.pt: has no saved tokenizer"):
        Trainer(cfg2, tmp_path / "bare", init_from=str(tmp_path / "bare.pt"))
    # the character set is fixed, so a rebuilt character tokenizer is the same one
    char_cfg = plain_config(tone_corpus, epochs=1)
    state = read_checkpoint(Trainer(char_cfg, tmp_path / "char").fit().model_path)
    del state["tokenizer"]
    torch.save(state, tmp_path / "bare_char.pt")
    assert Trainer(char_cfg, tmp_path / "c2", init_from=str(tmp_path / "bare_char.pt")
                   ).tokenizer.vocab_size == 29


def test_utterances_per_second_of_a_resumed_run_counts_this_run_only(tmp_path, tone_corpus):
    Trainer(plain_config(tone_corpus, epochs=1), tmp_path / "exp").fit()
    # the first run took (say) 10,000 s
    state = read_checkpoint(tmp_path / "exp" / "last.pt")
    state["scheduler"]["elapsed"] = 10_000.0
    torch.save(state, tmp_path / "exp" / "last.pt")

    t0 = time.time()
    result = Trainer(plain_config(tone_corpus, epochs=2), tmp_path / "exp").fit()
    wall = time.time() - t0
    assert result.utterances == 8  # one more epoch of the eight clips
    assert result.train_seconds >= 10_000  # the experiment's time carries over ...
    assert result.utterances_per_second >= 8 / wall  # ... but the rate is this run's


def test_lr_schedule_spans_every_epochs_batches(tmp_path, tone_corpus):
    # at 1.95 s a batch, the jittered sort cuts these clips into 3, 4, 3 batches
    trainer = Trainer(plain_config(tone_corpus, epochs=3, max_batch_seconds=1.95, lr=1e-3),
                      tmp_path / "exp")
    assert trainer.epoch_batches == [3, 4, 3]
    assert trainer.scheduler.total_steps == 10
    result = trainer.fit()
    assert result.steps == trainer.scheduler.steps == 10
    assert trainer.scheduler.progress() == 1.0
    # the cosine ends at lr * final_ratio on the last step, not before and not above it
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.01)


def test_step_budget_stops_after_max_steps_with_the_schedule_annealed(tmp_path, tone_corpus):
    # 10 batches over 3 epochs, but a budget of 5 steps: it stops in epoch 2, annealed
    trainer = Trainer(plain_config(tone_corpus, epochs=3, max_batch_seconds=1.95, lr=1e-3, max_steps=5),
                      tmp_path / "exp")
    assert trainer.scheduler.total_steps == 5
    result = trainer.fit()
    assert result.steps == 5 and result.epochs_done == 3  # finished: a rerun trains no more
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.01)
    again = Trainer(plain_config(tone_corpus, epochs=3, max_batch_seconds=1.95, lr=1e-3, max_steps=5),
                    tmp_path / "exp").fit()
    assert again.steps == 5
    with pytest.raises(ValueError, match="train.max_steps"):
        Trainer(plain_config(tone_corpus, max_steps=0), tmp_path / "bad")


def test_lr_schedule_counts_batches_whose_audio_all_failed(tmp_path, tone_corpus, monkeypatch):
    import asr.data
    from asr.audio import AudioError

    broken = read_manifest(tone_corpus)[0].audio
    real_load = asr.data.load_audio
    def load_audio(path, *a, **k):
        if str(path) == broken:
            raise AudioError(path, "cannot decode audio (truncated data)")
        return real_load(path, *a, **k)
    monkeypatch.setattr(asr.data, "load_audio", load_audio)
    # at 0.5 s a batch each clip is a batch of its own: one batch an epoch has nothing in it
    trainer = Trainer(plain_config(tone_corpus, epochs=2, max_batch_seconds=0.5, lr=1e-3),
                      tmp_path / "exp")
    result = trainer.fit()
    assert result.steps == 14 and trainer.scheduler.total_steps == trainer.scheduler.steps == 16
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 0.01)


def test_audio_that_fails_to_decode_is_listed_once(tmp_path, tone_corpus, monkeypatch, caplog):
    import asr.data
    from asr.audio import AudioError

    utts = read_manifest(tone_corpus)
    utts[1].text = "?!"  # empty after normalisation: rejected before training
    manifest = write_manifest(utts, tmp_path / "train.jsonl")
    broken = utts[0].audio  # its header reads, its samples do not decode
    reads = []
    real_load = asr.data.load_audio
    def load_audio(path, *a, **k):
        reads.append(str(path))
        if str(path) == broken:
            raise AudioError(path, "cannot decode audio (truncated data)")
        return real_load(path, *a, **k)
    monkeypatch.setattr(asr.data, "load_audio", load_audio)
    cfg = plain_config(manifest, epochs=3)

    # killed in epoch 2 after the checkpoint at step 4, then resumed
    trainer = Trainer(cfg, tmp_path / "exp")
    die_after_step(monkeypatch, trainer, 4)
    with pytest.raises(Killed):
        trainer.fit()
    # read once by the training set and once by the validation set, not every epoch ...
    assert reads.count(broken) == 2
    reads.clear()
    result = Trainer(cfg, tmp_path / "exp").fit()
    assert result.epochs_done == 3
    assert reads and broken not in reads  # ... and not again after the resume
    assert sum(broken in r.getMessage() for r in caplog.records) == 2

    rows = [json.loads(l) for l in open(tmp_path / "exp" / "rejected.jsonl")]
    assert sorted(r["id"] for r in rows) == ["utt0", "utt1"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["utt0"] == {"id": "utt0", "audio": broken,
                             "reason": "cannot decode audio (truncated data)"}
    assert by_id["utt1"]["audio"] == utts[1].audio
    assert by_id["utt1"]["reason"].startswith("empty transcript after normalisation")
    assert [r.id for r in result.rejected] == [r["id"] for r in rows]


def test_resumed_budget_run_continues_its_clock(tmp_path, tone_corpus, monkeypatch):
    """A run killed inside its ``max_minutes`` budget resumes with the time it had used
    and ends when the whole budget is spent; a finished budgeted run stays finished."""
    clock = [0.0]
    import asr.train
    monkeypatch.setattr(asr.train, "time", types.SimpleNamespace(time=lambda: clock[0]))
    # a minute's budget at 5 s a step is 12 steps, well inside 100 epochs
    cfg = plain_config(tone_corpus, epochs=100, max_minutes=1.0, lr=1e-3)

    def run(exp, die_at=None):
        trainer = Trainer(cfg, tmp_path / exp)
        real_step = trainer.optimizer.step
        def timed_step(*a, **k):
            clock[0] += 5.0
            real_step(*a, **k)
            if trainer.step == die_at:
                raise Killed
        monkeypatch.setattr(trainer.optimizer, "step", timed_step)
        return trainer.fit()

    assert run("whole").steps == 12
    with pytest.raises(Killed):
        run("killed", die_at=6)  # after the checkpoint at step 6, 30 s into the budget
    assert read_checkpoint(tmp_path / "killed" / "last.pt")["scheduler"]["elapsed"] == 30.0
    clock[0] += 3600.0  # time between the runs is not training time
    resumed = run("killed")
    assert resumed.steps == 12 and resumed.train_seconds == pytest.approx(60.0)
    assert resumed.epochs_done == 100  # the checkpoint marks the run finished
    again = run("killed")
    assert again.steps == 12 and again.utterances == 0


def test_training_refuses_a_manifest_whose_audio_is_mostly_missing(tmp_path):
    """A wrong folder or a relative path in one source (the FSDD digit words, session 19)
    used to drop every one of its utterances with a log line each and train on the rest:
    more than data.max_rejected_share of a manifest (and more than 20 rows) rejected stops
    the run before it starts, naming the manifest, the counts and the reason with a file."""
    from asr.data import ManifestError
    from conftest import make_tone_corpus

    utts = read_manifest(make_tone_corpus(tmp_path / "tones", n=40))
    for u in utts[:21]:
        u.audio = str(tmp_path / "gone" / f"{u.id}.flac")
    manifest = write_manifest(utts, tmp_path / "train.jsonl")
    with pytest.raises(ManifestError, match=r"train\.jsonl: 21 of 40 utterances rejected .*"
                                            r"max_rejected_share 0\.1\): 21 x no such file \(e\.g\. .*gone/utt0"):
        Trainer(plain_config(manifest, epochs=1), tmp_path / "exp")
    # the share can be raised (1.0: off); 20 rejected would pass the floor anyway
    cfg = plain_config(manifest, epochs=1)
    cfg.data.max_rejected_share = 1.0
    assert len(Trainer(cfg, tmp_path / "exp2").train_set.utts) == 19
