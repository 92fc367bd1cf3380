"""Speech Commands cross-validation by speaker: folds, the FLAC pack, pooling, and a tiny
end-to-end run in worker processes."""
import json

import numpy as np
import pytest
import torch

from kws.data import Clip
from recipes.speech_commands.crossval import (clip_key, cross_validate, fold_of, parse_variant, pooled,
                                              read_pack, write_pack)

LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def _int16_wave(rng, n):
    return torch.from_numpy(rng.integers(-3000, 3000, n).astype(np.float32) / 32768.0)


def test_folds_are_stable_disjoint_and_used():
    speakers = [f"spk{i:03d}" for i in range(60)]
    folds = [fold_of(s, 4) for s in speakers]
    assert folds == [fold_of(s, 4) for s in speakers]  # deterministic
    assert set(folds) == {0, 1, 2, 3}
    assert all(0 <= f < 4 for f in folds)
    # a file without a speaker (a _silence_ clip) is keyed by its name
    assert clip_key(Clip(torch.zeros(4), 0, path="/x/_silence_/7.flac")) == "7"


def test_pack_round_trip_and_truncation(tmp_path):
    rng = np.random.default_rng(0)
    roles = {"speakers": [Clip(_int16_wave(rng, 16000), 2, "real", "/c/yes/a_nohash_0.flac", "a", (100, 900))],
             "extra": [Clip(_int16_wave(rng, 7000), 1, "real", "/f/0_j_1.wav", "j", None)],
             "synth": [Clip(_int16_wave(rng, 9000), 3, "synthetic", "/s/x.wav", "tts:flite:kal", (0, 9000))]}
    noise = [_int16_wave(rng, 16000)]
    counts = write_pack(roles, noise, tmp_path / "pack")
    assert counts == {"speakers": 1, "extra": 1, "synth": 1, "noise": 1}
    back, noise_back, sr = read_pack(tmp_path / "pack")
    assert sr == 16000
    for role, clips in roles.items():
        (a,), (b,) = clips, back[role]
        assert torch.equal(a.wave, b.wave)  # 16-bit audio comes back exactly
        assert (b.label, b.source, b.path, b.speaker, b.focus) == (a.label, a.source, a.path, a.speaker, a.focus)
    assert torch.equal(noise_back[0], noise[0])
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    index["items"][-1]["length"] += 10 ** 6  # the audio no longer holds what the index says
    (tmp_path / "pack" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="truncated"):
        read_pack(tmp_path / "pack")
    with pytest.raises(ValueError, match="not a readable pack"):
        read_pack(tmp_path / "missing")


def test_shared_data_gives_the_workers_the_same_clips():
    from recipes.speech_commands import crossval

    rng = np.random.default_rng(3)
    roles = {"speakers": [Clip(_int16_wave(rng, 900), 2, "real", "/c/a.flac", "a", (10, 800),
                               variants=[_int16_wave(rng, 880), _int16_wave(rng, 950)])],
             "extra": [Clip(_int16_wave(rng, 700), 1, "real", "/f/b.wav", "b", None)],
             "synth": [Clip(_int16_wave(rng, 500), 3, "synthetic", "/s/x.wav", "tts", (0, 500))]}
    noise = [_int16_wave(rng, 1600)]
    flat, index = crossval.share_data(roles, noise)
    assert flat.is_shared() and flat.numel() == 900 + 880 + 950 + 700 + 500 + 1600
    crossval._init_worker(flat, index)  # what each worker process runs
    try:
        for role, clips in roles.items():
            (a,), (b,) = clips, crossval._DATA["roles"][role]
            assert torch.equal(a.wave, b.wave)
            assert len(a.variants) == len(b.variants)
            assert all(torch.equal(x, y) for x, y in zip(a.variants, b.variants))
            assert (b.label, b.source, b.path, b.speaker, b.focus) == (a.label, a.source, a.path, a.speaker, a.focus)
        assert torch.equal(crossval._DATA["noise"][0], noise[0])
    finally:
        crossval._DATA.clear()


