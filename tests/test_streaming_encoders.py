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


@pytest.mark.parametrize("subsampling,lookahead", [(4, 2), (2, 0), (8, 3), (1, 1)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_forward_only_chunks_equal_full_forward(subsampling, lookahead, chunk):
    torch.manual_seed(0)
    cfg = EncoderConfig(subsampling=subsampling, bidirectional=False, lookahead=lookahead,
                        hidden_size=12, num_layers=2, conv_channels=3)
    enc = build_encoder(10, cfg).eval()
    lens = torch.tensor([45, 23, 1, 38])
    x = torch.randn(4, 45, 10)
    _check(enc, x, lens, chunk)


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
    with pytest.raises(ValueError, match="forward-only GRU"):
        enc.streaming_forward(torch.randn(1, 8, 6), torch.tensor([8]), enc.init_state(1))
