"""The attention head: per-utterance losses that padding does not touch, label smoothing,
scheduled sampling, and training beside CTC and RNN-T on one encoder."""
import pytest
import torch

from asr.config import HeadConfig
from asr.heads.attention import AttentionConfig, AttentionHead
from asr.model import ASRModel
from asr.text import build_tokenizer

DECODERS = [{"decoder": "lstm"}, {"decoder": "lstm", "rnn_type": "gru", "layers": 2},
            {"decoder": "transformer", "layers": 2}]


def tiny_head(**options) -> AttentionHead:
    cfg = dict(vocab_size=9, enc_dim=16, dim=16, attention_dim=8, location_channels=3,
               location_kernel=5, heads=2, ff_dim=24, dropout=0.1)
    return AttentionHead(AttentionConfig(**{**cfg, **options}))


@pytest.mark.parametrize("options", DECODERS)
def test_padding_does_not_leak(options):
    # an utterance's loss alone equals its loss padded (frames and labels) in a batch,
    # whatever the padding holds
    torch.manual_seed(0)
    head = tiny_head(**options).eval()
    enc = torch.randn(3, 11, 16)
    enc_lens = torch.tensor([11, 7, 4])
    targets = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
    target_lens = torch.tensor([4, 2, 1])
    for b in range(3):
        enc[b, enc_lens[b]:] = 1e3 * torch.randn_like(enc[b, enc_lens[b]:])  # junk padding
        targets[b, target_lens[b]:] = 8
    batch = head.loss(enc, enc_lens, targets, target_lens)
    assert batch.shape == (3,)
    for b in range(3):
        n, u = int(enc_lens[b]), int(target_lens[b])
        alone = head.loss(enc[b:b + 1, :n], enc_lens[b:b + 1], targets[b:b + 1, :u], target_lens[b:b + 1])
        torch.testing.assert_close(batch[b:b + 1], alone, rtol=1e-5, atol=1e-5)


def test_loss_is_smoothed_cross_entropy_with_eos():
    torch.manual_seed(0)
    head = tiny_head(label_smoothing=0.2).eval()
    enc, enc_lens = torch.randn(1, 6, 16), torch.tensor([6])
    targets, target_lens = torch.tensor([[3, 5]]), torch.tensor([2])
    log_probs, outputs, valid = head.token_log_probs(enc, enc_lens, targets, target_lens)
    assert outputs.tolist() == [[3, 5, 0]] and valid.all()  # the labels, then eos = 0
    # by hand: 0.8 * (-log p(label)) + 0.2 * mean over V of (-log p), summed over 3 steps
    expected = sum(0.8 * -log_probs[0, i, t] - 0.2 * log_probs[0, i].mean() for i, t in enumerate([3, 5, 0]))
    torch.testing.assert_close(head.loss(enc, enc_lens, targets, target_lens)[0], expected)
    plain = -head.sequence_log_probs(enc, enc_lens, targets, target_lens)
    head.config.label_smoothing = 0.0
    torch.testing.assert_close(head.loss(enc, enc_lens, targets, target_lens), plain)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_scheduled_sampling_only_in_training(decoder):
    torch.manual_seed(0)
    head = tiny_head(decoder=decoder, dropout=0.0, sampling_prob=1.0)
    enc, enc_lens = torch.randn(4, 8, 16), torch.full((4,), 8)
    targets, target_lens = torch.randint(1, 9, (4, 5)), torch.full((4,), 5)
    sampled = head.train().loss(enc, enc_lens, targets, target_lens)
    forced = head.eval().loss(enc, enc_lens, targets, target_lens)
    head.config.sampling_prob = 0.0
    torch.testing.assert_close(head.train().loss(enc, enc_lens, targets, target_lens), forced)
    assert not torch.allclose(sampled, forced)  # the inputs were the model's own samples


def test_config_is_checked():
    with pytest.raises(ValueError, match="decoder"):
        tiny_head(decoder="conformer")
    with pytest.raises(ValueError, match="odd"):
        tiny_head(location_kernel=4)
    with pytest.raises(TypeError):
        tiny_head(no_such_option=1)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_three_heads_train_on_one_encoder(tone_corpus, decoder):
    from asr.data import UtteranceDataset, collate, read_manifest
    from conftest import WORDS
    from test_train import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    cfg.specaugment = None
    cfg.heads = {"ctc": HeadConfig(weight=0.3),
                 "transducer": HeadConfig(weight=0.5, options={"pred_dim": 16, "joiner_dim": 16,
                                                                "prune_range": 3}),
                 "attention": HeadConfig(weight=1.0, options={
                     "decoder": decoder, "dim": 16, "attention_dim": 8, "heads": 2, "ff_dim": 32,
                     "location_kernel": 5, "dropout": 0.0})}
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size)
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(4)])
    args = (batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
    losses = model(*args)
    assert set(losses) == {"ctc", "transducer", "attention", "total"}
    assert all(losses[n].shape == (4,) for n in ("ctc", "transducer", "attention"))
    torch.testing.assert_close(losses["total"], 0.3 * losses["ctc"] + 0.5 * losses["transducer"]
                               + losses["attention"])
    model.eval()
    with torch.no_grad():
        before = model(*args)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        model(*args)["total"].mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model(*args)
    for name in ("ctc", "transducer", "attention"):
        assert after[name].sum() < 0.9 * before[name].sum(), (name, before[name], after[name])


def test_a_head_of_weight_zero_is_not_computed(tone_corpus, monkeypatch):
    from asr.data import UtteranceDataset, collate, read_manifest
    from asr.heads.transducer import TransducerHead
    from conftest import WORDS
    from test_train import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    cfg.heads = {"ctc": HeadConfig(weight=1.0),
                 "transducer": HeadConfig(weight=0.0, options={"pred_dim": 16, "joiner_dim": 16})}
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size)
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(2)])
    args = (batch.waves, batch.wave_lens, batch.targets, batch.target_lens)

    def never(*a, **k):
        raise AssertionError("the weight-0 head's loss was computed")

    monkeypatch.setattr(TransducerHead, "loss", never)
    losses = model(*args)
    assert set(losses) == {"ctc", "total"}
    torch.testing.assert_close(losses["total"], losses["ctc"])
    model.loss_weights["ctc"] = 0.0
    with pytest.raises(ValueError, match="every head has loss weight 0"):
        model(*args)
