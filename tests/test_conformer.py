"""The conformer encoder: the encoder interface, padding invariance, and (causal) chunk by
chunk streaming equal to its chunk-masked full forward."""
import pytest
import torch

from asr.config import EncoderConfig
from asr.encoders import build_encoder
from test_streaming_encoders import _check, _stream


def conformer(causal=False, **kw):
    cfg = dict(name="conformer", subsampling=4, conv_channels=4, hidden_size=16,
               num_layers=2, attention_heads=2, ff_expansion=2, conv_kernel=5, dropout=0.0,
               causal=causal, chunk_size=3, attention_left_chunks=2 if causal else -1)
    cfg.update(kw)
    return build_encoder(12, EncoderConfig(**cfg)).eval()


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_shapes_and_lengths(factor, causal):
    torch.manual_seed(0)
    enc = conformer(causal, subsampling=factor)
    lens = torch.tensor([61, 30, 9])
    out, out_lens = enc(torch.randn(3, 61, 12), lens)
    expect = lens.clone()
    for _ in range(factor.bit_length() - 1):
        expect = (expect - 1) // 2 + 1
    assert out_lens.tolist() == expect.tolist()
    assert out.shape == (3, int(expect.max()), 16) and enc.output_dim == 16
    assert enc.subsampling_factor == factor
    assert enc.right_context == (2 if causal else float("inf"))
    assert torch.isfinite(out).all()
    out.sum().backward()  # trainable, no NaN from the fully masked padding rows
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("causal", [False, True])
def test_an_utterance_alone_equals_its_rows_in_a_padded_batch(causal):
    torch.manual_seed(1)
    enc = conformer(causal)
    x, lens = torch.randn(3, 57, 12), torch.tensor([57, 22, 40])
    batch, batch_lens = enc(x, lens)
    for b in range(3):
        alone, alone_lens = enc(x[b:b + 1, : lens[b]], lens[b:b + 1])
        assert alone_lens[0] == batch_lens[b]
        torch.testing.assert_close(alone[0], batch[b, : batch_lens[b]], atol=1e-5, rtol=1e-5)


def test_attention_reaches_across_the_utterance_unless_causal():
    torch.manual_seed(2)
    x = torch.randn(1, 80, 12)
    changed = x.clone()
    changed[:, 60:] += 1.0  # output frames from 15 on read it directly
    for causal, first_changed in [(False, 0), (True, 15 // 3 * 3)]:
        enc = conformer(causal, num_layers=1)
        a, _ = enc(x, torch.tensor([80]))
        b, _ = enc(changed, torch.tensor([80]))
        torch.testing.assert_close(a[:, :first_changed], b[:, :first_changed])
        assert not torch.allclose(a[:, first_changed], b[:, first_changed])


@pytest.mark.parametrize("chunk,left", [(3, 2), (4, 0), (1, 3)])
@pytest.mark.parametrize("feed", [1, 5, 16])
def test_causal_streaming_equals_its_chunk_masked_forward(chunk, left, feed):
    torch.manual_seed(3)
    enc = conformer(True, chunk_size=chunk, attention_left_chunks=left, subsampling=2)
    _check(enc, torch.randn(3, 47, 12), torch.tensor([47, 19, 3]), feed)


def test_streaming_needs_a_causal_bounded_conformer():
    with pytest.raises(ValueError, match="conformer streams only with encoder.causal"):
        conformer(False).init_state(1)
    with pytest.raises(ValueError, match="conformer streams only"):
        conformer(True, attention_left_chunks=-1).init_state(1)


def test_trains_and_reloads_as_the_asr_models_encoder(tmp_path, tone_corpus):
    from asr.checkpoint import load_model
    from asr.train import Trainer
    from test_train_resume import plain_config

    cfg = plain_config(tone_corpus, epochs=1)
    cfg.encoder = EncoderConfig(name="conformer", subsampling=4, conv_channels=4, hidden_size=16,
                                num_layers=1, attention_heads=2, ff_expansion=2, conv_kernel=5,
                                causal=True, chunk_size=4, attention_left_chunks=1)
    trainer = Trainer(cfg, tmp_path / "exp")
    before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    result = trainer.fit()
    assert result.steps > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.encoder.parameters()))
    model, tokenizer, loaded = load_model(result.model_path)
    assert loaded.encoder.name == "conformer"

    # the streaming recognizer takes it, and its chunks give the offline tokens
    from asr.audio import load_audio
    from asr.streaming import Recognizer

    recognizer = Recognizer(model, tokenizer)
    wave = load_audio(trainer.train_set.utts[0].audio, cfg.sample_rate)
    offline = model.decode(wave[None], torch.tensor([wave.numel()]))[0].best.tokens
    stream = recognizer.create_stream()
    stream.accept_waveform(cfg.sample_rate, wave)
    stream.input_finished()
    recognizer.decode_stream(stream)
    assert stream.result().tokens == offline, offline
