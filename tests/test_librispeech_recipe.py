"""The LibriSpeech recipe end to end on a tiny tree in the public layout: prepare (manifests
and training shards) -> train a few steps from the shards with the recipe's 100 h config
(shrunk) -> evaluate on test-clean."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.__main__ import main as asr_main
from asr.checkpoint import read_checkpoint
from asr.config import load_config
from asr.data import read_manifest
from asr.shards import read_index
from asr.train import Trainer
from recipes.librispeech import prepare as libri

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["YES", "NO", "UP", "DOWN"]


def make_librispeech(root: Path, sr: int = 16000) -> Path:
    """``LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` and
    ``<spk>-<chapter>.trans.txt``: tones whose pitch says the word."""
    rng = np.random.default_rng(0)
    layout = [("train-clean-100", "19", "198", 5), ("train-clean-100", "26", "495", 5),
              ("dev-clean", "84", "121123", 2), ("test-clean", "61", "70968", 3)]
    for part, spk, chap, n in layout:
        d = root / "LibriSpeech" / part / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i in range(n):
            uid = f"{spk}-{chap}-{i:04d}"
            word = WORDS[(i + int(spk)) % 4]
            t = np.arange(int(rng.uniform(0.5, 0.9) * sr)) / sr
            wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(word)) * t)
            sf.write(d / f"{uid}.flac", (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32),
                     sr, format="FLAC")
            lines.append(f"{uid} {word}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


@pytest.mark.timeout(600)  # a short training and an evaluation: minutes on a busy machine
def test_prepare_shard_train_evaluate_on_the_public_layout(tmp_path, monkeypatch, capsys):
    corpus = make_librispeech(tmp_path)
    out = tmp_path / "data"
    monkeypatch.setattr(sys, "argv", ["prepare", "--corpus", str(corpus), "--out", str(out),
                                      "--train", "train-clean-100", "--valid", "dev-clean",
                                      "--test", "test-clean", "--shard-size", "4"])
    libri.main()
    train = read_manifest(out / "train.jsonl")
    assert len(train) == 10 and {u.speaker for u in train} == {"19", "26"}
    assert len(read_manifest(out / "valid.jsonl")) == 2
    index = read_index(out / "train_shards")
    assert index["utterances"] == 10 and [s["utterances"] for s in index["shards"]] == [4, 4, 2]
    assert abs(index["seconds"] - sum(u.duration for u in train)) < 0.01

    # the recipe's own config, shrunk to seconds on a CPU
    cfg = load_config(ROOT / "recipes" / "librispeech" / "conformer_ctc_100h.yaml", [
        f"data.train_shards={out / 'train_shards'}", f"data.valid={out / 'valid.jsonl'}",
        "features.n_mels=20", "encoder.hidden_size=16", "encoder.num_layers=1",
        "encoder.conv_channels=4", "encoder.attention_heads=2", "encoder.conv_kernel=3",
        "tokenizer.vocab_size=12", "data.speed_perturb=[]", "data.shard_buffer=4",
        "train.epochs=2", "train.max_batch_seconds=2.0", "train.warmup_steps=2",
        "train.num_threads=1", "train.num_workers=0", "train.precision=fp32",
        "train.device=cpu", "train.checkpoint_every=2"])
    assert cfg.encoder.name == "conformer" and cfg.tokenizer.kind == "sentencepiece"
    result = Trainer(cfg, tmp_path / "exp").fit()
    assert result.epochs_done == 2 and result.steps >= 6
    assert result.utterances == 20  # both epochs saw every training utterance once
    state = read_checkpoint(result.model_path)
    assert state["tokenizer"]["kind"] == "sentencepiece"
    assert state["config"]["data"]["train_shards"] == str(out / "train_shards")

    capsys.readouterr()
    assert asr_main(["evaluate", "--model", str(result.model_path), "--corpus", "librispeech",
                     "--data", str(corpus / "test-clean"), "--search", "ctc_greedy",
                     "--threads", "1", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["utterances"] == 3 and metrics["skipped"] == 0
    assert 0.0 <= metrics["wer"] <= 3.0
