"""Closed-vocabulary search, the lexicon word LM, and frequency-warp augmentation."""
import itertools
import math
from pathlib import Path

import pytest
import torch

from asr.augment import warp_features, warp_frequency
from asr.config import load_config
from asr.heads.ctc import CTCHead
from asr.lm import EOS_WORD, WordLM
from asr.model import ASRModel
from asr.registry import SEARCHES
from asr.search.ctc import ctc_prefix_beam
from asr.search.vocab import ctc_vocab, transducer_vocab
from asr.text import CharTokenizer
from tests.test_ctc_search import brute_force
from tests.test_transducer_search import _alignment_logprob, _enc, _exhaustive, _head

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("seed", range(3))
def test_ctc_vocab_scores_are_exact_and_ranked(seed):
    g = torch.Generator().manual_seed(seed)
    T, V = 5, 3
    lp = torch.log_softmax(torch.randn(1, T, V, generator=g) * 2, dim=-1)
    exact = dict(brute_force(lp[0]))
    vocab = [[1], [2], [1, 2], [2, 1, 2], [1, 1]]
    res = ctc_vocab(lp, torch.tensor([T]), vocabulary=vocab, nbest=len(vocab))[0]
    assert sorted(tuple(h.tokens) for h in res.nbest) == sorted(tuple(p) for p in vocab)
    for h in res.nbest:
        assert h.score == pytest.approx(math.log(exact[tuple(h.tokens)]), abs=1e-5)
        assert len(h.times) == len(h.tokens) and h.times == sorted(h.times)
    scores = [h.score for h in res.nbest]
    assert scores == sorted(scores, reverse=True)


def test_ctc_vocab_through_the_head_and_bad_vocabulary():
    head = CTCHead(4, 5)
    enc, lens = torch.randn(2, 12, 4), torch.tensor([12, 7])
    out = head.decode(enc, lens, "ctc_vocab", vocabulary=[[1, 2], [3]], nbest=2)
    assert len(out) == 2 and all(len(r.nbest) == 2 for r in out)
    assert all(t < 7 for h in out[1].nbest for t in h.times)
    with pytest.raises(ValueError, match="non-empty"):
        ctc_vocab(torch.zeros(1, 3, 4), torch.tensor([3]), vocabulary=[])
    with pytest.raises(ValueError, match="at least one token"):
        ctc_vocab(torch.zeros(1, 3, 4), torch.tensor([3]), vocabulary=[[1], []])


@pytest.mark.parametrize("pred_type", ["lstm", "stateless"])
def test_transducer_vocab_scores_match_exhaustive_and_times_are_viterbi(pred_type):
    head = _head(pred_type, V=4, sharpen=2.0, blank_bias=1.0)
    T = 4
    enc = _enc(1, T)
    exact = {s: lp for lp, s in _exhaustive(head, enc[0], T, max_len=2)}
    vocab = [[1], [2, 3], [3, 3], [1, 2]]
    with torch.no_grad():
        res = transducer_vocab(head, enc, torch.tensor([T]), vocabulary=vocab, nbest=4)[0]
    for h in res.nbest:
        assert h.score == pytest.approx(exact[tuple(h.tokens)], abs=1e-4)
        # the times are the best alignment of this phrase: no other placement scores higher
        best = _alignment_logprob(head, enc[0], h.tokens, h.times, T)
        for times in itertools.combinations_with_replacement(range(T), len(h.tokens)):
            assert _alignment_logprob(head, enc[0], h.tokens, list(times), T) <= best + 1e-9
    assert "transducer_vocab" in head.search_methods and SEARCHES.get("transducer_vocab") is transducer_vocab


def _word_lm():
    tok = CharTokenizer()
    texts = ["turn on the light", "turn off the light", "turn on the radio"]
    return tok, WordLM.train(texts, 3, tok.encode, tok.word_separator())


def test_word_lm_spells_only_lexicon_words_and_scores_words():
    tok, lm = _word_lm()
    enc = lambda s: tuple(tok.encode(s))  # noqa: E731
    space = tok.word_separator()
    assert lm(enc("tu"), tok.encode("r")[0]) == 0.0  # "tur" is a prefix of "turn"
    assert lm(enc("tu"), tok.encode("x")[0]) == -math.inf
    assert lm(enc("tur"), space) == -math.inf  # "tur" is not a word
    # the separator costs the word's n-gram probability; words that follow are likelier
    after_on = lm(enc("turn on the"), space)
    assert after_on == pytest.approx(lm.lm((lm.word_ids["turn"], lm.word_ids["on"]), lm.word_ids["the"]))
    assert lm(enc("turn"), space) > lm(enc("light"), space)
    # a whole sentence: its last word and the end of the sentence are scored by final()
    assert lm.final(enc("turn on the ligh")) == -math.inf
    assert lm.final(enc("turn on the light")) > lm.final(enc("turn on the"))
    assert EOS_WORD in lm.words
    with pytest.raises(ValueError, match="character tokenizer"):
        from asr.text import Tokenizer
        Tokenizer().word_separator()


