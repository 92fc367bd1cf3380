"""`torchrun -m kws train`: two CPU processes (gloo) step as one process with the same
global batch (hard-negative mining spread over them included), and a run resumed from its
`last.pt` on another world size continues the same run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import free_port
from kws.config import CRNNConfig, KWSConfig, KWSTrainConfig, save_kws_config
from kws.data import NoiseBank, load_clips, manifest_entry, scan_speech_commands
from kws.train import train
from test_kws_pipeline import _word, _write_layout

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["_background_", "yes"]
SR = 16000


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A wake word ("yes", a tone) against everything else, and a 20 s negative stream of
    noise with other tones in it for the miner to find."""
    root = tmp_path_factory.mktemp("kws_ddp")
    rng = np.random.default_rng(0)
    _write_layout(root / "sc", rng, per_class=6)
    entries = [manifest_entry(p, "yes" if lab == "yes" else "_background_", spk)
               for p, lab, spk in scan_speech_commands(root / "sc", ["_silence_", "_unknown_", "yes", "no"])]
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    (root / "negatives").mkdir()
    stream = np.concatenate([_word(f, rng) for f in (700.0, 900.0, 1200.0, 2500.0) * 5])
    sf.write(root / "negatives" / "talk.wav", stream, SR)
    return {"root": root, "manifest": manifest, "negatives": root / "negatives",
            "clips": load_clips(entries, {n: i for i, n in enumerate(LABELS)})}


def deterministic_config(**train):
    """No dropout, SpecAugment, mixup or batch norm (whose statistics are per process on
    the CPU): the runs may differ only in how each batch is spread over processes. The
    windows' own augmentation stays on: every rank makes the same window for a position."""
    cfg = KWSConfig(name="ddp", task="wakeword", labels=LABELS, keyword="yes",
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1,
                                     dropout=0.0, conv_batchnorm=False),
                    train=KWSTrainConfig(**{
                        "epochs": 3, "examples_per_epoch": 36, "batch_size": 12, "lr": 1e-2,
                        "max_minutes": None, "mixup_alpha": 0.0, "hard_negative_every": 1,
                        "hard_negative_start": 1, "hard_negative_max": 8,
                        "hard_negative_threshold": 0.3, "hard_negative_weight": 0.5, **train}))
    cfg.augment.pitch_semitones = [0.0]
    cfg.augment.specaugment = None
    return cfg


def streams(data):
    from asr.audio import load_audio

    return [load_audio(data["negatives"] / "talk.wav", SR)]


def torchrun(cfg, data, out, nproc=2):
    path = out.parent / f"{out.name}.yaml"
    save_kws_config(cfg, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         "-m", "kws", "train", "--config", str(path), "--train", str(data["manifest"]),
         "--negatives-stream", str(data["negatives"]), "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def assert_same_weights(dir_a, dir_b):
    a = torch.load(dir_a / "model.pt", weights_only=False)
    b = torch.load(dir_b / "model.pt", weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][name], b["state_dict"][name], rtol=1e-4, atol=1e-5,
                                   msg=name)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    summary = train(deterministic_config(), data["clips"], [], out, NoiseBank([], colored_prob=1.0),
                    streams(data))
    return out, summary


def test_two_processes_step_as_one_with_the_same_global_batch(data, one_process, tmp_path):
    ref, ref_summary = one_process
    reports = torchrun(deterministic_config(), data, tmp_path / "two")
    epochs, final = reports[:-1], reports[-1]  # rank 0 alone reports: a row per epoch, then the summary
    assert len(epochs) == 3 and final["epochs_run"] == ref_summary["epochs_run"] == 3
    assert_same_weights(ref, tmp_path / "two")
    # the two ranks shared every global batch of 12 evenly, and mined the same pool
    assert [e["examples_per_rank"] for e in epochs] == [[18, 18]] * 3
    history = {e: json.loads((d / "history.json").read_text()) for e, d in (("one", ref), ("two", tmp_path / "two"))}
    assert [h["examples_per_rank"] for h in history["one"]] == [[36]] * 3
    # the last epoch does not mine (nothing would train on it)
    assert [h.get("hard_pool") for h in history["two"]] == [h.get("hard_pool") for h in history["one"]]
    assert history["one"][0]["hard_pool"] > 0  # the miner found windows: the pool was used
    saved = torch.load(tmp_path / "two" / "model.pt", weights_only=False)["config"]
    assert saved["train"]["world_size"] == 2


def test_a_run_resumed_on_another_world_size_continues(data, one_process, tmp_path, monkeypatch):
    import kws.train

    ref, _ = one_process
    out = tmp_path / "moved"
    real, saved = kws.train.save_resume_state, []

    def die_after_first_epoch(path, state):
        real(path, state)
        saved.append(state["epoch"])
        raise Killed

    monkeypatch.setattr(kws.train, "save_resume_state", die_after_first_epoch)
    with pytest.raises(Killed):  # one process, killed after its first epoch ...
        train(deterministic_config(), data["clips"], [], out, NoiseBank([], colored_prob=1.0), streams(data))
    assert saved == [1]
    # ... continued by two, which take the hard-negative pool and the schedule from last.pt
    reports = torchrun(deterministic_config(), data, out)
    assert [e["epoch"] for e in reports[:-1]] == [2, 3]
    assert_same_weights(ref, out)
    history = json.loads((out / "history.json").read_text())
    assert [h["examples_per_rank"] for h in history] == [[36], [18, 18], [18, 18]]
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["done_steps"] == 9 and last["config"]["train"]["world_size"] == 2


def test_a_changed_config_starts_afresh(data, one_process, tmp_path):
    """last.pt continues only its own run: another learning rate trains from the start."""
    ref, _ = one_process
    out = tmp_path / "changed"
    out.mkdir()
    (out / "last.pt").write_bytes((ref / "last.pt").read_bytes())
    summary = train(deterministic_config(lr=5e-3, epochs=1), data["clips"], [], out,
                    NoiseBank([], colored_prob=1.0), streams(data))
    assert summary["epochs_run"] == 1
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
