import itertools
import math
from collections import defaultdict

import pytest
import torch

from asr.heads.ctc import CTCHead
from asr.search.ctc import ctc_greedy, ctc_prefix_beam


def collapse(path, blank=0):
    out, prev = [], blank
    for t in path:
        if t != blank and t != prev:
            out.append(t)
        prev = t
    return tuple(out)


def brute_force(lp):
    """Exact P(label sequence) by summing over all V^T alignments."""
    T, V = lp.shape
    probs = defaultdict(float)
    for path in itertools.product(range(V), repeat=T):
        probs[collapse(path)] += math.exp(sum(lp[t, s].item() for t, s in enumerate(path)))
    return sorted(probs.items(), key=lambda kv: -kv[1])


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    T, V = 5, 3
    lp = torch.log_softmax(torch.randn(1, T, V, generator=g) * 2, dim=-1)
    exact = brute_force(lp[0])
    res = ctc_prefix_beam(lp, torch.tensor([T]), beam=64, nbest=5)[0]
    assert len(res.nbest) == 5  # zip below would stop at the shorter list
    for hyp, (labels, p) in zip(res.nbest, exact[:5]):
        assert tuple(hyp.tokens) == labels
        assert hyp.score == pytest.approx(math.log(p), abs=1e-9)
    scores = [h.score for h in res.nbest]
    assert scores == sorted(scores, reverse=True)


def test_greedy_is_best_path_and_times():
    # frames: a a _ b b _ a  -> tokens (1, 2, 1) at first frames 0, 3, 6
    path = [1, 1, 0, 2, 2, 0, 1]
    lp = torch.full((1, 7, 3), math.log(0.1))
    for t, s in enumerate(path):
        lp[0, t, s] = math.log(0.8)
    res = ctc_greedy(lp, torch.tensor([7]))[0].best
    assert res.tokens == [1, 2, 1] and res.times == [0, 3, 6]
    assert res.score == pytest.approx(7 * math.log(0.8))
    beam = ctc_prefix_beam(lp, torch.tensor([7]), beam=4)[0].best
    assert beam.tokens == [1, 2, 1] and beam.times == [0, 3, 6]


def test_respects_lengths_and_lm_fusion():
    lp = torch.log_softmax(torch.randn(2, 6, 4), dim=-1)
    lp[1, 3:] = torch.log(torch.tensor([0.01, 0.97, 0.01, 0.01]))
    short = ctc_greedy(lp, torch.tensor([6, 3]))
    assert all(t < 3 for t in short[1].best.times)
    # an LM that forbids token 1 changes the beam result away from it
    fused = ctc_prefix_beam(lp[1:], torch.tensor([6]), beam=8,
                            lm_score=lambda prefix, tok: -100.0 if tok == 1 else 0.0, lm_weight=1.0)
    assert 1 not in fused[0].best.tokens


def test_ctc_head_loss_is_per_utterance():
    head = CTCHead(8, 5)
    enc = torch.randn(3, 20, 8, requires_grad=True)
    loss = head.loss(enc, torch.tensor([20, 15, 2]), torch.tensor([[1, 2, 3], [2, 2, 0], [1, 2, 3]]),
                     torch.tensor([3, 2, 3]))
    assert loss.shape == (3,)
    assert loss[2] == 0  # too short for its transcript: zeroed, not inf
    loss[0].backward()
    assert enc.grad[1].abs().sum() == 0 and enc.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="decodes with"):
        head.decode(enc, torch.tensor([20, 15, 2]), method="transducer_greedy")


