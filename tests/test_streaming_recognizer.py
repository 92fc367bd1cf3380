import math

import pytest
import torch

from asr.audio import resample
from asr.config import EncoderConfig, EndpointConfig, ExperimentConfig, HeadConfig, StreamingConfig
from asr.features import FeatureConfig
from asr.model import ASRModel
from asr.streaming import Recognizer, word_times
from asr.text import CharTokenizer

TOKENIZER = CharTokenizer()
NO_ENDPOINT = StreamingConfig(chunk_frames=8, endpoint=EndpointConfig(0.0, 0.0, 0.0))


def _model(head="ctc", lookahead=2, seed=0, encoder="conv_rnn"):
    torch.manual_seed(seed)
    options = {"pred_dim": 8, "joiner_dim": 8, "loss": "reference"} if head == "transducer" else {}
    cfg = ExperimentConfig(
        features=FeatureConfig(n_mels=16), specaugment=None,
        encoder=EncoderConfig(name=encoder, bidirectional=False, lookahead=lookahead,
                              hidden_size=16, num_layers=1, conv_channels=4, dropout=0.0,
                              chunk_size=5, chunk_right_context=3),
        heads={head: HeadConfig(options=options)})
    model = ASRModel(cfg, TOKENIZER.vocab_size).eval()
    with torch.no_grad():  # a random model that emits tokens often enough to compare
        for p in model.heads[head].parameters():
            p.mul_(4.0)
    return model