def test_shared_data_says_when_dev_shm_is_too_small(monkeypatch):
    from recipes.speech_commands import crossval

    roles = {"speakers": [Clip(torch.zeros(16000), 2)], "extra": [], "synth": []}
    monkeypatch.setattr(crossval, "shm_free_bytes", lambda: 1000)
    with pytest.raises(RuntimeError, match="0 MB free"):
        crossval.share_data(roles, [])


def _row(correct, n, acc=None):
    return {"val_class_correct": correct, "val_class_n": n,
            "val_accuracy": acc if acc is not None else sum(correct) / sum(n)}


def test_pooled_weights_folds_by_clips_and_aligns_at_the_end():
    labels = ["a", "b"]
    # fold 0: 10 clips, fold 1: 30 clips; fold 1 ran one epoch more (a clock-limited run)
    r0 = {"fold": 0, "minutes": 1.0, "history": [_row([0, 0], [5, 5]), _row([5, 4], [5, 5])]}
    r1 = {"fold": 1, "minutes": 1.0, "history": [_row([0, 0], [10, 20]), _row([10, 10], [10, 20]),
                                                   _row([10, 14], [10, 20])]}
    out = pooled([r0, r1], labels, last=2)
    assert out["accuracy_last_epoch"] == pytest.approx((9 + 24) / 40)
    assert out["per_epoch_from_end"] == pytest.approx([0.0 + 20 / 40, 33 / 40])
    assert out["accuracy_last_epochs"] == pytest.approx((20 / 40 + 33 / 40) / 2)
    assert out["per_class_last_epoch"] == pytest.approx({"a": 15 / 15, "b": 18 / 25})
    assert out["clips"] == 40 and out["epochs_run"] == [2, 3]
    assert "error" in pooled([{"fold": 0, "error": "boom"}], labels)


def test_parse_variant():
    assert parse_variant("base=") == ("base", [])
    assert parse_variant("u=train.class_weights={_unknown_: 3.0}; features.kind=logmel") == (
        "u", ["train.class_weights={_unknown_: 3.0}", "features.kind=logmel"])
    with pytest.raises(ValueError, match="name="):
        parse_variant("no_equals_sign")


@pytest.mark.timeout(150)  # a deadlocked worker pool fails here instead of hanging
def test_tiny_cross_validation_end_to_end(tmp_path):
    """Every (variant, fold) in worker processes. The test holds tqdm's write lock the
    whole time: a worker forked from this process would inherit it held and wait forever
    in kws.train's progress bar (the deadlock the pool had), a fresh one does not."""
    from tqdm import tqdm

    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000

    def clip(label, speaker, source="real"):
        wave = 0.3 * np.sin(2 * np.pi * (300 + 150 * label) * t) * (np.abs(t - 0.5) < 0.2)
        wave = wave + 0.01 * rng.standard_normal(16000)
        return Clip(torch.tensor(wave, dtype=torch.float32), label, source, f"/c/{speaker}_{label}.flac", speaker,
                    (4800, 11200))

    roles = {"speakers": [clip(k, f"s{s}") for s in range(8) for k in range(12)],
             "extra": [], "synth": [clip(k, f"tts{k}", "synthetic") for k in range(12)]}
    noise = [torch.tensor(0.05 * rng.standard_normal(32000), dtype=torch.float32)]
    from pathlib import Path

    config = str(Path(__file__).resolve().parent.parent / "recipes" / "speech_commands" / "conf" / "crnn.yaml")
    with tqdm.get_lock():
        report = cross_validate(config, {"a": [], "b": ["features.kind=pcen"]}, roles, noise, tmp_path,
                                folds=2, jobs=2, overrides=["train.epochs=5", "train.examples_per_epoch=96",
                                                            "train.batch_size=16", "train.lr=0.01",
                                                            "train.max_minutes=0"])
    for name in ("a", "b"):
        r = report["results"][name]
        assert r["folds"] == 2 and r["failed_folds"] == 0
        assert r["clips"] == len(roles["speakers"])  # every clip held out exactly once
        assert r["epochs_run"] == [5, 5]
    # the words are tones 150 Hz apart, so the log-mel model learns them in 30 steps (PCEN
    # needs more): well above chance (1/12) on held-out speakers, better than after the
    # first epoch, and the loss falls
    a = report["results"]["a"]
    assert a["accuracy_last_epoch"] > 0.4
    assert a["accuracy_last_epoch"] > a["per_epoch_from_end"][0] + 0.1
    for fold in (0, 1):
        history = json.loads((tmp_path / "a" / f"fold{fold}" / "history.json").read_text())
        assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    assert (tmp_path / "crossval.png").stat().st_size > 0
    saved = json.loads((tmp_path / "crossval.json").read_text())
    assert saved["variants"]["b"] == ["features.kind=pcen"]
    assert (tmp_path / "b" / "fold1" / "config.yaml").read_text().count("pcen") >= 1


