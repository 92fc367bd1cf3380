"""Attention searches: beam 1 is greedy, a wide beam finds the exact best sequence, shallow
fusion, end detection, joint CTC/attention scores, and N-best rescoring (of an attention
beam's length-normalised N-best too)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from asr.heads.attention import AttentionConfig, AttentionHead
from asr.lm import NgramLM
from asr.search.attention import _Hyp, attention_beam, attention_greedy, end_detected
from asr.search.ctc_prefix_score import CTCPrefixScorer
from asr.search.rescore import rescore_nbest, rescore_nbest_lm
from asr.search.types import Hypothesis, SearchResult


def sharp_head(decoder: str, vocab_size: int = 7, ratio: float = 0.6, seed: int = 0) -> AttentionHead:
    torch.manual_seed(seed)
    head = AttentionHead(AttentionConfig(vocab_size=vocab_size, enc_dim=8, dim=16, attention_dim=8,
                                         location_channels=3, location_kernel=3, heads=2,
                                         ff_dim=16, decoder=decoder, max_length_ratio=ratio))
    with torch.no_grad():  # confident enough that hypotheses differ in length and end early
        head.decoder.output.weight.mul_(4.0)
    return head.eval()


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_beam_one_is_greedy(decoder):
    lengths = set()
    for seed in range(3):
        head = sharp_head(decoder, seed=seed)
        enc, enc_lens = torch.randn(4, 10, 8), torch.tensor([10, 8, 6, 3])
        greedy = attention_greedy(head, enc, enc_lens)
        for norm in (0.0, 1.0):
            beam = attention_beam(head, enc, enc_lens, beam=1, length_norm=norm)
            for g, b, n in zip(greedy, beam, enc_lens.tolist()):
                g, b = g.best, b.best
                assert (b.tokens, b.times) == (g.tokens, g.times)
                assert b.score == pytest.approx(g.score / (len(g.tokens) + 1) ** norm, abs=1e-5)
                assert all(0 <= t < n for t in g.times)  # the attended frame, inside the utterance
                lengths.add(len(g.tokens))
    assert len(lengths) > 1  # some stopped by eos, not all at the limit


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_batched_greedy_equals_one_at_a_time(decoder):
    head = sharp_head(decoder)
    enc, enc_lens = torch.randn(3, 9, 8), torch.tensor([9, 5, 2])
    together = attention_greedy(head, enc, enc_lens)
    for b, n in enumerate(enc_lens.tolist()):
        alone = attention_greedy(head, enc[b:b + 1, :n], enc_lens[b:b + 1])[0].best
        assert (together[b].best.tokens, together[b].best.times) == (alone.tokens, alone.times)
        assert together[b].best.score == pytest.approx(alone.score, abs=1e-4)


def all_sequences(vocab: int, max_len: int):
    labels = range(1, vocab)
    return [list(s) for n in range(max_len + 1) for s in itertools.product(labels, repeat=n)]


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_wide_beam_finds_the_most_likely_sequence(decoder):
    # beam wide enough to keep every prefix: the N-best are the exact best sequences, with
    # scores equal to the teacher-forced log P(y, eos | x)
    head = sharp_head(decoder, vocab_size=4, ratio=0.5)
    enc, enc_lens = torch.randn(1, 6, 8), torch.tensor([6])  # at most 3 labels
    seqs = all_sequences(4, 3)
    targets = torch.zeros(len(seqs), 3, dtype=torch.long)
    for i, s in enumerate(seqs):
        targets[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    with torch.no_grad():
        exact = head.sequence_log_probs(enc.expand(len(seqs), -1, -1), enc_lens.expand(len(seqs)),
                                        targets, torch.tensor([len(s) for s in seqs]))
    order = exact.argsort(descending=True)[:5].tolist()
    res = attention_beam(head, enc, enc_lens, beam=len(seqs), nbest=5, length_norm=0.0,
                         end_window=100)[0]
    assert [h.tokens for h in res.nbest] == [seqs[i] for i in order]
    assert [h.score for h in res.nbest] == pytest.approx([float(exact[i]) for i in order], abs=1e-4)


def test_shallow_fusion_with_the_ngram_lm():
    head = sharp_head("lstm")
    enc, enc_lens = torch.randn(2, 10, 8), torch.tensor([10, 7])
    lm = NgramLM.train([[2, 2, 2]] * 20, order=4, vocab_size=7, end_of_sentence=True)
    plain = attention_beam(head, enc, enc_lens, beam=4)
    assert attention_beam(head, enc, enc_lens, beam=4, lm_score=lm, lm_weight=0.0) == plain
    # beam 6: the pre-beam of ceil(1.5 beam) labels holds every label, so the LM picks freely
    fused = attention_beam(head, enc, enc_lens, beam=6, lm_score=lm, lm_weight=5.0)
    assert [r.best.tokens for r in fused] == [[2, 2, 2]] * 2
    assert [r.best.tokens for r in plain] != [[2, 2, 2]] * 2


def test_end_detection():
    ended = [_Hyp((1,), -1.0, (), 0), _Hyp((1, 2), -20.0, (), 0), _Hyp((1, 2, 3), -30.0, (), 0),
             _Hyp((1, 2, 3, 4), -40.0, (), 0)]
    assert end_detected(ended, 4)  # lengths 4, 3, 2 all ended far below the best
    assert not end_detected(ended, 5)  # nothing ended with 5 labels yet
    assert not end_detected(ended, 4, margin=-25.0)  # length 2 is within the margin
    assert not end_detected([], 3)


def ctc_log_prob(x: torch.Tensor, labels) -> float:
    """log P_ctc(labels | x) for x (T, V)."""
    if not labels:
        return float(x[:, 0].sum())
    return -float(F.ctc_loss(x[:, None], torch.tensor([labels]), torch.tensor([x.shape[0]]),
                             torch.tensor([len(labels)]), reduction="sum"))


def test_ctc_prefix_scores_match_enumeration():
    torch.manual_seed(0)
    T, V = 5, 3
    x = torch.randn(T, V).double().log_softmax(-1)
    scorer = CTCPrefixScorer(x)
    full = {tuple(s): ctc_log_prob(x, s) for s in all_sequences(V, T)}
    r = scorer.initial_state()[None]
    for prefix in [(), (1,), (1, 1), (2, 1)]:
        r = scorer.initial_state()[None]
        for i, tok in enumerate(prefix):  # walk to the prefix
            psi, r_new = scorer.extend(r, torch.tensor([prefix[i - 1] if i else -1]),
                                       torch.tensor([i == 0]), torch.tensor([[tok]]))
            r = r_new[:, 0]
        assert float(scorer.full_score(r)[0]) == pytest.approx(full[prefix], abs=1e-9)
        psi, _ = scorer.extend(r, torch.tensor([prefix[-1] if prefix else -1]),
                               torch.tensor([not prefix]), torch.tensor([[1, 2]]))
        for j, c in enumerate([1, 2]):  # P(output starts with prefix + c)
            starts = [v for s, v in full.items() if s[:len(prefix) + 1] == prefix + (c,)]
            assert float(psi[0, j]) == pytest.approx(math.log(sum(math.exp(v) for v in starts)), abs=1e-9)


def test_joint_decoding_with_ctc_weight_one_is_ctc_decoding():
    # all weight on CTC and a beam that keeps every prefix: the best is the most likely
    # label sequence under the CTC model (within the length limit)
    head = sharp_head("lstm", vocab_size=4, ratio=0.5)
    torch.manual_seed(1)
    enc, enc_lens = torch.randn(1, 6, 8), torch.tensor([6])
    x = torch.randn(1, 6, 4).log_softmax(-1)
    seqs = all_sequences(4, 3)
    scores = {tuple(s): ctc_log_prob(x[0].double(), s) for s in seqs}
    best = max(scores, key=scores.get)
    res = attention_beam(head, enc, enc_lens, beam=len(seqs), nbest=3, length_norm=0.0,
                         ctc_log_probs=x, ctc_weight=1.0, end_window=100)[0]
    assert tuple(res.best.tokens) == best
    for h in res.nbest:
        assert h.score == pytest.approx(scores[tuple(h.tokens)], abs=1e-5)
    half = attention_beam(head, enc, enc_lens, beam=4, ctc_log_probs=x, ctc_weight=0.5)
    assert half[0].best.tokens  # mixed weights decode too
    with pytest.raises(ValueError, match="ctc_log_probs"):
        attention_beam(head, enc, enc_lens, ctc_weight=0.5)


@torch.no_grad()
def test_rescoring_returns_the_best_combined_score():
    head = sharp_head("transformer")
    enc, enc_lens = torch.randn(2, 9, 8), torch.tensor([9, 6])
    torch.manual_seed(3)
    firsts = [SearchResult([Hypothesis(torch.randint(1, 7, (n,)).tolist(), -float(i), [0] * n)
                            for i, n in enumerate([3, 1, 4, 2, 0])]) for _ in range(2)]
    for weight in (0.0, 0.3, 0.7, 1.0):
        out = rescore_nbest(head, enc, enc_lens, firsts, weight)
        for b, (first, res) in enumerate(zip(firsts, out)):
            n = int(enc_lens[b])
            combined = {}
            for h in first.nbest:  # each candidate scored on its own
                att = head.sequence_log_probs(enc[b:b + 1, :n], enc_lens[b:b + 1],
                                              torch.tensor([h.tokens or [0]])[:, :len(h.tokens)],
                                              torch.tensor([len(h.tokens)]))
                combined[tuple(h.tokens)] = weight * float(att) + (1 - weight) * h.score
            assert res.best.score == pytest.approx(max(combined.values()), abs=1e-4)
            assert [h.score for h in res.nbest] == pytest.approx(sorted(combined.values(), reverse=True), abs=1e-4)
            assert sorted(map(tuple, (h.tokens for h in res.nbest))) == sorted(combined)
            if weight == 0.0:  # the first pass's order
                assert [h.tokens for h in res.nbest] == [h.tokens for h in first.nbest]


class PerLabelLM(torch.nn.Module):
    """A token LM indifferent to the words: log-prob -0.5 for every label and the end."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def sequence_log_probs(self, tokens, lens):
        """tokens (N, U), lens (N,) -> (N,) log P(tokens, end)."""
        return -0.5 * (lens + 1).double()