def _audio(n, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.2 * torch.sin(2 * math.pi * (200 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=g)


def _feed(stream, wave, piece, rate=16000):
    for i in range(0, wave.numel(), piece):
        stream.accept_waveform(rate, wave[i:i + piece])
    stream.input_finished()


@pytest.mark.parametrize("head,method,encoder", [
    ("ctc", "ctc_greedy", "conv_rnn"), ("ctc", "ctc_prefix_beam", "conv_rnn"),
    ("transducer", "transducer_greedy", "conv_rnn"), ("transducer", "transducer_beam", "conv_rnn"),
    ("ctc", "ctc_greedy", "lc_bgru")])
def test_batched_streams_equal_each_alone_and_offline(head, method, encoder):
    model = _model(head, encoder=encoder)
    rec = Recognizer(model, TOKENIZER, NO_ENDPOINT, method=method, beam=3)
    waves = [_audio(n, seed) for seed, n in enumerate([9000, 4100, 12345])]
    streams = [rec.create_stream() for _ in waves]
    for s, wave, piece in zip(streams, waves, [160, 1000, 777]):
        _feed(s, wave, piece)
    steps = 0
    while rec.decode_streams(streams):  # ready streams of all "clients", one batch a step
        steps += 1
    assert all(s.finished for s in streams) and steps > 5
    for s, wave in zip(streams, waves):
        alone = rec.create_stream()
        _feed(alone, wave, 3000)
        rec.decode_stream(alone)
        got, ref = s.result(), alone.result()
        assert got.is_final and (got.tokens, got.times) == (ref.tokens, ref.times)
        offline = model.decode(wave[None], torch.tensor([wave.numel()]), method=method, beam=3)[0]
        assert got.tokens == offline.best.tokens
        assert got.times == pytest.approx([t * rec.frame_seconds for t in offline.best.times])
    assert sum(len(s.result().tokens) for s in streams) >= 3  # something to compare


def test_pruned_prefix_beam_streams_as_it_decodes_offline():
    """The CTC prefix beam's pruning reaches the streaming search, chunk by chunk equal to
    the offline search with the same pruning."""
    model = _model("ctc")
    prune = {"token_min_logp": -1.5, "beam_prune_logp": 2.0}
    rec = Recognizer(model, TOKENIZER, NO_ENDPOINT, method="ctc_prefix_beam", beam=4, **prune)
    search = rec.new_search()
    assert (search.token_min_logp, search.beam_prune_logp) == (-1.5, 2.0)
    wave = _audio(12000, 3)
    stream = rec.create_stream()
    _feed(stream, wave, 700)
    rec.decode_stream(stream)
    offline = model.decode(wave[None], torch.tensor([wave.numel()]), method="ctc_prefix_beam",
                           beam=4, **prune)[0]
    assert stream.result().tokens == offline.best.tokens and offline.best.tokens


def test_resampled_stream_equals_offline_on_resampled_audio():
    model = _model()
    rec = Recognizer(model, TOKENIZER, NO_ENDPOINT)
    wave8k = _audio(8000, 3)[::2].contiguous()
    stream = rec.create_stream()
    _feed(stream, wave8k, 333, rate=8000)
    rec.decode_stream(stream)
    wave = resample(wave8k, 8000, 16000)
    offline = model.decode(wave[None], torch.tensor([wave.numel()]), method="ctc_greedy")[0]
    assert stream.result().tokens == offline.best.tokens
    other = rec.create_stream()
    other.accept_waveform(8000, wave8k[:10])
    with pytest.raises(ValueError, match="started at 8000 Hz"):
        other.accept_waveform(16000, wave8k[:10])


def test_endpoint_fires_on_trailing_silence():
    model = _model(lookahead=0)
    ctc = model.heads["ctc"].proj
    with torch.no_grad():  # blank everywhere, whatever the audio
        ctc.weight.zero_()
        ctc.bias.zero_()
        ctc.bias[0] = 10.0
    rules = EndpointConfig(silence_without_speech=0.5, silence_after_speech=0.3, max_segment=5.0)
    rec = Recognizer(model, TOKENIZER, StreamingConfig(chunk_frames=4, endpoint=rules))
    s = rec.create_stream()
    s.accept_waveform(16000, torch.zeros(6400))  # 0.4 s of silence
    rec.decode_stream(s)
    assert not s.is_endpoint()
    s.accept_waveform(16000, torch.zeros(3200))  # 0.6 s
    rec.decode_stream(s)
    assert s.is_endpoint() and s.result().is_final and s.result().text == ""
    s.reset()
    assert not s.is_endpoint() and s.result().segment == 1
    with torch.no_grad():  # now the model hears "a" ...
        ctc.bias[0], ctc.bias[3] = 0.0, 10.0
    s.accept_waveform(16000, torch.zeros(1600))
    rec.decode_stream(s)
    assert s.result().text == "a" and not s.is_endpoint()
    with torch.no_grad():  # ... then silence: 0.3 s after speech ends the segment
        ctc.bias[0], ctc.bias[3] = 10.0, 0.0
    s.accept_waveform(16000, torch.zeros(3200))
    rec.decode_stream(s)
    assert not s.is_endpoint()  # 0.2 s
    s.accept_waveform(16000, torch.zeros(3200))
    rec.decode_stream(s)
    result = s.result()
    assert s.is_endpoint() and result.is_final and result.text == "a"
    assert result.start == pytest.approx(0.6, abs=0.05)
    assert result.words[0].word == "a" and result.words[0].start >= result.start


def test_word_times_split_at_spaces():
    frame = 0.04
    tokens = TOKENIZER.encode("hi yo")
    times = [0.0, 0.04, 0.2, 0.4, 0.44]
    words = word_times(tokens, times, TOKENIZER, frame)
    assert [(w.word, w.start, w.end) for w in words] == [("hi", 0.0, 0.08), ("yo", 0.4, 0.48)]


def test_non_streamable_models_refused():
    model = _model()
    model.encoder.rnn.backward_layers = torch.nn.ModuleList()  # stands for a bidirectional one
    with pytest.raises(ValueError, match="forward-only GRU or LSTM"):
        Recognizer(model, TOKENIZER)
    model = _model()
    model.cfg.cmvn = "utterance"
    with pytest.raises(ValueError, match="streaming needs cmvn: global"):
        Recognizer(model, TOKENIZER)
    with pytest.raises(ValueError, match="not 'ctc_vocab'"):
        Recognizer(_model(), TOKENIZER, method="ctc_vocab")


def test_cli_transcribe_streaming_equals_offline(tmp_path, capsys):
    import json

    from asr.__main__ import main
    from asr.audio import save_audio
    from asr.checkpoint import save_checkpoint

    model = _model()
    ckpt = save_checkpoint(tmp_path / "m" / "model.pt", model.cfg, TOKENIZER, model)
    files = [tmp_path / "a.wav", tmp_path / "b.wav"]
    save_audio(files[0], _audio(14000, 1), 16000)
    save_audio(files[1], _audio(9000, 2)[::2], 8000)  # resampled inside the stream
    args = ["transcribe", "--model", str(ckpt), *map(str, files)]
    assert main(args) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(args[:3] + ["--streaming"] + args[3:]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["file"] for s in streamed] == list(map(str, files))
    assert [s["text"] for s in streamed] == [o["text"] for o in offline]
    assert any(o["text"] for o in offline)
    seg = streamed[0]["segments"][0]
    assert seg["times"] == offline[0]["times"] and seg["start"] == 0.0
