"""Tar shards (asr/shards.py): written and read back intact, streamed with bounded memory,
in a seeded order, resumed exactly, split exactly between ranks, with corrupt audio
skipped and named; and the trainer training from them and resuming mid-epoch."""
import dataclasses
import json
import logging
import tarfile
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.__main__ import main
from asr.audio import load_audio
from asr.data import read_manifest
from asr.shards import ShardDataset, ShardPlan, ShardStream, read_index, write_shards
from asr.text import CharTokenizer, normalize_text
from asr.train import Trainer
from conftest import make_tone_corpus
from test_train import Killed, die_after_step, tiny_config


def make_corpus(root, n=12, sr=16000, seconds=(0.3, 1.2), seed=0):
    """Sine and noise WAVs of random lengths, with a manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        dur = float(rng.uniform(*seconds))
        t = np.arange(int(dur * sr)) / sr
        wave = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) if i % 2
                else 0.1 * rng.standard_normal(t.size))
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), sr, subtype="PCM_16")
        rows.append({"id": f"spk{i % 3}-u{i}", "audio": f"u{i}.wav", "duration": len(t) / sr,
                     "text": f"word {'abcdefgh'[i % 8]} {i}", "speaker": f"spk{i % 3}"})
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def stream(shard_dir, max_seconds=2.0, seed=0, rank=0, world=1, **kw):
    tok = CharTokenizer()
    plan = ShardPlan(shard_dir, max_seconds, seed, rank, world, normalize=normalize_text,
                     encode=tok.encode, **kw)
    return ShardStream(plan, ShardDataset(tok.encode))


def ids_of(batches):
    return [list(b.ids) for b in batches]


def test_shards_hold_the_manifests_audio_and_text(tmp_path):
    manifest = make_corpus(tmp_path / "c", n=12)
    # one utterance as a segment of a longer file: stored as FLAC of that segment
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    rows[3].update(offset=0.1, duration=0.2)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = {u.id: u for u in read_manifest(manifest)}

    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "sh"),
                 "--shard-size", "5"]) == 0
    index = read_index(tmp_path / "sh")
    assert [s["utterances"] for s in index["shards"]] == [5, 5, 2]
    assert index["utterances"] == 12
    assert index["seconds"] == pytest.approx(sum(u.duration for u in utts.values()), abs=1e-2)

    # WebDataset layout: {key}.json then {key}.wav / .flac, consecutive
    with tarfile.open(tmp_path / "sh" / index["shards"][0]["name"]) as tar:
        names = tar.getnames()
    assert len(names) == 10 and all(a.split(".")[0] == b.split(".")[0]
                                    for a, b in zip(names[::2], names[1::2]))

    plan = ShardPlan(tmp_path / "sh", 100.0, shuffle=False, normalize=normalize_text)
    ds = ShardDataset(CharTokenizer().encode)
    seen = {}
    for e in plan.entries(0):
        seen[e.id] = e
        u = utts[e.id]
        want = load_audio(u.audio, 16000, offset=u.offset, duration=u.duration if u.offset else None)
        got = ds.load(e)
        assert got.shape == want.shape, e.id
        torch.testing.assert_close(got, want, atol=1 / 32768, rtol=0)
        assert e.text == normalize_text(u.text) and e.duration == pytest.approx(u.duration)
        assert e.ext == ("flac" if u.offset else "wav")
    assert sorted(seen) == sorted(utts)
    with tarfile.open(tmp_path / "sh" / index["shards"][0]["name"]) as tar:
        meta = json.loads(tar.extractfile(names[0]).read())
    assert meta["speaker"] == utts[meta["id"]].speaker

    # a second write into the same folder, and a missing size, are refused by name
    with pytest.raises(ValueError, match="already holds shards"):
        write_shards(list(utts.values()), tmp_path / "sh", shard_size=5, progress=False)
    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "x")]) == 2


def test_a_corpus_larger_than_the_buffer_is_read_with_bounded_memory(tmp_path):
    manifest = make_corpus(tmp_path / "c", n=150, seconds=(0.9, 1.1))  # ~32 kB each
    write_shards(read_manifest(manifest), tmp_path / "sh", shard_size=40, progress=False)
    corpus_bytes = sum(p.stat().st_size for p in (tmp_path / "sh").glob("*.tar"))
    cap_mb = 0.25
    assert corpus_bytes > 15 * cap_mb * 1e6  # the corpus is many times the cap

    s = stream(tmp_path / "sh", max_seconds=2.5, buffer_size=100_000, buffer_mb=cap_mb)
    tracemalloc.start()
    n = 0
    for batch in s:
        n += len(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 150
    assert s.plan.peak_held_bytes <= cap_mb * 1e6 + 40_000  # the cap plus one utterance
    # Python-side memory (bytes held, numpy reads; torch tensors are not traced)
    assert peak < corpus_bytes / 4, (peak, corpus_bytes)


def test_order_is_a_function_of_seed_and_epoch(tmp_path):
    write_shards(read_manifest(make_corpus(tmp_path / "c", n=30)), tmp_path / "sh",
                 shard_size=7, progress=False)

    def order(seed, epoch):
        s = stream(tmp_path / "sh", seed=seed, buffer_size=8)
        s.set_epoch(epoch)
        return ids_of(s)

    first = order(0, 0)
    assert sorted(sum(first, [])) == sorted(u.id for u in read_manifest(tmp_path / "c" / "m.jsonl"))
    assert order(0, 0) == first
    assert order(1, 0) != first
    assert order(0, 1) != first
    for batch in first:  # each batch fits the budget of padded audio
        durs = [json.loads(l)["duration"] for l in (tmp_path / "c" / "m.jsonl").read_text().splitlines()
                if json.loads(l)["id"] in batch]
        assert len(batch) == 1 or len(batch) * max(durs) <= 2.0


def test_a_restored_reader_yields_exactly_the_remaining_batches(tmp_path):
    write_shards(read_manifest(make_corpus(tmp_path / "c", n=40)), tmp_path / "sh",
                 shard_size=6, progress=False)
    full = stream(tmp_path / "sh", buffer_size=10)
    full.set_epoch(1)
    ref = list(full)
    assert len(ref) > 8

    first = stream(tmp_path / "sh", buffer_size=10)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    assert state["batch"] == 5 and state["epoch"] == 1

    resumed = stream(tmp_path / "sh", buffer_size=10)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert ids_of(head + rest) == ids_of(ref)
    for a, b in zip(rest, ref[5:]):
        torch.testing.assert_close(a.waves, b.waves)
        torch.testing.assert_close(a.targets, b.targets)
    with pytest.raises(ValueError, match="world_size=2"):
        stream(tmp_path / "sh", buffer_size=10).load_state_dict({**state, "world_size": 2})


def test_two_ranks_read_each_utterance_exactly_once_per_epoch(tmp_path):
    manifest = make_corpus(tmp_path / "c", n=31)
    write_shards(read_manifest(manifest), tmp_path / "sh", shard_size=4, progress=False)
    everything = sorted(u.id for u in read_manifest(manifest))
    for epoch in (0, 1):
        got = []
        for rank in (0, 1):
            s = stream(tmp_path / "sh", rank=rank, world=2, buffer_size=5)
            s.set_epoch(epoch)
            mine = sum(ids_of(s), [])
            assert 14 <= len(mine) <= 17  # a fair share
            got += mine
        assert sorted(got) == everything


def test_corrupt_audio_in_a_shard_is_skipped_and_named(tmp_path, caplog):
    write_shards(read_manifest(make_corpus(tmp_path / "c", n=10)), tmp_path / "sh",
                 shard_size=4, progress=False)
    shard = tmp_path / "sh" / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".wav")][1]
        bad_id = json.loads(tar.extractfile(member.name.replace(".wav", ".json")).read())["id"]
    raw = bytearray(shard.read_bytes())  # garbage over the whole member, tar intact
    raw[member.offset_data:member.offset_data + member.size] = b"\x07" * member.size
    shard.write_bytes(bytes(raw))
    # and the last shard breaks off in the middle
    last = tmp_path / "sh" / "shard-000002.tar"
    last.write_bytes(last.read_bytes()[:700])

    s = stream(tmp_path / "sh", buffer_size=3)
    with caplog.at_level(logging.WARNING):
        got = sum(ids_of(b for b in s if b is not None), [])
    key = member.name.split(".")[0]
    assert bad_id not in got and len(got) == 7  # 10 - the corrupt one - 2 past the break
    assert any(str(shard) in r.getMessage() and key in r.getMessage() for r in caplog.records)
    assert any(str(last) in r.getMessage() and "breaks off" in r.getMessage()
               for r in caplog.records)
    assert [r.id for r in s.dataset.rejected] == [bad_id]
    assert str(shard) in s.dataset.rejected[0].audio


@pytest.mark.timeout(600)  # three short trainings: seconds alone, minutes on a busy machine
def test_trainer_trains_from_shards_and_resumes_mid_epoch_to_the_same_batches(tmp_path, monkeypatch):
    manifest = make_tone_corpus(tmp_path / "tones", n=16)
    write_shards(read_manifest(manifest), tmp_path / "sh", shard_size=5, progress=False)
    cfg = tiny_config(manifest, epochs=2)
    cfg.data = dataclasses.replace(cfg.data, train="", train_shards=str(tmp_path / "sh"),
                                   shard_buffer=6)

    def record(trainer):
        seen = []
        real = trainer._train_step
        def step(group):
            seen.append([list(b.ids) for b in group if b is not None])
            return real(group)
        monkeypatch.setattr(trainer, "_train_step", step)
        return seen

    full_trainer = Trainer(cfg, tmp_path / "full")
    full_seen = record(full_trainer)
    full = full_trainer.fit()
    assert full.steps == len(full_seen) >= 8
    assert sorted(sum(sum(full_seen[:full_trainer.epoch_batches[0]], []), [])) == \
        sorted(u.id for u in read_manifest(manifest))  # epoch 1: every clip once

    killed = Trainer(cfg, tmp_path / "killed")
    killed_seen = record(killed)
    die_after_step(monkeypatch, killed, 2)  # after the checkpoint at step 2, mid-epoch 1
    with pytest.raises(Killed):
        killed.fit()
    from asr.checkpoint import read_checkpoint
    state = read_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["step"] == 2 and state["epoch"] == 0 and state["batch_in_epoch"] == 2

    resumed = Trainer(cfg, tmp_path / "killed")
    resumed_seen = record(resumed)
    result = resumed.fit()
    assert killed_seen[:2] + resumed_seen == full_seen
    assert result.steps == full.steps
    ref = torch.load(full.model_path, weights_only=False)["model"]
    got = torch.load(result.model_path, weights_only=False)["model"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
