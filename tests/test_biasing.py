"""Hotword biasing: a boosted phrase that is slightly less likely than a distractor is
recalled with biasing, in CTC prefix beam and RNN-T beam search; a clearly spoken
distractor stays; an empty phrase list changes nothing."""
import math

import pytest
import torch

from asr.lm import NgramLM
from asr.search.biasing import ContextBiasing, with_biasing
from asr.search.ctc import ctc_prefix_beam
from asr.search.transducer import transducer_beam

V = 7  # blank 0; phrase 1 2 3, distractor 1 2 4, fillers 5 6
PHRASE, DISTRACTOR = [1, 2, 3], [1, 2, 4]


def slots(rng: torch.Generator, last: dict):
    """One utterance as label slots, each a distribution over V: fillers, 1 2 and a last
    slot giving 3 and 4 the probabilities ``last``, fillers."""
    def sure(tok):
        p = torch.full((V,), 0.1 / (V - 1))
        p[tok] = 0.9
        return p

    def fillers():
        return [sure(5 + int(torch.randint(0, 2, (1,), generator=rng))) for _ in
                range(int(torch.randint(0, 3, (1,), generator=rng)))]

    p = torch.full((V,), 0.0)
    for tok, prob in last.items():
        p[tok] = prob
    p[0] = 0.05
    p[[5, 6]] = (1.0 - p.sum()) / 2
    return fillers() + [sure(1), sure(2), p] + fillers()


def ctc_logits(slot_probs):
    """(T, V) frames: each slot's distribution, then a blank frame."""
    blank = torch.full((V,), 0.1 / (V - 1))
    blank[0] = 0.9
    return torch.stack([f for s in slot_probs for f in (s, blank)]).log()


def make_set(n: int, clear: bool, seed: int):
    rng = torch.Generator().manual_seed(seed)
    utts = []
    for _ in range(n):
        if clear:  # the distractor was said
            last = {3: 0.05, 4: 0.8}
        else:  # the phrase was said, but the distractor scores slightly higher
            margin = 0.02 + 0.06 * float(torch.rand(1, generator=rng))
            last = {3: 0.4, 4: 0.4 + margin}
        utts.append(slots(rng, last))
    return utts


def contains(tokens, phrase):
    return any(tokens[i:i + len(phrase)] == phrase for i in range(len(tokens)))


class FrameTransducer:
    """A transducer whose joiner, for a hypothesis with ``u`` labels, reads the frame's
    slot distribution if the frame holds slot ``u`` and says blank otherwise: each slot
    is one label (or none). Frames: ``enc (B, T, V + S)``, the slot's log-probabilities
    and a one-hot slot index (zeros on blank frames); the state counts the labels."""

    blank = 0

    def __init__(self, slots_max: int) -> None:
        self.S = slots_max

    def initial_state(self, batch_size, device=None):
        return (torch.full((batch_size,), -1, dtype=torch.long),)

    def step(self, tokens, state):
        count = state[0] + 1  # -1 before the start blank, then one more per label
        dec = torch.zeros(tokens.shape[0], V + self.S)
        dec[torch.arange(tokens.shape[0]), V + count.clamp(max=self.S - 1)] = 1.0
        return dec, (count,)

    def project_enc(self, enc):
        return enc

    def project_dec(self, dec):
        return dec

    def join_projected(self, enc_p, dec_p):
        match = (enc_p[..., V:] * dec_p[..., V:]).sum(-1, keepdim=True) > 0.5
        say_blank = torch.full(enc_p[..., :V].shape, -30.0)
        say_blank[..., 0] = 0.0
        return torch.where(match, enc_p[..., :V], say_blank)


def transducer_frames(slot_probs, S: int):
    frames = []
    for k, p in enumerate(slot_probs):
        frame = torch.zeros(V + S)
        frame[:V], frame[V + k] = p.log(), 1.0
        frames.append(frame)
        blank = torch.zeros(V + S)
        blank[1:V] = -30.0
        frames.append(blank)
    return torch.stack(frames)


def decode_ctc(utts, **options):
    out = []
    for u in utts:
        x = ctc_logits(u)[None]
        out.append(ctc_prefix_beam(x, torch.tensor([x.shape[1]]), beam=6, **options)[0].best)
    return out


def decode_rnnt(utts, **options):
    S = max(len(u) for u in utts) + 1  # one index more: "every slot read"
    head = FrameTransducer(S)
    out = []
    for u in utts:
        enc = transducer_frames(u, S)[None]
        out.append(transducer_beam(head, enc, torch.tensor([enc.shape[1]]), beam=6, **options)[0].best)
    return out


@pytest.mark.parametrize("decode", [decode_ctc, decode_rnnt])
def test_biasing_recalls_boosted_phrases(decode):
    said = make_set(12, clear=False, seed=0)
    distractors = make_set(6, clear=True, seed=1)
    recall = lambda hyps: sum(contains(h.tokens, PHRASE) for h in hyps) / len(hyps)
    plain = decode(said)
    assert all(contains(h.tokens, DISTRACTOR) for h in plain)  # the set is built so
    biased = decode(said, **with_biasing({}, [PHRASE], boost=0.5))
    assert recall(plain) == 0.0 and recall(biased) == 1.0
    # a clearly spoken distractor keeps it: the partial match's boost is taken back
    kept = decode(distractors, **with_biasing({}, [PHRASE], boost=0.5))
    assert all(contains(h.tokens, DISTRACTOR) for h in kept)
    # an empty list changes nothing, through with_biasing or as a scorer of its own
    assert with_biasing({"beam": 3}, []) == {"beam": 3}
    empty = decode(said, lm_score=ContextBiasing([], boost=0.5), lm_weight=1.0)
    assert [(h.tokens, h.times) for h in empty] == [(h.tokens, h.times) for h in plain]
    assert [h.score for h in empty] == pytest.approx([h.score for h in plain])


def test_boost_of_failed_matches_is_taken_back():
    bias = ContextBiasing([[1, 2, 3], [2, 3, 4], [5]], boost=1.0)
    total = lambda seq: sum(bias(tuple(seq[:i]), t) for i, t in enumerate(seq)) + bias.final(tuple(seq))
    assert total([1, 2, 3]) == 3.0  # a completed phrase keeps its boost
    assert total([1, 2, 4]) == 0.0  # a failed match gives it back
    assert total([1, 2]) == 0.0  # so does an unfinished one at the end
    assert total([1, 2, 2, 3, 4]) == 3.0  # falls back to the match 2 3 ..., which completes
    assert total([6, 5, 6, 5]) == 2.0
    assert bias((1,), 2) == 1.0 and bias((1, 2), 4) == -2.0


def test_biasing_keeps_the_lm():
    lm = NgramLM.train([[1, 2]], order=2, vocab_size=V, end_of_sentence=True)
    opts = with_biasing({"lm_score": lm, "lm_weight": 0.5, "beam": 4}, [[1, 2]], boost=2.0)
    scorer = opts["lm_score"]
    assert opts["lm_weight"] == 1.0 and opts["beam"] == 4
    assert scorer((1,), 2) == pytest.approx(0.5 * lm((1,), 2) + 2.0)
    assert scorer.final((1,)) == pytest.approx(0.5 * lm.final((1,)) - 2.0)
    assert math.isfinite(scorer((), 5))
