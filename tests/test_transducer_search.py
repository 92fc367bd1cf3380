"""Transducer greedy and beam search against exhaustive enumeration on tiny inputs."""
from __future__ import annotations

import itertools

import pytest
import torch

from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses.rnnt import rnnt_loss
from asr.registry import SEARCHES
from asr.lm import NgramLM
from asr.search.transducer import transducer_beam, transducer_greedy


def _head(pred_type="lstm", V=4, sharpen=1.0, seed=0, blank_bias=0.0):
    torch.manual_seed(seed)
    cfg = TransducerConfig(
        vocab_size=V, enc_dim=6, pred_type=pred_type, pred_dim=8, context_size=2, joiner_dim=10, loss="reference"
    )
    head = TransducerHead(cfg).double().eval()
    with torch.no_grad():
        head.output.weight.mul_(sharpen)
        head.output.bias.mul_(sharpen)
        head.output.bias[head.blank] += blank_bias  # random models otherwise rarely emit blank
    return head


def _enc(B, T, seed=1):
    return torch.randn(B, T, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _exhaustive(head, enc, T, max_len, lm=None, lm_weight=0.0):
    """log P(y|x) (+ LM) for every label sequence of length <= max_len, best first."""
    V = head.config.vocab_size
    labels = [v for v in range(V) if v != head.blank]
    seqs = [s for n in range(max_len + 1) for s in itertools.product(labels, repeat=n)]
    N = len(seqs)
    targets = torch.ones(N, max(max_len, 1), dtype=torch.long)
    for i, s in enumerate(seqs):
        targets[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    target_lens = torch.tensor([len(s) for s in seqs])
    encs = enc[None, :T].expand(N, T, enc.shape[-1])
    enc_lens = torch.full((N,), T)
    with torch.no_grad():
        dec, _, _ = head.predict(targets, target_lens)
        logp = -rnnt_loss("reference", head, encs, dec, targets, enc_lens, target_lens)
    scored = []
    for s, lp in zip(seqs, logp.tolist()):
        if lm is not None:
            lp += lm_weight * sum(lm(s[:i], s[i]) for i in range(len(s)))
        scored.append((lp, s))
    return sorted(scored, reverse=True)


@pytest.mark.parametrize("pred_type", ["lstm", "stateless"])
def test_beam_matches_exhaustive_search(pred_type):
    head = _head(pred_type)
    T, max_len = 4, 3
    enc = _enc(2, T + 1)
    lens = torch.tensor([T, T - 1])
    results = transducer_beam(head, enc, lens, beam=64, nbest=5, max_output_length=max_len)
    for b in range(2):
        truth = _exhaustive(head, enc[b], int(lens[b]), max_len)
        got = results[b].nbest
        assert len(got) == 5
        for hyp, (lp, seq) in zip(got, truth[:5]):
            assert tuple(hyp.tokens) == seq
            assert hyp.score == pytest.approx(lp, abs=1e-9)


def test_small_beam_is_sorted_and_bounded_by_exhaustive():
    head = _head("gru", V=5, sharpen=3.0)
    T, max_len = 5, 3
    enc = _enc(3, T, seed=2)
    lens = torch.tensor([5, 4, 3])
    results = head.decode(enc, lens, "beam", beam=3, nbest=3, max_output_length=max_len)
    for b, res in enumerate(results):
        truth = _exhaustive(head, enc[b], int(lens[b]), max_len)
        scores = [h.score for h in res.nbest]
        assert scores == sorted(scores, reverse=True)
        assert len(set(tuple(h.tokens) for h in res.nbest)) == len(res.nbest)
        assert res.best.score <= truth[0][0] + 1e-9
        exact = dict((s, lp) for lp, s in truth)
        for h in res.nbest:  # a pruned beam only loses alignments: never above the exact value
            assert h.score <= exact[tuple(h.tokens)] + 1e-9


def test_beam_with_lm_fusion_matches_exhaustive():
    head = _head("lstm")
    lm = NgramLM.train([[1, 1, 2], [1, 2], [2, 1, 1]], order=2, vocab_size=4)
    T, max_len = 4, 3
    enc = _enc(1, T, seed=3)
    lens = torch.tensor([T])
    for weight in (0.0, 0.7, 3.0):
        res = transducer_beam(head, enc, lens, beam=64, nbest=1, lm_score=lm, lm_weight=weight, max_output_length=max_len)
        lp, seq = _exhaustive(head, enc[0], T, max_len, lm=lm, lm_weight=weight)[0]
        assert tuple(res[0].best.tokens) == seq
        assert res[0].best.score == pytest.approx(lp, abs=1e-9)
    # the `lm` keyword (as in ctc_prefix_beam) is the same scorer
    alias = transducer_beam(head, enc, lens, beam=64, lm=lm, lm_weight=3.0, max_output_length=max_len)
    assert alias[0].best.tokens == res[0].best.tokens


def _alignment_logprob(head, enc, tokens, times, T):
    """Log-probability of the greedy alignment: labels at their frames, one blank per frame."""
    with torch.no_grad():
        dec, _, _ = head.predict(torch.tensor([tokens or [1]]), torch.tensor([len(tokens)]))
        logp = head.join(enc[None, :T], dec).log_softmax(-1)[0]  # (T, U+1, V)
    total, u = 0.0, 0
    for t in range(T):
        while u < len(tokens) and times[u] == t:
            total += float(logp[t, u, tokens[u]])
            u += 1
        total += float(logp[t, u, head.blank])
    return total


@pytest.mark.parametrize("pred_type", ["lstm", "gru", "stateless"])
def test_greedy_batched_scores_and_times(pred_type):
    # seeds chosen so that every predictor emits labels and some frames hit the limit of 2
    # (a forced frame advance), so the score is checked on both kinds of frame
    head = _head(pred_type, V=5, sharpen=2.0, seed=6, blank_bias=0.5)
    enc = _enc(3, 8, seed=5)
    lens = torch.tensor([8, 5, 1])
    batched = transducer_greedy(head, enc, lens, max_symbols_per_frame=2)
    assert any(2 in [r.best.times.count(t) for t in r.best.times] for r in batched)
    for b in range(3):
        T = int(lens[b])
        alone = transducer_greedy(head, enc[b : b + 1, :T], lens[b : b + 1], max_symbols_per_frame=2)[0].best
        hyp = batched[b].best
        assert (hyp.tokens, hyp.times) == (alone.tokens, alone.times)
        assert hyp.score == pytest.approx(alone.score, abs=1e-9)
        assert hyp.times == sorted(hyp.times) and all(0 <= t < T for t in hyp.times)
        assert max([hyp.times.count(t) for t in set(hyp.times)] or [0]) <= 2
        # a forced frame advance adds blank's log-probability, as the alignment does
        assert hyp.score == pytest.approx(_alignment_logprob(head, enc[b], hyp.tokens, hyp.times, T), abs=1e-9)


def test_beam_of_one_equals_greedy():
    head = _head("lstm", V=5, seed=6, blank_bias=2.0)
    enc = _enc(2, 7, seed=7)
    lens = torch.tensor([7, 6])
    greedy = transducer_greedy(head, enc, lens, max_symbols_per_frame=100)
    beam = transducer_beam(head, enc, lens, beam=1, max_output_length=100)
    for g, b in zip(greedy, beam):
        assert g.best.tokens == b.best.tokens
        assert g.best.times == b.best.times
        assert g.best.score == pytest.approx(b.best.score, abs=1e-9)


def test_trained_model_greedy_and_beam_match_exhaustive():
    """On a (briefly trained) confident model greedy, beam and exhaustive agree."""
    torch.manual_seed(0)
    V, T, D = 4, 6, 16
    feats = torch.randn(2, T, D)
    lens = torch.tensor([T, 5])
    targets = torch.tensor([[1, 3, 2], [2, 2, 1]])
    target_lens = torch.tensor([3, 2])
    encoder = torch.nn.Linear(D, 6)
    head = TransducerHead(TransducerConfig(
        vocab_size=V, enc_dim=6, pred_type="stateless", pred_dim=16, context_size=2, joiner_dim=16,
        loss="pruned", prune_range=3,
    ))
    opt = torch.optim.Adam(list(encoder.parameters()) + list(head.parameters()), lr=0.03)
    for _ in range(60):
        loss = head.loss(encoder(feats), lens, targets, target_lens).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.double().eval()
    with torch.no_grad():
        enc = encoder.double()(feats.double())
        greedy = head.decode(enc, lens, "greedy")
        beam = head.decode(enc, lens, "beam", beam=4, nbest=2, max_output_length=4)
    for b in range(2):
        truth = _exhaustive(head, enc[b], int(lens[b]), max_len=4)
        expected = tuple(targets[b, : target_lens[b]].tolist())
        assert truth[0][1] == expected
        assert tuple(greedy[b].best.tokens) == expected
        assert tuple(beam[b].best.tokens) == expected and len(beam[b].nbest) == 2
        assert truth[0][0] - 0.01 <= beam[b].best.score <= truth[0][0] + 1e-9  # beam 4 drops a few alignments


def test_beam_nbest_times_monotone_and_registered():
    assert SEARCHES.get("transducer_beam") is transducer_beam
    assert SEARCHES.get("transducer_greedy") is transducer_greedy
    head = _head("gru", V=6, seed=10)
    enc = _enc(2, 12, seed=11)
    lens = torch.tensor([12, 9])
    for res, T in zip(head.decode(enc, lens, "transducer_beam", beam=4, nbest=4), lens.tolist()):
        assert 1 <= len(res.nbest) <= 4
        scores = [h.score for h in res.nbest]
        assert scores == sorted(scores, reverse=True)
        for h in res.nbest:
            assert len(h.times) == len(h.tokens)
            assert h.times == sorted(h.times) and all(0 <= t < T for t in h.times)
            assert head.blank not in h.tokens


def test_beam_stops_once_no_hypothesis_can_reach_the_ended_ones():
    """After the last frame the search drops hypotheses below the `beam` best ended ones
    instead of adding labels up to the 3 T label limit (which took minutes and gigabytes
    on a one-minute recording): the n-best lists equal those of the search without the
    rule (a zero LM turns it off), and a long input ends in far fewer steps."""
    from asr.search.transducer import TransducerBeamSearch

    zero_lm = {"lm_score": lambda prefix, token: 0.0, "lm_weight": 1.0}
    for seed in range(12):
        head = _head("lstm", V=6, sharpen=2.0, seed=seed, blank_bias=1.0)
        enc = _enc(1, 30, seed=seed)
        for beam in (2, 4, 8):
            pruned = transducer_beam(head, enc, torch.tensor([30]), beam=beam, nbest=beam)[0]
            full = transducer_beam(head, enc, torch.tensor([30]), beam=beam, nbest=beam, **zero_lm)[0]
            assert [h.tokens for h in pruned.nbest] == [h.tokens for h in full.nbest]
            assert [h.score for h in pruned.nbest] == pytest.approx([h.score for h in full.nbest], abs=1e-9)
    head = _head("lstm", V=6, sharpen=2.0, seed=0, blank_bias=1.0)
    T = 300
    searches = {}
    for name, options in (("pruned", {}), ("full", zero_lm)):
        search = searches[name] = TransducerBeamSearch(head, beam=8, **options)
        search.advance(head.project_enc(_enc(1, T, seed=5))[0])
        searches[name] = (search.result(8, final=True), search.steps, len(search.final))
    assert [h.tokens for h in searches["pruned"][0].nbest] == [h.tokens for h in searches["full"][0].nbest]
    assert searches["full"][1] == 4 * T  # labels at the last frames up to the limit
    assert searches["pruned"][1] < 2 * T and searches["pruned"][2] < searches["full"][2] / 4