def test_word_lm_fusion_returns_a_sentence_of_known_words():
    tok, lm = _word_lm()
    target = tok.encode("turn on the light")
    V = tok.vocab_size
    # acoustics: the target's letters, but "light" smeared towards "lighd"
    lp = torch.full((1, 2 * len(target), V), -8.0)
    for i, c in enumerate(target):
        lp[0, 2 * i, c] = -0.1
        lp[0, 2 * i + 1, 0] = -0.1
    d, t = tok.encode("d")[0], tok.encode("t")[0]
    lp[0, 2 * (len(target) - 1), d], lp[0, 2 * (len(target) - 1), t] = -0.2, -1.8
    lens = torch.tensor([lp.shape[1]])
    assert tok.decode(ctc_prefix_beam(lp, lens, beam=8)[0].best.tokens) == "turn on the lighd"
    fused = ctc_prefix_beam(lp, lens, beam=8, lm_score=lm, lm_weight=0.5)[0].best
    assert tok.decode(fused.tokens) == "turn on the light"


def test_warp_frequency_identity_and_stretch():
    feats = torch.arange(10.0).repeat(2, 3, 1)  # (B=2, T=3, D=10), value = bin index
    assert torch.equal(warp_frequency(feats, 0.0), feats)
    g = torch.Generator().manual_seed(0)
    out = warp_frequency(feats, 0.2, generator=g)
    assert out.shape == feats.shape
    for b in range(2):
        row = out[b, 0]
        assert torch.all(row[1:] >= row[:-1])  # order of bins kept
        alpha = 1.0 / float(row[1])  # output bin d reads input bin d / alpha
        assert 0.8 - 1e-6 <= alpha <= 1.2 + 1e-6
        assert torch.equal(out[b, 0], out[b, 2])  # one warp per utterance, all frames


def test_warp_features_fixed_factor():
    feats = torch.arange(10.0).repeat(2, 3, 1)  # (B=2, T=3, D=10), value = bin index
    assert torch.equal(warp_features(feats, 1.0), feats)
    out = warp_features(feats, 1.25)
    assert torch.allclose(out[0, 0, :5], torch.arange(5.0) / 1.25)  # bin d reads d / alpha
    per_utt = warp_features(feats, torch.tensor([1.0, 0.8]))
    assert torch.equal(per_utt[0], feats[0])
    assert float(per_utt[1, 0, 4]) == pytest.approx(5.0)


@pytest.mark.parametrize("head,method", [("ctc", "ctc_greedy"), ("transducer", "transducer_vocab")])
def test_decode_with_warps_keeps_each_utterances_best_scoring_warp(head, method):
    torch.manual_seed(0)
    cfg = load_config(ROOT / "recipes" / "fsdd" / "rnnt.yaml")
    tok = CharTokenizer()
    model = ASRModel(cfg, tok.vocab_size).eval()
    waves, lens = torch.randn(3, 8000), torch.tensor([8000, 6000, 4000])
    options = {"vocabulary": [tok.encode(w) for w in ("one", "two", "six")], "nbest": 3} \
        if method.endswith("_vocab") else {}
    warps = [0.9, 1.0, 1.1]
    plain = model.decode(waves, lens, head=head, method=method, **options)
    same = model.decode(waves, lens, head=head, method=method, warps=[1.0], **options)
    assert [r.best.tokens for r in same] == [r.best.tokens for r in plain]
    merged = model.decode(waves, lens, head=head, method=method, warps=warps, **options)
    singles = [model.decode(waves, lens, head=head, method=method, warps=[a], **options)
               for a in warps]
    for b, res in enumerate(merged):
        best_warp = max(singles, key=lambda s: s[b].best.score)[b].best
        assert res.best.tokens == best_warp.tokens
        assert res.best.score == pytest.approx(max(s[b].best.score for s in singles))
        scores = [h.score for h in res.nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in res.nbest}) == len(res.nbest)
    with pytest.raises(ValueError, match="warps"):
        model.decode(waves, lens, head=head, method=method, warps=[3.0], **options)