def test_prefix_beam_times_come_from_the_previous_frame():
    # frame 1 first extends () to (1,) with a better emission than (1,)'s own at frame 0, then
    # extends (1,) to (1, 2): the 2 follows the 1 emitted at frame 0 (the only alignment of
    # (1, 2) in two frames), not the 1 just re-timed to frame 1 within the same frame
    lp = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.7, 0.2]]]))
    res = ctc_prefix_beam(lp, torch.tensor([2]), beam=8, nbest=8)[0]
    times = {tuple(h.tokens): h.times for h in res.nbest}
    assert times[(1,)] == [1]  # 0.5 * 0.7 beats 0.3
    assert times[(1, 2)] == [0, 1]
    for h in res.nbest:
        assert all(a < b for a, b in zip(h.times, h.times[1:])), (h.tokens, h.times)


@pytest.mark.parametrize("seed", range(3))
def test_prefix_beam_times_strictly_increase(seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(2, 30, 5, generator=g) * 3, dim=-1)
    for res in ctc_prefix_beam(lp, torch.tensor([30, 17]), beam=16, nbest=16):
        for h in res.nbest:
            assert len(h.times) == len(h.tokens)
            assert all(a < b for a, b in zip(h.times, h.times[1:])), (h.tokens, h.times)


def test_prefix_beam_keeps_only_the_live_beam_on_a_long_input():
    """Its memory stays flat as the utterance grows: after every frame of a 3,000-frame
    input, read in one ``advance`` as offline decoding does, the search holds scores, times
    and best emissions for at most ``beam`` prefixes (it kept every prefix ever proposed:
    ~beam x V more per frame, ~400k entries here)."""
    from asr.search.ctc_state import PrefixBeam

    torch.manual_seed(0)
    V, beam, T = 12, 16, 3000
    logits = torch.randn(T, V).mul(2)
    logits[:, 0] += 3.0  # mostly blank, as speech is
    search = PrefixBeam(beam=beam)
    read_frame, frames = search._frame, []

    def checked(row, t):  # the live state after each frame, not only after the chunk
        read_frame(row, t)
        held = (len(search.beams), len(search.extra), len(search.times), len(search.emit_best))
        assert max(held) <= beam, (t, held)
        frames.append(t)

    search._frame = checked
    search.advance(logits.log_softmax(-1))
    assert frames == list(range(T))
    assert len(search.result(nbest=1).best.tokens) > 100  # the search did follow the speech


def test_prefix_beam_log_probability_pruning():
    """token_min_logp skips unlikely tokens of a frame, beam_prune_logp drops prefixes far
    below the best; on peaky outputs (speech) the best hypothesis is unchanged."""
    V, T = 6, 12
    lp = torch.full((T, V), -20.0)
    lp[:, 0] = 0.0  # blank everywhere
    lp[5, 2] = -6.0  # one unlikely emission of token 2
    lp = lp.log_softmax(-1)[None]
    lens = torch.tensor([T])
    has_two = lambda res: any(2 in h.tokens for h in res[0].nbest)
    assert has_two(ctc_prefix_beam(lp, lens, beam=8, nbest=8))
    assert not has_two(ctc_prefix_beam(lp, lens, beam=8, nbest=8, token_min_logp=-5.0))
    # the frame's best token is never pruned, however low the floor is set
    best_only = ctc_prefix_beam(lp, lens, beam=8, nbest=8, token_min_logp=1.0)
    assert [h.tokens for h in best_only[0].nbest] == [[]]

    torch.manual_seed(0)
    logits = torch.randn(1, 40, V).mul(3)
    logits[..., 0] += 2.0
    lp = logits.log_softmax(-1)
    lens = torch.tensor([40])
    full = ctc_prefix_beam(lp, lens, beam=16, nbest=16)[0]
    assert full.nbest[-1].score < full.best.score - 0.5  # unpruned, the beam spreads wider
    cut = ctc_prefix_beam(lp, lens, beam=16, nbest=16, beam_prune_logp=0.5)[0]
    assert cut.nbest and all(h.score >= cut.best.score - 0.5 for h in cut.nbest)
    both = ctc_prefix_beam(lp, lens, beam=16, token_min_logp=-5.0, beam_prune_logp=10.0)[0]
    assert both.best.tokens == full.best.tokens
