import pytest
import torch

from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.lm import NgramLM
from asr.search.ctc import (CTCGreedyState, PrefixBeam, collapse_path, ctc_greedy,
                            ctc_greedy_advance, ctc_prefix_beam)
from asr.search.transducer import (transducer_greedy, transducer_greedy_advance,
                                   transducer_greedy_init)

CHUNKINGS = [[1] * 30, [4, 4, 4, 4, 4, 4, 6], [7, 13, 10], [30]]


def _sticky_log_probs(B=3, T=30, V=6, seed=0):
    """Peaky frames whose best token often repeats, so repeats cross chunk boundaries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    best = torch.randint(0, V, (B, T), generator=g)
    for t in range(1, T):
        keep = torch.rand(B, generator=g) < 0.6
        best[:, t] = torch.where(keep, best[:, t - 1], best[:, t])
    logits.scatter_add_(2, best[..., None], torch.full((B, T, 1), 4.0))
    return logits.log_softmax(-1)


def _chunks(x, lens, sizes):
    s = 0
    for n in sizes:
        yield x[:, s:s + n], (lens - s).clamp(min=0, max=n)
        s += n


@pytest.mark.parametrize("sizes", CHUNKINGS)
def test_ctc_greedy_across_chunks_equals_offline(sizes):
    lp = _sticky_log_probs()
    lens = torch.tensor([30, 17, 9])
    states = [CTCGreedyState() for _ in range(3)]
    for piece, piece_lens in _chunks(lp, lens, sizes):
        ctc_greedy_advance(piece, piece_lens, states)
    best_lp, best = lp.max(-1)
    for b, (st, ref) in enumerate(zip(states, ctc_greedy(lp, lens))):
        # the best path of the whole utterance, collapsed at once
        tokens, times = collapse_path(best[b, : lens[b]].tolist())
        assert (st.tokens, st.times) == (tokens, times) == (ref.best.tokens, ref.best.times)
        assert st.score == pytest.approx(float(best_lp[b, : lens[b]].sum()), abs=1e-4)


@pytest.mark.parametrize("sizes", CHUNKINGS)
@pytest.mark.parametrize("with_lm", [False, True])
def test_ctc_prefix_beam_across_chunks_equals_offline(sizes, with_lm):
    lp = _sticky_log_probs(seed=1)
    lens = torch.tensor([30, 21, 5])
    options = dict(beam=4)
    if with_lm:
        lm = NgramLM.train([[1, 2, 3], [2, 2, 4, 5], [1, 5]], order=3, vocab_size=6,
                           end_of_sentence=True)
        options.update(lm_score=lm, lm_weight=0.7, length_bonus=0.5)
    offline = ctc_prefix_beam(lp, lens, nbest=3, **options)
    searches = [PrefixBeam(4, lm=options.get("lm_score"), lm_weight=options.get("lm_weight", 0.0),
                           length_bonus=options.get("length_bonus", 0.0)) for _ in range(3)]
    for piece, piece_lens in _chunks(lp, lens, sizes):
        for b, search in enumerate(searches):
            search.advance(piece[b, : piece_lens[b]])
    for search, ref in zip(searches, offline):
        got = search.result(nbest=3, final=True)
        assert [h.tokens for h in got.nbest] == [h.tokens for h in ref.nbest]
        assert [h.times for h in got.nbest] == [h.times for h in ref.nbest]
        assert [h.score for h in got.nbest] == pytest.approx([h.score for h in ref.nbest])


@pytest.mark.parametrize("pred_type", ["lstm", "stateless"])
@pytest.mark.parametrize("sizes", [[1] * 20, [3, 5, 12], [20]])
def test_transducer_greedy_across_chunks_equals_offline(pred_type, sizes):
    torch.manual_seed(0)
    head = TransducerHead(TransducerConfig(vocab_size=5, enc_dim=6, pred_type=pred_type,
                                           pred_dim=8, joiner_dim=10, loss="reference")).eval()
    with torch.no_grad():
        head.output.weight.mul_(3.0)  # peaky, so labels are emitted
    enc = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(4))
    lens = torch.tensor([20, 13, 6])
    offline = transducer_greedy(head, enc, lens, max_symbols_per_frame=2)
    assert sum(len(r.best.tokens) for r in offline) > 5
    states = transducer_greedy_init(head, 3)
    for piece, piece_lens in _chunks(enc, lens, sizes):
        states = transducer_greedy_advance(head, piece, piece_lens, states, 2)
    for st, ref in zip(states, offline):
        assert (st.tokens, st.times) == (ref.best.tokens, ref.best.times)
        assert st.score == pytest.approx(ref.best.score, abs=1e-4)


@pytest.mark.parametrize("sizes", [[1] * 12, [5, 7], [12]])
@pytest.mark.parametrize("with_lm", [False, True])
def test_transducer_beam_across_chunks_equals_offline(sizes, with_lm):
    from asr.search.transducer import TransducerBeamSearch, transducer_beam

    torch.manual_seed(1)
    head = TransducerHead(TransducerConfig(vocab_size=5, enc_dim=6, pred_dim=8, joiner_dim=10,
                                           loss="reference")).eval()
    with torch.no_grad():
        head.output.weight.mul_(3.0)
    enc = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(5))
    lens = torch.tensor([12, 7])
    options = dict(beam=3)
    if with_lm:
        options.update(lm_score=NgramLM.train([[1, 2, 3], [2, 4]], order=2, vocab_size=5,
                                              end_of_sentence=True), lm_weight=0.5, length_bonus=0.3)
    offline = transducer_beam(head, enc, lens, nbest=3, **options)
    searches = [TransducerBeamSearch(head, **options) for _ in range(2)]
    partial_seen = False
    for piece, piece_lens in _chunks(enc, lens, sizes):
        for b, search in enumerate(searches):
            search.advance(head.project_enc(piece[b, : piece_lens[b]]))
            partial_seen |= bool(search.result().best.tokens)
    assert partial_seen  # partial results come before the end
    for search, ref in zip(searches, offline):
        got = search.result(nbest=3, final=True)
        assert [h.tokens for h in got.nbest] == [h.tokens for h in ref.nbest]
        assert [h.times for h in got.nbest] == [h.times for h in ref.nbest]
        assert [h.score for h in got.nbest] == pytest.approx([h.score for h in ref.nbest])
