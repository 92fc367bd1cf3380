"""Each recipe's prepare runs on a tiny tree generated here in the corpus's public layout."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_audio
from asr.checkpoint import load_model
from asr.corpora import load_corpus
from asr.data import read_manifest
from recipes.common import download
from recipes.fsdd.prepare import prepare as prepare_fsdd
from recipes.librispeech.prepare import prepare as prepare_libri
from recipes.ljspeech.prepare import prepare as prepare_lj

ROOT = Path(__file__).resolve().parents[1]


def _wav(path, seconds=0.3, sr=16000, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(seconds * sr))).astype(np.float32),
             sr, format=fmt)


def test_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech"
    for subset, spk, chap in [("train-clean-100", "19", "198"), ("train-clean-100", "26", "495"),
                              ("dev-clean", "84", "121123"), ("test-clean", "61", "70968")]:
        d = root / subset / spk / chap
        lines = []
        for i in range(2):
            uid = f"{spk}-{chap}-{i:04d}"
            _wav(d / f"{uid}.flac", fmt="FLAC")
            lines.append(f"{uid} HELLO WORLD NUMBER {i}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").write_bytes(b"broken")
    paths = prepare_libri(root, tmp_path / "out", ["train-clean-100"], ["dev-clean"], ["test-clean"])
    train = read_manifest(paths["train"])
    assert len(train) == 4 and {u.speaker for u in train} == {"19", "26"}
    assert train[0].text == "HELLO WORLD NUMBER 0" and abs(train[0].duration - 0.3) < 1e-3
    assert len(read_manifest(paths["valid"])) == 1  # the corrupt file is skipped
    assert len(load_corpus("librispeech", root / "test-clean")) == 2
    with pytest.raises(FileNotFoundError, match="train-other-500"):
        prepare_libri(root, tmp_path / "o2", ["train-other-500"], [], [])


def test_ljspeech_layout(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    rows = []
    for i in range(1, 11):
        uid = f"LJ001-{i:04d}"
        _wav(root / "wavs" / f"{uid}.wav")
        rows.append(f"{uid}|Raw text {i}, Mr. X|Raw text {i}, Mister X")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    paths = prepare_lj(root, tmp_path / "out")
    sizes = {k: len(read_manifest(v)) for k, v in paths.items()}
    assert sizes == {"train": 7, "valid": 1, "test": 2}
    assert read_manifest(paths["test"])[-1].text == "Raw text 10, Mister X"


def test_fsdd_layout_and_speaker_holdout(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    for spk in ("jackson", "theo"):
        for d in range(10):
            for i in (0, 46):
                _wav(rec / f"{d}_{spk}_{i}.wav", sr=8000)
    (rec / "README.txt").write_text("not audio")
    paths = prepare_fsdd(tmp_path / "fsdd", tmp_path / "out", test_speakers=["theo"])
    test = read_manifest(paths["test"])
    assert len(test) == 20 and {u.speaker for u in test} == {"theo"}
    assert test[0].sample_rate == 8000 and test[3].text in {"zero", "one", "two", "three", "four",
                                                            "five", "six", "seven", "eight", "nine"}
    train = read_manifest(paths["train"])
    assert {u.speaker for u in train} == {"jackson"} and len(train) == 10
    with pytest.raises(ValueError, match="bob"):
        prepare_fsdd(tmp_path / "fsdd", tmp_path / "o2", test_speakers=["bob"])


def test_download_fails_clearly_offline(tmp_path):
    with pytest.raises(RuntimeError, match="cannot download .* put it at"):
        download("http://127.0.0.1:9/nothing.tar.gz", tmp_path / "x.tar.gz")


def test_fsdd_recipe_end_to_end_on_a_tiny_tree(tmp_path):
    from recipes.fsdd.run import main as run_fsdd

    rec = tmp_path / "fsdd" / "recordings"
    for spk in ("jackson", "theo"):
        for d in range(10):
            for i in (0, 1, 46):
                _wav(rec / f"{d}_{spk}_{i}.wav", sr=8000)
    sc = tmp_path / "sc"  # real voices from Speech Commands: a digit word, and another word
    _wav(sc / "two" / "abc123_nohash_0.wav")
    _wav(sc / "yes" / "abc123_nohash_0.wav")
    cuts = tmp_path / "cuts" / "an4"  # digit words cut earlier (asr.word_cuts): read back, not aligned
    _wav(cuts / "six_00000.flac")
    _wav(cuts / "two_00001.flac")
    (cuts / "cuts.json").write_text(json.dumps([
        {"id": f"an4_{w}", "audio": str(cuts / f"{w}.flac"), "duration": 0.3, "text": w.split("_")[0],
         "speaker": "an4:fash"} for w in ("six_00000", "two_00001")]))
    summary = run_fsdd(["--corpus", str(tmp_path / "fsdd"), "--out", str(tmp_path / "exp"),
                        "--test-speakers", "theo", "--synthetic", "0",
                        "--speech-commands", str(sc), "--speech-commands-other-words",
                        "--digit-words", "an4", str(tmp_path / "no_an4_needed"),
                        "--digit-words-dir", str(tmp_path / "cuts"),
                        "--set", "train.epochs=1", "--set", "train.max_minutes=1",
                        "--ship", str(tmp_path / "shipped.pt")])
    assert summary["test_speakers"] == ["theo"] and summary["utterances"] == 30
    # jackson's 20 training clips, the Speech Commands digit listed 4 times, "yes" once, two digit words
    assert summary["train_utterances"] == 27
    # the clips are noise, so no accuracy is expected; the figures must be the rows' own
    digits = set((ROOT / "recipes" / "fsdd" / "digits.txt").read_text().split())
    rows = [json.loads(line) for line in open(tmp_path / "exp" / "test_results_vocab.jsonl")]
    assert len(rows) == 30 and all(r["hyp"] in digits for r in rows)  # only digit words
    assert summary["accuracy_vocab"] == pytest.approx(sum(r["hyp"] == r["ref"] for r in rows) / 30)
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["accuracy_vocab_warps"] <= 1.0
    assert (tmp_path / "shipped.pt").is_file()

    # the self-training adaptation check runs on the fold and labels only with digit words
    from recipes.fsdd.adapt_check import main as adapt_check

    out = adapt_check([str(tmp_path / "exp"), "--rounds", "1", "--epochs", "1", "--confidence", "0"])
    # round 1's mean posterior, recomputed clip by clip (unbatched) from the fold's model:
    # the softmax of the first phrase's log-likelihood over all ten
    model, tok, cfg = load_model(tmp_path / "exp" / "ctc" / "model.pt")
    vocabulary = [tok.encode(w) for w in cfg.decoding.vocabulary]
    posteriors = []
    for u in read_manifest(tmp_path / "exp" / "data" / "test.jsonl"):
        wave = load_audio(u.audio, cfg.sample_rate)
        scores = [h.score for h in model.decode(wave[None], torch.tensor([wave.numel()]),
                                                method="ctc_vocab", vocabulary=vocabulary,
                                                nbest=len(vocabulary))[0].nbest]
        posteriors.append(1.0 / sum(math.exp(s - scores[0]) for s in scores))
    assert out["rounds"] == [{"round": 1, "clips": 30, "kept": 30,
                              "mean_posterior": pytest.approx(sum(posteriors) / 30, abs=1e-4)}]
    assert out["before_vocab"] == pytest.approx(summary["accuracy_vocab"])
    for key, name in [("after_vocab", "adapted_vocab.jsonl"), ("after_default", "adapted_default.jsonl")]:
        rows = [json.loads(line) for line in open(tmp_path / "exp" / name)]
        assert len(rows) == 30 and all(r["hyp"] in digits for r in rows)
        assert out[key] == pytest.approx(sum(r["hyp"] == r["ref"] for r in rows) / 30)


def test_speech_commands_digits_as_extra_fsdd_training_data(tmp_path):
    from recipes.fsdd.prepare import speech_commands_digits

    sc = tmp_path / "sc"
    _wav(sc / "_unknown_" / "seven_abc123_nohash_0.flac", fmt="FLAC")
    _wav(sc / "_unknown_" / "happy_abc123_nohash_0.flac", fmt="FLAC")  # not a digit
    _wav(sc / "two" / "def456_nohash_1.wav")  # full v0.02 layout: a class folder
    _wav(sc / "yes" / "def456_nohash_0.wav")
    utts = speech_commands_digits(sc, repeat=2)
    assert sorted(u.text for u in utts) == ["seven", "seven", "two", "two"]
    assert {u.speaker for u in utts} == {"sc:abc123", "sc:def456"}
    assert len({u.id for u in utts}) == 4  # repeats get their own ids
    with pytest.raises(FileNotFoundError, match="Speech Commands"):
        speech_commands_digits(tmp_path / "missing")


def test_every_speech_commands_word_as_extra_training_data(tmp_path):
    from recipes.fsdd.prepare import speech_commands_words

    sc = tmp_path / "sc"
    _wav(sc / "_unknown_" / "happy_abc123_nohash_0.flac", fmt="FLAC")
    _wav(sc / "yes" / "def456_nohash_0.wav")
    _wav(sc / "_silence_" / "0.flac", fmt="FLAC")  # background noise: no word, never read
    utts = speech_commands_words(sc)
    assert sorted((u.text, u.speaker) for u in utts) == [("happy", "sc:abc123"), ("yes", "sc:def456")]
    assert [u.text for u in speech_commands_words(sc, words=["yes", "seven"])] == ["yes"]