@torch.no_grad()
def test_rescoring_an_attention_beam_nbest_adds_like_to_like():
    """attention_beam ranks by log-score / (|y| + 1) ** length_norm and says so in each
    hypothesis's norm; a second pass divides its whole-sequence log-prob by the same norm.
    So an LM giving every label the same log-prob shifts every score alike and keeps the
    ranking, and the attention head re-scoring its own N-best changes nothing; adding the
    unnormalised log-probs instead favours the shortest hypothesis (checked here)."""
    head = sharp_head("lstm")
    enc, enc_lens = torch.randn(1, 10, 8), torch.tensor([10])
    first = attention_beam(head, enc, enc_lens, beam=4, nbest=4)
    hyps = first[0].nbest
    assert len({len(h.tokens) for h in hyps}) == 4  # four lengths: the scales differ
    for h in hyps:
        assert h.norm == len(h.tokens) + 1  # length_norm 1
        raw = head.sequence_log_probs(enc, enc_lens, torch.tensor([h.tokens]), torch.tensor([len(h.tokens)]))
        assert h.score * h.norm == pytest.approx(float(raw), abs=1e-4)  # the log-score

    lm, weight = PerLabelLM(), 1.0
    mixed = sorted(hyps, key=lambda h: -(h.score + weight * -0.5 * (len(h.tokens) + 1)))
    assert mixed[0].tokens != hyps[0].tokens  # unnormalised, the LM term would decide
    by_lm = rescore_nbest_lm(lm, first, weight)[0].nbest
    assert [h.tokens for h in by_lm] == [h.tokens for h in hyps]
    assert [h.score for h in by_lm] == pytest.approx([h.score - 0.5 * weight for h in hyps])
    assert [h.norm for h in by_lm] == [h.norm for h in hyps]
    for w in (0.5, 1.0):
        by_head = rescore_nbest(head, enc, enc_lens, first, w)
        assert [h.tokens for h in by_head[0].nbest] == [h.tokens for h in hyps]
        assert [h.score for h in by_head[0].nbest] == pytest.approx([h.score for h in hyps], abs=1e-4)
        # chained (ASRModel.decode: the head, then the LM): the norm is kept between them
        chained = rescore_nbest_lm(lm, by_head, weight)[0].nbest
        assert [h.tokens for h in chained] == [h.tokens for h in hyps]
