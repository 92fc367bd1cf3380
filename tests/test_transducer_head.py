"""TransducerHead: shapes, incremental prediction, backends through the head, overfitting."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses.rnnt import rnnt_loss
from asr.registry import HEADS

PRED_TYPES = ["lstm", "gru", "stateless"]


def _head(pred_type: str, loss: str = "pruned", **kw) -> TransducerHead:
    torch.manual_seed(0)
    cfg = TransducerConfig(
        vocab_size=9, enc_dim=16, pred_type=pred_type, pred_dim=12, pred_layers=2,
        context_size=3, joiner_dim=20, loss=loss, **kw,
    )
    return TransducerHead(cfg)


def _batch(B=3, T=11, U=5, V=9):
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(B, T, 16, generator=g)
    targets = torch.randint(1, V, (B, U), generator=g)
    enc_lens = torch.tensor([T, T - 3, T - 5])[:B]
    target_lens = torch.tensor([U, 2, 0])[:B]
    return enc, enc_lens, targets, target_lens


@pytest.mark.parametrize("pred_type", PRED_TYPES)
def test_shapes(pred_type):
    head = _head(pred_type)
    enc, enc_lens, targets, target_lens = _batch()
    B, T, U = 3, 11, 5
    dec, lengths, state = head.predict(targets, target_lens)
    assert dec.shape == (B, U + 1, 12)
    assert lengths.tolist() == (target_lens + 1).tolist()
    if pred_type == "lstm":
        assert [s.shape for s in state] == [(B, 2, 12), (B, 2, 12)]
    elif pred_type == "gru":
        assert [s.shape for s in state] == [(B, 2, 12)]
    else:
        assert [s.shape for s in state] == [(B, 2)] and state[0].dtype == torch.long
    logits = head.join(enc, dec)
    assert logits.shape == (B, T, U + 1, 9)
    # broadcast forms give the same numbers
    torch.testing.assert_close(head.join(enc[:, :, None], dec[:, None]), logits)
    torch.testing.assert_close(head.join(enc[:, 4], dec[:, 2]), logits[:, 4, 2])
    loss = head.loss(enc, enc_lens, targets, target_lens)
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    # head.loss runs the predictor unpacked; the rows it uses equal predict()'s
    expected = rnnt_loss("pruned", head, enc, dec, targets, enc_lens, target_lens, prune_range=5, simple_loss_scale=0.5)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pred_type", PRED_TYPES)
def test_step_matches_predict(pred_type):
    """Feeding labels one by one through step() reproduces predict() and its final state."""
    head = _head(pred_type).eval()
    _, _, targets, target_lens = _batch()
    dec, _, final_state = head.predict(targets, target_lens)
    B, U = targets.shape
    state = head.initial_state(B)
    tokens = torch.full((B,), head.blank, dtype=torch.long)
    steps = []
    per_row_state = [None] * B
    for u in range(U + 1):
        out, state = head.step(tokens, state)
        steps.append(out)
        for b in range(B):
            if u == int(target_lens[b]):
                per_row_state[b] = tuple(s[b] for s in state)
        if u < U:
            tokens = targets[:, u]
    stepped = torch.stack(steps, dim=1)
    for b in range(B):
        n = int(target_lens[b]) + 1
        torch.testing.assert_close(stepped[b, :n], dec[b, :n], rtol=1e-5, atol=1e-6)
        for s_pred, s_step in zip(final_state, per_row_state[b]):
            torch.testing.assert_close(s_pred[b], s_step)
    # continuing from a state: predict(rest, state, prepend_blank=False) == tail of the full run
    first = 2
    dec, _, _ = head.predict(targets, torch.full((B,), U))
    _, _, mid_state = head.predict(targets[:, :first], torch.full((B,), first))
    tail, _, _ = head.predict(targets[:, first:], torch.full((B,), U - first), mid_state, prepend_blank=False)
    torch.testing.assert_close(tail, dec[:, first + 1 :], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pred_type", PRED_TYPES)
def test_backends_agree_through_the_head(pred_type):
    head = _head(pred_type, prune_range=50, simple_loss_scale=0.0).double()
    enc, enc_lens, targets, target_lens = _batch()
    enc = enc.double()
    pruned = head.loss(enc, enc_lens, targets, target_lens)
    head.config.loss = "reference"
    reference = head.loss(enc, enc_lens, targets, target_lens)
    head.config.loss = "torchaudio"
    ta = head.loss(enc, enc_lens, targets, target_lens)
    torch.testing.assert_close(pruned, reference)
    torch.testing.assert_close(ta, reference, rtol=1e-5, atol=1e-4)


def test_utterance_without_a_path_is_zeroed_with_a_warning(caplog):
    """prune_range=2 moves at most one label per frame: 5 labels in 2 frames have no path."""
    head = _head("lstm", prune_range=2)
    g = torch.Generator().manual_seed(2)
    enc = torch.randn(2, 9, 16, generator=g).requires_grad_(True)
    enc_lens = torch.tensor([2, 9])
    targets = torch.randint(1, 9, (2, 5), generator=g)
    target_lens = torch.tensor([5, 2])
    dec, _, _ = head.predict(targets, target_lens)
    raw = rnnt_loss("pruned", head, enc, dec, targets, enc_lens, target_lens, prune_range=2)
    assert torch.isinf(raw[0]) and torch.isfinite(raw[1])  # the adapter reports the lost path
    with caplog.at_level(logging.WARNING, logger="asr.heads.transducer"):
        loss = head.loss(enc, enc_lens, targets, target_lens)
    assert loss[0] == 0
    assert "1 of 2 utterances" in caplog.text
    torch.testing.assert_close(loss[1], raw[1])
    params = [enc] + list(head.parameters())
    grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
    # the batch's gradient is the feasible utterance's own
    alone = head.loss(enc[1:], enc_lens[1:], targets[1:], target_lens[1:])
    grads_alone = torch.autograd.grad(alone.sum(), params, allow_unused=True)
    assert (grads[0][0] == 0).all()
    for got, want in zip(grads, grads_alone):
        if want is None:
            assert got is None or (got == 0).all()
        else:
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_registry_config_and_errors():
    assert HEADS.get("transducer") is TransducerHead
    head = TransducerHead.from_options(16, 9, {"pred_type": "stateless", "context_size": 2, "loss": "torchaudio"})
    assert head.config.vocab_size == 9 and head.simple_am_proj is None
    with pytest.raises(RuntimeError, match="pruned"):
        head.simple_am(torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="pred_type"):
        TransducerConfig(vocab_size=5, enc_dim=4, pred_type="transformer")
    with pytest.raises(ValueError, match="backend"):
        TransducerConfig(vocab_size=5, enc_dim=4, loss="nope")
    with pytest.raises(ValueError, match="prune_range"):
        TransducerConfig(vocab_size=5, enc_dim=4, loss="pruned", prune_range=1)
    with pytest.raises(KeyError):
        head.decode(torch.randn(1, 3, 16), torch.tensor([3]), method="nope")


@pytest.mark.parametrize("pred_type", ["lstm", "stateless"])
def test_overfits_two_sequences_with_pruned_loss(pred_type):
    """A linear 'encoder' + TransducerHead learns two short random sequences (pruned loss)."""
    torch.manual_seed(0)
    V, T, D = 6, 10, 24
    feats = torch.randn(2, T, D)
    feat_lens = torch.tensor([T, 8])
    targets = torch.tensor([[3, 1, 4, 5], [2, 5, 2, 0]])
    target_lens = torch.tensor([4, 3])
    encoder = nn.Linear(D, 32)
    head = TransducerHead(TransducerConfig(
        vocab_size=V, enc_dim=32, pred_type=pred_type, pred_dim=32, context_size=2, joiner_dim=32,
        loss="pruned", prune_range=3,
    ))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=0.03)
    for _ in range(60):
        loss = head.loss(encoder(feats), feat_lens, targets, target_lens).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        results = head.decode(encoder(feats), feat_lens, "greedy")
        beams = head.decode(encoder(feats), feat_lens, "beam", beam=4)
    for b in range(2):
        expected = targets[b, : target_lens[b]].tolist()
        assert results[b].best.tokens == expected
        assert beams[b].best.tokens == expected