def test_recipe_and_crossval_on_a_generated_layout(tmp_path):
    """The Speech Commands recipe (prepare, train, export, evaluate) and cross-validation
    from its prepared folder, on a tiny corpus written in the v0.02 test-set layout."""
    import subprocess
    import sys
    from pathlib import Path

    import soundfile as sf

    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(2)
    corpus = tmp_path / "speech_commands"
    t = np.arange(16000) / 16000
    for s in range(24):
        speaker = f"{s:08x}"
        for k, label in enumerate(LABELS[2:]):
            burst = 0.3 * np.sin(2 * np.pi * (300 + 180 * k) * t) * (np.abs(t - 0.5) < 0.2)
            p = corpus / label / f"{speaker}_nohash_0.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, (burst + 0.01 * rng.standard_normal(16000)).astype(np.float32), 16000)
        p = corpus / "_unknown_" / f"bed_{speaker}_nohash_0.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.2 * rng.standard_normal(16000) * (np.abs(t - 0.5) < 0.2)).astype(np.float32), 16000)
        p = corpus / "_silence_" / f"{s}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.01 * rng.standard_normal(16000)).astype(np.float32), 16000)
    tiny = ["-o", "train.epochs=1", "-o", "train.examples_per_epoch=64", "-o", "train.batch_size=32",
            "-o", "model.gru_size=8", "-o", "model.dense_size=8", "-o", "model.conv_channels=4",
            "-o", "augment.pitch_semitones=[0.0]"]
    # enough training (24 steps, no mixup or weight averaging to slow it) for the model to
    # show it learned; cross-validation below keeps the tiny budget
    learns = [*tiny, "-o", "train.epochs=6", "-o", "train.examples_per_epoch=128", "-o", "train.lr=0.01",
              "-o", "train.mixup_alpha=0", "-o", "train.ema_decay=0", "-o", "model.gru_size=16",
              "-o", "model.dense_size=16", "-o", "model.conv_channels=8"]
    out = tmp_path / "exp"
    r = subprocess.run([sys.executable, "-m", "recipes.speech_commands.run", "--corpus", str(corpus),
                        "--out", str(out), "--models", str(tmp_path / "models"),
                        "--stages", "prepare", "train", "export", "evaluate", *learns],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((out / "checkpoint" / "results.json").read_text())
    assert results["train"]["epochs_run"] == 6
    history = json.loads((out / "checkpoint" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.3
    int8, fp32 = results["evaluate"]["int8_test"], results["evaluate"]["fp32_test"]
    assert int8["n"] == len(list((out / "test_layout").rglob("*.wav")))
    # unseen speakers, 12 classes (chance 0.083): the exported, quantized model learned
    assert int8["accuracy"] > 0.2 and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.06
    assert (tmp_path / "models" / "speech_commands_crnn_int8.onnx").exists()
    r = subprocess.run([sys.executable, "-m", "recipes.speech_commands.crossval", "run", "--prepared", str(out),
                        "--out", str(tmp_path / "cv"), "--folds", "2", "--jobs", "2", "--variant", "base=",
                        *tiny], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "cv" / "crossval.json").read_text())["results"]["base"]
    train_val = sum(1 for _ in open(out / "train.jsonl")) + sum(1 for _ in open(out / "val.jsonl"))
    assert report["clips"] == train_val and report["failed_folds"] == 0
