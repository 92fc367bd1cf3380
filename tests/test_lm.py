import math

import pytest
import torch

from asr.lm import NgramLM
from asr.search.ctc import ctc_prefix_beam
from asr.text import CharTokenizer


def test_probabilities_normalise_and_prefer_seen_text(tmp_path):
    tok = CharTokenizer()
    lm = NgramLM.train([tok.encode(t) for t in ["turn on the light", "turn off the light"]],
                       order=4, vocab_size=tok.vocab_size)
    for prefix in [(), tuple(tok.encode("tur")), tuple(tok.encode("xyzzy"))]:
        total = sum(math.exp(lm(prefix, t)) for t in range(tok.vocab_size))
        assert total == pytest.approx(1.0, abs=1e-9)
    assert lm(tuple(tok.encode("tur")), tok.encode("n")[0]) > lm(tuple(tok.encode("tur")), tok.encode("q")[0])
    lm.save(tmp_path / "lm.json")
    again = NgramLM.load(tmp_path / "lm.json")
    assert again(tuple(tok.encode("the lig")), tok.encode("h")[0]) == lm(tuple(tok.encode("the lig")), tok.encode("h")[0])


def test_fusion_fixes_an_acoustically_ambiguous_letter():
    tok = CharTokenizer()
    lm = NgramLM.train([tok.encode("cat")] * 5, order=3, vocab_size=tok.vocab_size)
    c, a, t, k = (tok.encode(x)[0] for x in "catk")
    lp = torch.full((1, 3, tok.vocab_size), -20.0)
    lp[0, 0, c] = 0.0
    lp[0, 1, a] = 0.0
    lp[0, 2, k], lp[0, 2, t] = math.log(0.6), math.log(0.4)  # acoustics slightly prefer "cak"
    lens = torch.tensor([3])
    assert tok.decode(ctc_prefix_beam(lp, lens, beam=4)[0].best.tokens) == "cak"
    fused = ctc_prefix_beam(lp, lens, beam=4, lm_score=lm, lm_weight=0.5)[0].best
    assert tok.decode(fused.tokens) == "cat"
