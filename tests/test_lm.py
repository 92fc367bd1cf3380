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


def test_end_of_sentence_is_modelled_and_saved(tmp_path):
    tok = CharTokenizer()
    texts = ["master these and do not let them master you", "turn on the light"]
    lm = NgramLM.train([tok.encode(t) for t in texts], order=6, vocab_size=tok.vocab_size,
                       end_of_sentence=True)
    whole = tuple(tok.encode("turn on the light"))
    cut = tuple(tok.encode("let them master"))
    assert lm.final(whole) > lm.final(cut) + 2.0  # a cut-off sentence pays at its end
    # the distribution over next tokens, the end included, still sums to one
    total = sum(math.exp(lm(cut, t)) for t in range(tok.vocab_size)) + math.exp(lm.final(cut))
    assert total == pytest.approx(1.0, abs=1e-9)
    lm.save(tmp_path / "lm.json")
    assert NgramLM.load(tmp_path / "lm.json").final(whole) == lm.final(whole)
    plain = NgramLM.train([tok.encode(t) for t in texts], order=6, vocab_size=tok.vocab_size)
    assert plain.final(cut) == 0.0


def test_end_of_sentence_stops_a_beam_cutting_the_sentence_short():
    tok = CharTokenizer()
    lm = NgramLM.train([tok.encode("go home")] * 3, order=8, vocab_size=tok.vocab_size,
                       end_of_sentence=True)
    target = tok.encode("go home")
    # the last two letters are acoustically weak: without the end model the beam drops them
    lp = torch.full((1, len(target) + 2, tok.vocab_size), -12.0)
    lp[0, :, 0] = -0.05
    for i, c in enumerate(target[:-2]):
        lp[0, i, c], lp[0, i, 0] = -0.05, -4.0
    for i, c in enumerate(target[-2:], start=len(target) - 2):
        lp[0, i, c], lp[0, i, 0] = -1.2, -0.4
    lens = torch.tensor([lp.shape[1]])
    plain = NgramLM.train([tok.encode("go home")] * 3, order=8, vocab_size=tok.vocab_size)
    short = ctc_prefix_beam(lp, lens, beam=8, lm_score=plain, lm_weight=0.5)[0].best
    assert tok.decode(short.tokens) == "go ho"
    full = ctc_prefix_beam(lp, lens, beam=8, lm_score=lm, lm_weight=0.5)[0].best
    assert tok.decode(full.tokens) == "go home"
