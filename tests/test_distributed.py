"""`torchrun -m asr train`: two CPU processes (gloo) step as one process with the same
global batch, and a run resumed on another world size continues the same run."""
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.checkpoint import read_checkpoint
from asr.config import save_config
from asr.distributed import World, shard
from asr.train import Trainer
from conftest import free_port
from test_train import Killed, die_after_step
from test_train_resume import plain_config

ROOT = Path(__file__).resolve().parents[1]


def deterministic_config(manifest, **train):
    """No dropout, SpecAugment or waveform augmentation: the runs may differ only in how
    the batches are spread over processes."""
    cfg = plain_config(manifest, epochs=2, checkpoint_every=2, **train)
    cfg.specaugment = None
    cfg.encoder = dataclasses.replace(cfg.encoder, dropout=0.0)
    cfg.data = dataclasses.replace(cfg.data, valid="")
    return cfg


def torchrun(cfg, tmp_path, exp, nproc=2):
    path = tmp_path / f"{exp}.yaml"
    save_config(cfg, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         "-m", "asr", "train", "--config", str(path), "--exp", str(tmp_path / exp)],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def assert_same_weights(path_a, path_b):
    a, b = read_checkpoint(path_a)["model"], read_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shards_are_disjoint_and_equal():
    batches = list(range(11))
    shares = [shard(batches, World(r, 3)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9 and 10 wait for the next epoch


def test_two_processes_step_as_one_with_the_same_global_batch(tmp_path, tone_corpus):
    one = Trainer(deterministic_config(tone_corpus, accum_steps=2), tmp_path / "one")
    assert all(n % 2 == 0 for n in one.epoch_batches)  # nothing left out by the sharding
    ref = one.fit()

    reports = torchrun(deterministic_config(tone_corpus), tmp_path, "two")
    assert len(reports) == 1 and reports[0]["steps"] == ref.steps  # rank 0 reports
    assert_same_weights(ref.model_path, tmp_path / "two" / "model.pt")
    last = read_checkpoint(tmp_path / "two" / "last.pt")
    assert last["config"]["train"]["world_size"] == 2
    assert last["scheduler"] == {**read_checkpoint(tmp_path / "one" / "last.pt")["scheduler"],
                                 "elapsed": last["scheduler"]["elapsed"]}
    rows = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    per_rank = [r["utterances_per_rank"] for r in rows if r["kind"] == "epoch"]
    assert len(per_rank) == 2 and all(len(p) == 2 and min(p) > 0 and sum(p) == 8
                                      for p in per_rank)


def test_a_run_resumed_on_another_world_size_continues(tmp_path, tone_corpus, monkeypatch):
    cfg = deterministic_config(tone_corpus, accum_steps=2)
    first = Trainer(cfg, tmp_path / "one")
    ref, ref_batches = first.fit(), first.epoch_batches

    # one process, killed in its third step, after the checkpoint at step 2 ...
    trainer = Trainer(cfg, tmp_path / "moved")
    die_after_step(monkeypatch, trainer, 2)
    with pytest.raises(Killed):
        trainer.fit()
    assert read_checkpoint(tmp_path / "moved" / "last.pt")["step"] == 2
    # ... resumed by two processes, each with half the batches per step
    reports = torchrun(deterministic_config(tone_corpus), tmp_path, "moved")
    assert reports[0]["steps"] == ref.steps
    assert_same_weights(ref.model_path, tmp_path / "moved" / "model.pt")
    moved, one = (read_checkpoint(tmp_path / e / "last.pt") for e in ("moved", "one"))
    assert moved["scheduler"]["steps"] == one["scheduler"]["steps"]
    assert moved["scheduler"]["consumed"] == one["scheduler"]["consumed"]
    assert moved["config"]["train"]["world_size"] == 2
    # the schedule counts batches, not steps: it ends on the last batch, however many
    # processes and accumulated batches a step had
    assert moved["scheduler"]["consumed"] == sum(ref_batches)
    assert moved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.train.lr * 0.01)


def test_a_rank_whose_batch_failed_to_load_still_joins_the_step(tmp_path, tone_corpus):
    """One clip decodes to NaN (its header reads): alone in its batch, that rank trains on
    a zero-weight stand-in, and the step still equals one process that skips it."""
    import soundfile as sf

    from asr.data import read_manifest

    broken = read_manifest(tone_corpus)[0].audio
    sf.write(broken, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    cfg = deterministic_config(tone_corpus, max_batch_seconds=0.8)  # a clip a batch
    one = Trainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, accum_steps=2)),
                  tmp_path / "one")
    assert all(n % 2 == 0 for n in one.epoch_batches)
    ref = one.fit()
    assert [r.id for r in ref.rejected] == ["utt0"]

    reports = torchrun(cfg, tmp_path, "two")
    assert reports[0]["steps"] == ref.steps
    assert_same_weights(ref.model_path, tmp_path / "two" / "model.pt")
    rows = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    assert all(sum(r["utterances_per_rank"]) == 7 for r in rows if r["kind"] == "epoch")


def _agree(rank, port, results):
    import torch.distributed as dist

    from asr.distributed import all_reduce_max, per_rank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world, cpu = World(rank, 2), torch.device("cpu")
    results[rank] = (all_reduce_max(3.0 + 2 * rank, world, cpu), per_rank(10 + rank, world, cpu))
    dist.destroy_process_group()


def test_ranks_agree_on_the_slowest_clock():
    """With a time budget the clock sets the learning rate and the stop: every rank must
    see the same one, or their weights drift apart and one waits for the other forever."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agree, args=(free_port(), results), nprocs=2)
        assert dict(results) == {0: (5.0, [10.0, 11.0]), 1: (5.0, [10.0, 11.0])}


def test_a_commands_process_group_is_torn_down_after_it_returns_or_fails(tmp_path, monkeypatch):
    """The train commands leave no process group behind (a gloo rank that exits while a
    peer is busy can abort), and a command that failed is not held at a barrier."""
    import torch.distributed as dist

    from asr.distributed import process_group_of_the_run

    barriers = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    for n, fails in enumerate((False, True)):
        with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
            with process_group_of_the_run():
                dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store{n}", rank=0, world_size=1)
                if fails:
                    raise RuntimeError("the run failed")
        assert not dist.is_initialized()
    assert barriers == [1]  # after the run that returned, not after the one that failed
    with process_group_of_the_run():  # a one-process run that never joined a group
        pass
