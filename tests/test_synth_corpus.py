"""Fast checks of the embedded synthetic corpus generator (recipes/synth).

The tests use the names ``recipes.synth.generate`` re-exports; patches go to the module
whose code reads the name (``synthesize`` for the engine checks, ``voices`` for the voice
list).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from recipes.synth import generate as g
from recipes.synth import synthesize, voices

TEXT_RE = re.compile(r"[a-z']+( [a-z']+)*")
COUNTS = {"train": 8, "dev": 3, "test": 5}

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed")


def _engines() -> list[str]:
    """Engines usable here (espeak-ng required; flite/festival when installed)."""
    engines = g.available_engines()
    try:
        g.check_engines(engines)
    except RuntimeError:  # e.g. a festival voice package missing: fall back to espeak only
        engines = ["espeak"]
    return engines


def _read_manifests(out) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
            for s in g.SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny corpus made with 2 jobs: (out dir, manifests, engines)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("synth") / "corpus"
    engines = _engines()
    paths = g.generate(out, counts=COUNTS, seed=0, jobs=2, engines=engines, progress=False)
    assert set(paths) == set(g.SPLITS)
    return out, _read_manifests(out), engines


# ---------------------------------------------------------------- no synthesizer needed


def test_number_words():
    assert g.number_to_words(0) == "zero"
    assert g.number_to_words(15) == "fifteen"
    assert g.number_to_words(40) == "forty"
    assert g.number_to_words(421) == "four hundred twenty one"
    assert g.number_to_words(1005) == "one thousand five"
    assert g.number_to_words(9999) == "nine thousand nine hundred ninety nine"
    with pytest.raises(ValueError):
        g.number_to_words(10000)


def test_shipped_texts():
    commands, sentences = g.load_texts("commands"), g.load_texts("sentences")
    assert len(commands) >= 150 and len(set(commands)) == len(commands)
    assert 550 <= len(sentences) <= 650 and len(set(sentences)) == len(sentences)
    for text in commands + sentences:
        assert TEXT_RE.fullmatch(text), text
    assert all(4 <= len(s.split()) <= 10 for s in sentences)
    rng = np.random.default_rng(0)
    for kind in g.KIND_WEIGHTS:
        for _ in range(50):
            text = g.make_text(kind, rng, commands, sentences)
            assert TEXT_RE.fullmatch(text) and not re.search(r"\d", text), (kind, text)
    digits = [g.make_text("digits", rng, commands, sentences) for _ in range(200)]
    assert {len(d.split()) for d in digits} == set(range(1, 8))
    assert all(set(d.split()) <= set(g.DIGIT_WORDS) for d in digits)


def test_voice_split_is_speaker_independent():
    voices = g.split_voices()
    ids = {s: {v.id for v in vs} for s, vs in voices.items()}
    fams = {s: {v.family for v in vs} for s, vs in voices.items()}
    for a, b in [("train", "test"), ("train", "dev"), ("dev", "test")]:
        assert not ids[a] & ids[b] and not fams[a] & fams[b]
    for split in ("train", "test"):  # every engine in train and in test
        assert {v.engine for v in voices[split]} == set(g.ENGINE_WEIGHTS)
    total = sum(len(v) for v in voices.values())
    assert total > 100
    assert 0.10 <= len(voices["test"]) / total <= 0.20
    assert voices == g.split_voices()  # deterministic


def test_plan_is_deterministic_and_count_independent():
    voices = g.split_voices()["train"]
    texts = g.load_texts("commands"), g.load_texts("sentences")
    a = g.plan_split("train", 30, 0, voices, *texts)
    b = g.plan_split("train", 10, 0, voices, *texts)
    c = g.plan_split("train", 30, 1, voices, *texts)
    assert a[:10] == b
    assert [s.id for s in a] != [s.id for s in c]
    assert len({s.id for s in a}) == 30
    big = g.plan_split("train", 2000, 0, voices, *texts)
    kinds = {k: sum(s.kind == k for s in big) / len(big) for k in g.KIND_WEIGHTS}
    for kind, weight in g.KIND_WEIGHTS.items():
        assert abs(kinds[kind] - weight) < 0.05, kinds
    assert 0.25 < np.mean([s.snr_db is not None for s in big]) < 0.6
    assert all(15 <= s.snr_db <= 40 for s in big if s.snr_db is not None)


def test_missing_program_is_named(monkeypatch):
    monkeypatch.setattr(synthesize.shutil, "which",
                        lambda prog: None if prog == "flite" else "/bin/x")
    with pytest.raises(RuntimeError, match=r"'flite'.*apt package 'flite'"):
        g.check_engines(["flite"])


# ---------------------------------------------------------------- with synthesizers


def test_manifests_and_audio(corpus):
    out, manifests, engines = corpus
    info = json.loads((out / "corpus.json").read_text())
    assert info["config"]["counts"] == COUNTS and not info["failures"]
    all_ids = []
    for split, records in manifests.items():
        assert len(records) == COUNTS[split]
        allowed = set(info["voices"][split])
        for r in records:
            assert set(r) == {"id", "audio", "duration", "sample_rate", "text", "speaker",
                              "meta"}
            assert set(r["meta"]) == {"engine", "voice", "kind", "snr_db", "speed", "pitch"}
            assert r["sample_rate"] == 16000 and r["speaker"] in allowed
            assert r["meta"]["engine"] in engines and r["meta"]["kind"] in g.KIND_WEIGHTS
            assert r["speaker"] == f"{r['meta']['engine']}:{r['meta']['voice']}"
            assert TEXT_RE.fullmatch(r["text"])
            assert r["audio"].startswith("/") and r["audio"].endswith(f"wavs/{split}/{r['id']}.wav")
            audio, sr = sf.read(r["audio"], dtype="float32")
            assert sr == 16000 and audio.ndim == 1
            assert abs(len(audio) / sr - r["duration"]) < 1e-3
            n_words = len(r["text"].split())
            assert 0.3 + 0.12 * n_words < r["duration"] < 1.0 + 0.8 * n_words, r
            assert np.abs(audio).max() > 0.05  # not silent
            edge = int(0.05 * sr)  # ~100 ms of silence kept at both ends: quiet edges
            assert np.sqrt(np.mean(audio[:edge] ** 2)) < 0.2 * np.sqrt(np.mean(audio**2))
            all_ids.append(r["id"])
    assert len(set(all_ids)) == len(all_ids)
    speakers = {s: {r["speaker"] for r in recs} for s, recs in manifests.items()}
    assert not speakers["train"] & speakers["test"]
    assert not speakers["train"] & speakers["dev"]


def test_deterministic_across_job_counts(corpus, tmp_path):
    out, manifests, engines = corpus
    g.generate(tmp_path, counts=COUNTS, seed=0, jobs=1, engines=engines, progress=False)
    again = _read_manifests(tmp_path)
    n_espeak = 0
    for split in g.SPLITS:
        assert [(r["id"], r["text"], r["speaker"]) for r in again[split]] == \
               [(r["id"], r["text"], r["speaker"]) for r in manifests[split]]
        for a, b in zip(manifests[split], again[split]):
            if a["meta"]["engine"] == "espeak":
                n_espeak += 1
                with open(a["audio"], "rb") as fa, open(b["audio"], "rb") as fb:
                    assert fa.read() == fb.read(), a["id"]
    assert n_espeak >= 1
    other = g.plan_split("train", 8, 1, g.split_voices(engines)["train"],
                         g.load_texts("commands"), g.load_texts("sentences"))
    assert [s.id for s in other] != [r["id"] for r in manifests["train"]]


def test_cache_skips_existing_wavs(corpus):
    out, manifests, engines = corpus
    wavs = [r["audio"] for recs in manifests.values() for r in recs]
    before = {w: os.stat(w).st_mtime_ns for w in wavs}
    # Same config: the corpus.json fast path.
    g.generate(out, counts=COUNTS, seed=0, jobs=2, engines=engines, progress=False)
    # Without corpus.json: every wav is checked and reused, nothing synthesized.
    (out / "corpus.json").unlink()
    g.generate(out, counts=COUNTS, seed=0, jobs=2, engines=engines, progress=False)
    info = json.loads((out / "corpus.json").read_text())
    assert info["synthesized"] == 0
    assert {w: os.stat(w).st_mtime_ns for w in wavs} == before
    # A removed wav is made again (and only that one).
    os.unlink(wavs[0])
    g.generate(out, counts=COUNTS, seed=0, jobs=1, engines=engines, progress=False)
    info = json.loads((out / "corpus.json").read_text())
    assert info["synthesized"] == 1 and os.path.exists(wavs[0])
    assert _read_manifests(out) == manifests


@needs_espeak
def test_failed_utterance_is_skipped(tmp_path, monkeypatch, capsys):
    accents = ("en-us", "zz-no-such-voice")
    monkeypatch.setattr(voices, "ESPEAK_ACCENTS", accents)  # the voices planned
    monkeypatch.setattr(synthesize, "ESPEAK_ACCENTS", accents)  # what check_engines checks
    with pytest.raises(RuntimeError, match="zz-no-such-voice"):
        g.check_engines(["espeak"])  # caught up front ...
    monkeypatch.setattr(g, "check_engines", lambda engines: None)  # ... or per utterance:
    counts = {"train": 8, "dev": 0, "test": 0}
    g.generate(tmp_path, counts=counts, seed=3, jobs=1, engines=["espeak"], progress=False)
    info = json.loads((tmp_path / "corpus.json").read_text())
    manifests = _read_manifests(tmp_path)
    failed = {f["id"] for f in info["failures"]}
    assert failed, "expected the bogus voice to be drawn at least once"
    for f in info["failures"]:
        assert "espeak-ng" in f["error"] and "zz-no-such-voice" in f["error"]
    kept = {r["id"] for recs in manifests.values() for r in recs}
    assert not kept & failed
    assert len(kept) + len(failed) == sum(counts.values())
    assert all("zz-no-such-voice" not in r["speaker"] for recs in manifests.values()
               for r in recs)
    assert "FAILED" in capsys.readouterr().err


def test_kind_weights_select_single_digits():
    voices = g.split_voices(["espeak"])["train"]
    specs = g.plan_split("train", 30, 0, voices, ["turn on the lights"], ["a sentence here"],
                         kinds={"digit": 1.0})
    assert {s.kind for s in specs} == {"digit"}
    assert all(s.text in g.DIGIT_WORDS for s in specs)
    with pytest.raises(ValueError, match="unknown text kinds"):
        g.generate("/nonexistent", counts={"train": 1}, kinds={"poems": 1.0})
