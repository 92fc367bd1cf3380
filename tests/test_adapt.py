"""Self-training speaker adaptation (asr/adapt.py)."""
import json
import math
from dataclasses import replace

import pytest
import torch

from asr.adapt import AdaptConfig, adapt_to_speaker, evaluate_adapted, fine_tune, posterior, pseudo_labels
from asr.data import UtteranceDataset, collate, read_manifest
from asr.model import ASRModel
from asr.text import build_tokenizer
from tests.conftest import WORDS
from tests.test_train import tiny_config


@pytest.fixture
def setup(tone_corpus):
    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size).eval()
    utts = read_manifest(tone_corpus)
    vocabulary = [tok.encode(w) for w in WORDS]
    return model, tok, utts, vocabulary


def test_posterior_is_the_softmax_of_the_first_phrase():
    assert posterior([math.log(0.5), math.log(0.3), math.log(0.2)]) == pytest.approx(0.5)
    assert posterior([-1.0, -1.0]) == pytest.approx(0.5)
    assert posterior([-2.0, -1.0, float("-inf")]) == pytest.approx(1 / (1 + math.e))
    assert posterior([float("-inf"), float("-inf")]) == 0.0


def test_pseudo_labels_never_read_the_references(setup):
    model, tok, utts, vocabulary = setup
    labels = pseudo_labels(model, tok, utts, vocabulary)
    scrambled = [replace(u, text="zzz qqq") for u in utts]
    again = pseudo_labels(model, tok, scrambled, vocabulary)
    assert [(u.id, t, p) for u, t, p in labels] == [(u.id, t, p) for u, t, p in again]
    assert len(labels) == len(utts)
    assert all(t in WORDS and 0.0 <= p <= 1.0 for _, t, p in labels)


def _label_loss(model, tok, utts):
    ds = UtteranceDataset(utts, tok.encode, model.cfg.sample_rate)
    batch = collate([ds[i] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        losses = model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
    return float(losses["total"].sum())


def test_fine_tune_fits_its_labels_and_leaves_the_source_model_alone(setup):
    model, tok, utts, _ = setup
    relabelled = [replace(u, text="up") for u in utts]
    source = {k: v.clone() for k, v in model.state_dict().items()}
    before = _label_loss(model, tok, relabelled)
    tuned = fine_tune(model, tok, relabelled, AdaptConfig(epochs=8, lr=3e-3, batch_size=4))
    assert tuned is not model
    assert _label_loss(tuned, tok, relabelled) < 0.8 * before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.items())


def test_adaptation_keeps_the_model_when_no_clip_is_confident(setup):
    model, tok, utts, vocabulary = setup
    adapted, report = adapt_to_speaker(model, tok, utts, vocabulary,
                                       AdaptConfig(confidence=0.999999))
    assert adapted is model
    assert report == [{"round": 1, "clips": 8, "kept": 0, "mean_posterior": pytest.approx(
        sum(p for *_, p in pseudo_labels(model, tok, utts, vocabulary)) / 8)}]
    adapted, report = adapt_to_speaker(model, tok, utts, vocabulary,
                                       AdaptConfig(confidence=0.0, rounds=2, epochs=1))
    assert adapted is not model and [r["kept"] for r in report] == [8, 8]
    with pytest.raises(ValueError, match="confidence"):
        adapt_to_speaker(model, tok, utts, vocabulary, AdaptConfig(confidence=1.0))
    with pytest.raises(ValueError, match="rounds"):
        adapt_to_speaker(model, tok, utts, vocabulary, AdaptConfig(rounds=0))


def test_evaluate_adapted_adapts_per_speaker_and_scores_everything(setup, tmp_path):
    model, tok, utts, vocabulary = setup
    cfg = AdaptConfig(confidence=0.0, rounds=1, epochs=1)
    m = evaluate_adapted(model, tok, utts, cfg, vocabulary=vocabulary,
                         results_path=tmp_path / "res.jsonl")
    assert m["utterances"] == 8
    assert sorted(m["adaptation"]) == ["s0", "s1"]
    assert all(r[0]["kept"] == 4 for r in m["adaptation"].values())
    rows = [json.loads(l) for l in open(tmp_path / "res.jsonl")]
    assert sorted(r["id"] for r in rows) == sorted(u.id for u in utts)
    assert all(r["hyp"] in WORDS for r in rows)
    assert m["accuracy"] == pytest.approx(sum(r["hyp"] == r["ref"] for r in rows) / 8)
    with pytest.raises(ValueError, match="closed vocabulary"):
        evaluate_adapted(model, tok, utts, cfg)
