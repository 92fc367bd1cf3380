import pytest
import torch

from asr.config import EncoderConfig
from asr.encoders import build_encoder


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("rnn,bi,lookahead", [("gru", True, 0), ("lstm", False, 3)])
def test_shapes_and_lengths(factor, rnn, bi, lookahead):
    cfg = EncoderConfig(subsampling=factor, rnn_type=rnn, bidirectional=bi, lookahead=lookahead,
                        hidden_size=16, num_layers=2, conv_channels=4)
    enc = build_encoder(40, cfg).eval()
    lens = torch.tensor([101, 57, 8])
    x = torch.randn(3, 101, 40)
    out, out_lens = enc(x, lens)
    expect = lens.clone()
    for _ in range(factor.bit_length() - 1):
        expect = (expect - 1) // 2 + 1
    assert out_lens.tolist() == expect.tolist()
    assert out.shape == (3, int(expect.max()), enc.output_dim)
    assert enc.output_dim == 16 * (2 if bi else 1)
    assert enc.subsampling_factor == factor and enc.right_context == lookahead


def test_padding_does_not_change_output():
    cfg = EncoderConfig(subsampling=4, hidden_size=16, num_layers=2, conv_channels=4)
    enc = build_encoder(20, cfg).eval()
    x = torch.randn(1, 60, 20)
    out1, l1 = enc(x, torch.tensor([60]))
    padded = torch.cat([x, torch.randn(1, 40, 20)], dim=1)
    out2, l2 = enc(padded, torch.tensor([60]))
    assert l1.tolist() == l2.tolist()
    torch.testing.assert_close(out1[0, : l1[0]], out2[0, : l2[0]], atol=1e-5, rtol=1e-5)


def test_forward_only_is_causal_up_to_lookahead():
    cfg = EncoderConfig(subsampling=4, hidden_size=16, num_layers=1, conv_channels=4,
                        bidirectional=False, lookahead=2)
    enc = build_encoder(20, cfg).eval()
    x = torch.randn(1, 80, 20)
    out, _ = enc(x, torch.tensor([80]))
    x2 = x.clone()
    x2[:, 60:] = torch.randn(1, 20, 20)  # changes output frames >= 15 only
    out2, _ = enc(x2, torch.tensor([80]))
    first_changed = 15 - cfg.lookahead
    torch.testing.assert_close(out[:, :first_changed], out2[:, :first_changed])
    assert not torch.allclose(out[:, first_changed:], out2[:, first_changed:])


def test_unknown_encoder_name():
    with pytest.raises(KeyError, match="unknown encoder"):
        build_encoder(20, EncoderConfig(name="transformerz"))


def test_reverse_padded_and_bidirectional_ignores_padding():
    from asr.encoders import StackedRNN, reverse_padded

    x = torch.arange(12.0).reshape(2, 6, 1)
    lens = torch.tensor([6, 4])
    r = reverse_padded(x, lens)
    assert r[1, :, 0].tolist() == [9.0, 8.0, 7.0, 6.0, 10.0, 11.0]
    assert torch.equal(reverse_padded(r, lens), x)
    # the padded batch gives each utterance exactly what it gets alone, both directions
    rnn = StackedRNN("lstm", 3, 5, 2, bidirectional=True, dropout=0.0).eval()
    a, b = torch.randn(1, 7, 3), torch.randn(1, 4, 3)
    batch = torch.cat([a, torch.cat([b, torch.full((1, 3, 3), 9.0)], 1)])
    out = rnn(batch, torch.tensor([7, 4]))
    torch.testing.assert_close(out[0:1], rnn(a, torch.tensor([7])))
    torch.testing.assert_close(out[1:, :4], rnn(b, torch.tensor([4])))


def test_utterance_cmn_removes_channel_gain_and_ignores_padding():
    from asr.model import subtract_utterance_mean

    feats = torch.randn(2, 10, 4)
    lens = torch.tensor([10, 6])
    out = subtract_utterance_mean(feats + 5.0, lens)  # a constant log-gain offset
    torch.testing.assert_close(out, subtract_utterance_mean(feats, lens))
    assert out[0].mean(0).abs().max() < 1e-5 and out[1, :6].mean(0).abs().max() < 1e-5
    assert torch.all(out[1, 6:] == 0)


def test_smooth_utterance_cmn_removes_a_channel_tilt_but_keeps_fine_spectral_shape():
    import math

    from asr.model import subtract_utterance_mean

    T, D = 12, 40
    lens = torch.tensor([T, 8])
    feats = torch.randn(2, T, D)
    bands = torch.arange(D, dtype=torch.float32)
    # level, tilt and colour: a smooth curve across the bands (the 4 lowest cosines)
    channel = sum(w * torch.cos(math.pi / D * (bands + 0.5) * k) for k, w in enumerate([3.0, -2.0, 1.0, 0.5]))
    out = subtract_utterance_mean(feats + channel, lens, smooth_order=4)
    torch.testing.assert_close(out, subtract_utterance_mean(feats, lens, smooth_order=4),
                               atol=1e-4, rtol=0)
    assert torch.all(out[1, 8:] == 0)
    # a narrow band's energy in every frame (a formant, a fricative) is a fine shape: kept,
    # where the plain utterance mean takes it away with the channel
    peak = torch.zeros(D)
    peak[20] = 6.0
    flat = torch.zeros(1, T, D)
    kept = subtract_utterance_mean(flat + peak, lens[:1], smooth_order=4)[0].mean(0)
    assert kept[20] > 5.0 and kept.argmax() == 20
    assert subtract_utterance_mean(flat + peak, lens[:1])[0].abs().max() < 1e-5
