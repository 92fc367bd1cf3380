"""Baseline scorers against hand computations: least confidence, N-best entropy, random."""
import math

import pytest
import torch

from active_learning.nbest import search_nbest
from active_learning.scorers import ScoringConfig, build_scorer
from asr.config import HeadConfig
from asr.search.types import Hypothesis
from test_al_egl import clips, tiny_model

NBEST = [Hypothesis([3, 1, 4], -1.2), Hypothesis([3, 1], -2.0), Hypothesis([5], -3.5)]


def scorer(method, **options):
    model = tiny_model({"ctc": HeadConfig()})
    return build_scorer(model, ScoringConfig(method=method, **options))


def test_least_confidence_is_one_minus_the_best_per_token_probability():
    assert scorer("confidence").from_nbest(NBEST) == pytest.approx(1 - math.exp(-1.2 / 3))
    assert scorer("confidence", confidence_length_norm="none").from_nbest(NBEST) == \
        pytest.approx(1 - math.exp(-1.2))
    # an empty best hypothesis counts as one token
    assert scorer("confidence").from_nbest([Hypothesis([], -0.5)]) == pytest.approx(1 - math.exp(-0.5))


def test_nbest_entropy_over_renormalised_posteriors():
    z = math.exp(-1.2) + math.exp(-2.0) + math.exp(-3.5)
    p = [math.exp(-1.2) / z, math.exp(-2.0) / z, math.exp(-3.5) / z]
    expected = -sum(q * math.log(q) for q in p)
    s = scorer("entropy")
    assert s.from_nbest(NBEST) == pytest.approx(expected, rel=1e-12)
    # the scale of the scores does not matter, only their differences
    shifted = [Hypothesis(h.tokens, h.score - 50.0) for h in NBEST]
    assert s.from_nbest(shifted) == pytest.approx(expected, rel=1e-9)
    assert s.from_nbest(NBEST[:1]) == 0.0


def test_nbest_scorers_read_the_models_nbest_in_eval_mode():
    s = scorer("entropy", nbest=3, beam=4)
    waves, lens = clips()
    got = s.score(["a", "b", "c"], waves, lens)
    with torch.no_grad():
        enc, enc_lens = s.model.eval().encode(waves, lens)
    lists = search_nbest(s.head, enc, enc_lens, 3, 4)
    assert all(len(r.nbest) == 3 for r in lists)
    assert got == [s.from_nbest(r.nbest) for r in lists]
    assert all(g > 0 for g in got)


def test_random_scores_are_seeded_per_clip():
    ids = [f"utt{i}" for i in range(50)]
    a = build_scorer(None, ScoringConfig(method="random", seed=1)).score(ids)
    assert all(0.0 <= x < 1.0 for x in a) and len(set(a)) == 50
    # a clip's score does not depend on its batch or its position
    again = build_scorer(None, ScoringConfig(method="random", seed=1))
    assert again.score(ids[::-1])[::-1] == a and again.score(ids[7:8]) == a[7:8]
    other = build_scorer(None, ScoringConfig(method="random", seed=2)).score(ids)
    assert other != a
    assert 0.4 < sum(a) / len(a) < 0.6
