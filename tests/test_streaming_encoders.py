import pytest
import torch

from asr.config import EncoderConfig
from asr.encoders import build_encoder, split_state, stack_states


def _stream(enc, x, lens, chunk):
    """Feed x (B, T, F) in chunks of `chunk` frames; each row's new output frames, joined."""
    B, T, _ = x.shape
    state = enc.init_state(B)
    outs = [[] for _ in range(B)]
    for s in range(0, T, chunk):
        piece = x[:, s:s + chunk]
        piece_lens = (lens - s).clamp(min=0, max=piece.shape[1])
        final = (lens > s) & (lens <= s + chunk)
        out, out_lens, state = enc.streaming_forward(piece, piece_lens, state, final)
        for b in range(B):
            outs[b].append(out[b, : out_lens[b]])
    return [torch.cat(o) for o in outs]


def _check(enc, x, lens, chunk):
    full, full_lens = enc(x, lens)
    streamed = _stream(enc, x, lens, chunk)
    for b in range(x.shape[0]):
        assert streamed[b].shape[0] == int(full_lens[b])
        assert (streamed[b] - full[b, : full_lens[b]]).abs().max() <= 1e-5


@pytest.mark.parametrize("subsampling,lookahead,rnn", [(4, 2, "gru"), (2, 0, "gru"),
                                                      (8, 3, "gru"), (1, 1, "gru"), (4, 2, "lstm")])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_forward_only_chunks_equal_full_forward(subsampling, lookahead, rnn, chunk):
    torch.manual_seed(0)
    cfg = EncoderConfig(subsampling=subsampling, bidirectional=False, lookahead=lookahead,
                        rnn_type=rnn, hidden_size=12, num_layers=2, conv_channels=3)
    enc = build_encoder(10, cfg).eval()
    lens = torch.tensor([45, 23, 1, 38])
    x = torch.randn(4, 45, 10)
    _check(enc, x, lens, chunk)


@pytest.mark.parametrize("chunk,right", [(4, 2), (3, 0), (2, 5)])
@pytest.mark.parametrize("feed", [1, 5, 16])
def test_lc_bgru_streaming_equals_its_chunked_forward(chunk, right, feed):
    torch.manual_seed(1)
    cfg = EncoderConfig(name="lc_bgru", subsampling=2, hidden_size=8, num_layers=2,
                        conv_channels=3, chunk_size=chunk, chunk_right_context=right)
    enc = build_encoder(10, cfg).eval()
    lens = torch.tensor([40, 17, 2])
    _check(enc, torch.randn(3, 40, 10), lens, feed)


def test_lc_bgru_backward_sees_only_its_chunk_and_right_context():
    torch.manual_seed(2)
    cfg = EncoderConfig(name="lc_bgru", subsampling=1, hidden_size=8, num_layers=1,
                        conv_channels=2, chunk_size=4, chunk_right_context=2)
    enc = build_encoder(6, cfg).eval()
    x = torch.randn(1, 24, 6)
    out, _ = enc(x, torch.tensor([24]))
    x2 = x.clone()
    x2[:, 12:] += 1.0  # chunk 2 (frames 8..11) reads 12, 13 as right context
    out2, _ = enc(x2, torch.tensor([24]))
    torch.testing.assert_close(out[:, :8], out2[:, :8])  # chunk 1 reads up to frame 9
    assert not torch.allclose(out[:, 8:12], out2[:, 8:12])


def test_states_stack_and_split():
    cfg = EncoderConfig(bidirectional=False, lookahead=2, hidden_size=8, num_layers=1,
                        conv_channels=2)
    enc = build_encoder(6, cfg).eval()
    x = torch.randn(2, 9, 6)
    _, _, state = enc.streaming_forward(x, torch.tensor([9, 5]), enc.init_state(2))
    rows = split_state(state)
    assert len(rows) == 2 and rows[1].rnn_hidden.shape == (1, 1, 8)
    again = stack_states(rows)
    assert torch.equal(again.rnn_hidden, state.rnn_hidden)
    assert all(torch.equal(a, b) for a, b in zip(again.conv_cache, state.conv_cache))


def test_bidirectional_conv_rnn_refuses_to_stream():
    enc = build_encoder(6, EncoderConfig(hidden_size=8, num_layers=1, conv_channels=2))
    with pytest.raises(ValueError, match="forward-only GRU or LSTM"):
        enc.streaming_forward(torch.randn(1, 8, 6), torch.tensor([8]), enc.init_state(1))


def test_lc_bgru_directions_forward_carried_backward_reset_per_window():
    from asr.encoders import LatencyControlledBiGRU

    torch.manual_seed(3)
    C, R, H = 4, 3, 5
    rnn = LatencyControlledBiGRU(6, H, num_layers=1, chunk=C, right=R, dropout=0.0).eval()
    x = torch.randn(1, 18, 6)
    out = rnn(x, torch.tensor([18]))
    # one layer: the forward half is a plain GRU over the whole utterance
    plain, _ = rnn.forward_layers[0](x)
    torch.testing.assert_close(out[..., :H], plain)
    # the backward half of chunk k is a backward GRU from zero over frames kC .. kC+C+R-1
    for k in range(0, 18 // C + 1):
        window = x[:, k * C: k * C + C + R]
        back, _ = rnn.backward_layers[0](window.flip(1))
        n = min(C, 18 - k * C)
        torch.testing.assert_close(out[:, k * C: k * C + n, H:], back.flip(1)[:, :n])
