"""ASR export to ONNX (export.asr) and the torch-free runtime (export.asr_runtime):
torch vs onnxruntime over chunks with the state fed back, numpy front end and searches
equal to the torch ones, the runtime without torch, int8's effect on WER."""
import json
import math
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import onnxruntime as ort
import pytest
import torch

from asr.config import EncoderConfig, EndpointConfig, ExperimentConfig, HeadConfig, StreamingConfig
from asr.features import FeatureConfig
from asr.model import ASRModel
from asr.search.ctc import ctc_greedy_advance as torch_ctc_greedy_advance
from asr.search.ctc_state import CTCGreedyState, PrefixBeam
from asr.search.transducer import transducer_greedy_advance as torch_transducer_greedy_advance
from asr.search.transducer import transducer_greedy_init as torch_transducer_greedy_init
from asr.streaming import Recognizer as TorchRecognizer
from asr.streaming.features import StreamingFeatures as TorchStreamingFeatures
from asr.text import CharTokenizer
from export import asr_search_np
from export.asr import ExportError, _flatten, export_asr, read_metadata, state_names
from export.asr_features_np import StreamingFeatures
from export.asr_runtime import Recognizer
from test_streaming_recognizer import _audio  # the same random-tone test audio

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = CharTokenizer()
NO_ENDPOINT = StreamingConfig(chunk_frames=8, endpoint=EndpointConfig(0.0, 0.0, 0.0))
TRANSDUCER = {"pred_dim": 8, "joiner_dim": 8, "loss": "reference"}


def _model(heads=("ctc", "transducer"), lookahead=2, layers=2, seed=0, features=None):
    torch.manual_seed(seed)
    cfg = ExperimentConfig(
        features=features or FeatureConfig(n_mels=16), specaugment=None,
        encoder=EncoderConfig(bidirectional=False, lookahead=lookahead, hidden_size=16,
                              num_layers=layers, conv_channels=4, dropout=0.0),
        heads={h: HeadConfig(options=TRANSDUCER if h == "transducer" else {}) for h in heads},
        streaming=NO_ENDPOINT)
    model = ASRModel(cfg, TOKENIZER.vocab_size).eval()
    with torch.no_grad():
        model.cmvn.set_stats(torch.randn(16), torch.rand(16) + 0.5)
        for name in heads:  # a random model that emits tokens often enough to compare
            for p in model.heads[name].parameters():
                p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    out = tmp_path_factory.mktemp("onnx")
    return model, export_asr(model, TOKENIZER, out), out


@pytest.mark.parametrize("lookahead,layers", [(2, 2), (0, 1)])
def test_encoder_step_matches_torch_over_chunks_with_state_fed_back(tmp_path, lookahead, layers):
    model = _model(("ctc",), lookahead, layers)
    paths = export_asr(model, TOKENIZER, tmp_path, int8=False)
    enc = ort.InferenceSession(str(paths["encoder"]))
    inputs = {i.name for i in enc.get_inputs()}  # without lookahead ``final`` is unread
    names = state_names(model.encoder)
    B = 3
    state = model.encoder.init_state(B)
    onnx_state = [t.numpy() for t in _flatten(state, names)]
    # chunk widths and per-row lengths vary; rows end (final) at different chunks
    chunks = [(5, [5, 3, 0], [0, 0, 0]), (8, [8, 8, 2], [0, 0, 1]), (7, [7, 1, 0], [0, 0, 0]),
              (4, [4, 4, 0], [1, 0, 0]), (1, [0, 1, 0], [0, 1, 0])]
    valid_frames = 0
    for width, lens, final in chunks:
        x = torch.randn(B, width, 16) * 2
        lens_t, final_t = torch.tensor(lens), torch.tensor(final, dtype=torch.bool)
        with torch.no_grad():
            out, out_lens, state = model.encoder.streaming_forward(model.cmvn(x), lens_t, state,
                                                                   final_t)
        feeds = {"features": x.numpy(), "feature_lens": lens_t.numpy(), "final": final_t.numpy(),
                 **{f"state.{n}": v for n, v in zip(names, onnx_state)}}
        got = enc.run(None, {k: v for k, v in feeds.items() if k in inputs})
        onnx_state = got[2:]
        assert got[1].tolist() == out_lens.tolist()
        for b, n in enumerate(out_lens.tolist()):
            np.testing.assert_allclose(got[0][b, :n], out[b, :n].numpy(), atol=1e-5)
            valid_frames += n
        for ref, new in zip(_flatten(state, names), onnx_state):
            np.testing.assert_allclose(new, ref.numpy(), atol=1e-5)
    assert valid_frames >= 6  # the comparison saw real output


def test_heads_match_torch(exported):
    model, paths, _ = exported
    ctc, trans = model.heads["ctc"], model.heads["transducer"]
    enc = torch.randn(2, 6, model.encoder.output_dim)
    got = ort.InferenceSession(str(paths["ctc"])).run(None, {"encoder_out": enc.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, ctc(enc).numpy(), atol=1e-5)
        state = tuple(torch.randn_like(s) for s in trans.initial_state(3))
        tokens = torch.tensor([0, 5, 9])
        dec, new_state = trans.step(tokens, state)
        dec_p = trans.project_dec(dec)
        enc_rows = torch.randn(3, model.encoder.output_dim)
        joint = trans.join_projected(trans.project_enc(enc_rows), dec_p).log_softmax(-1)
    decoder = ort.InferenceSession(str(paths["decoder"]))
    got = decoder.run(None, {"tokens": tokens.numpy(),
                             **{f"state.state{i}": s.numpy() for i, s in enumerate(state)}})
    np.testing.assert_allclose(got[0], dec_p.numpy(), atol=1e-5)
    for ref, new in zip(new_state, got[1:]):
        np.testing.assert_allclose(new, ref.numpy(), atol=1e-5)
    got = ort.InferenceSession(str(paths["joiner"])).run(
        None, {"encoder_out": enc_rows.numpy(), "decoder_proj": dec_p.numpy()})[0]
    np.testing.assert_allclose(got, joint.numpy(), atol=1e-5)


def test_metadata_describes_the_model(exported):
    model, paths, _ = exported
    for name in ("encoder", "ctc", "decoder", "joiner", "encoder.int8", "joiner.int8"):
        meta = read_metadata(paths[name])
        assert meta["model_type"] == "asr_streaming" and meta["version"] == "1"
        assert meta["component"] == name.split(".")[0]
        assert json.loads(meta["feature_config"])["n_mels"] == 16
        assert meta["sample_rate"] == "16000" and meta["subsampling_factor"] == "4"
        assert meta["right_context"] == "2" and meta["chunk_frames"] == "8"
        assert json.loads(meta["tokenizer"]) == TOKENIZER.to_dict()
        stats = json.loads(meta["cmvn_stats"])
        assert np.allclose(stats["mean"], model.cmvn.mean.numpy())
        assert json.loads(meta["heads"])["transducer"]["kind"] == "transducer"
    assert "int8" in read_metadata(paths["encoder.int8"])["quantization"]


def test_export_refuses_what_cannot_stream(tmp_path):
    model = _model(("ctc",), lookahead=0)
    model.cfg.encoder.bidirectional = True
    with pytest.raises(ExportError, match="bidirectional"):
        export_asr(ASRModel(model.cfg, TOKENIZER.vocab_size), TOKENIZER, tmp_path)
    model.cfg.encoder.bidirectional, model.cfg.encoder.rnn_type = False, "lstm"
    with pytest.raises(ExportError, match="GRU"):
        export_asr(ASRModel(model.cfg, TOKENIZER.vocab_size), TOKENIZER, tmp_path)


@pytest.mark.parametrize("extra", [{}, {"remove_dc": True, "cepstral_lifter": 6}])
def test_numpy_features_equal_torch_streaming_features(extra):
    from asr.features import FeatureExtractor

    cfg = FeatureConfig(n_mels=16, **extra)
    wave = _audio(5123, 1)
    ref = TorchStreamingFeatures(FeatureExtractor(cfg))
    got = StreamingFeatures(dict(cfg.__dict__))
    pieces = [100, 200, 57, 1000, 3, 777, 2000, 1000]  # the first ones stay under n_fft // 2
    start = 0
    for n in pieces:
        a = ref.accept(wave[start:start + n])
        b = got.accept(wave[start:start + n].numpy())
        start += n
        assert b.shape == tuple(a.shape)  # the same frames become ready at the same time
        np.testing.assert_allclose(b, a.numpy(), atol=2e-3, rtol=1e-4)
    a, b = ref.flush(), got.flush()
    assert b.shape == tuple(a.shape) and b.shape[0] >= 2  # the end's reflected frames
    np.testing.assert_allclose(b, a.numpy(), atol=2e-3, rtol=1e-4)


def test_numpy_searches_equal_torch_ones():
    torch.manual_seed(3)
    # every frame twice: repeats to merge, one pair split by the chunk boundary
    log_probs = torch.randn(3, 6, 5).mul(3).log_softmax(-1).repeat_interleave(2, dim=1)
    chunks = [(0, 5, [5, 5, 2]), (5, 12, [7, 5, 0])]
    ref_states = [CTCGreedyState() for _ in range(3)]
    np_states = [CTCGreedyState() for _ in range(3)]
    beams_t = [PrefixBeam(3) for _ in range(3)]
    beams_n = [PrefixBeam(3) for _ in range(3)]
    for a, b, lens in chunks:
        lp = log_probs[:, a:b]
        torch_ctc_greedy_advance(lp, torch.tensor(lens), ref_states)
        asr_search_np.ctc_greedy_advance(lp.numpy(), np.array(lens), np_states)
        for row, (bt, bn) in enumerate(zip(beams_t, beams_n)):
            bt.advance(lp[row, :lens[row]])
            bn.advance(lp[row, :lens[row]].numpy())
    assert [s.tokens for s in np_states] == [s.tokens for s in ref_states]
    assert [s.times for s in np_states] == [s.times for s in ref_states]
    assert sum(len(s.tokens) for s in ref_states) >= 4
    assert [s.score for s in np_states] == pytest.approx([s.score for s in ref_states], rel=1e-6)
    for bt, bn in zip(beams_t, beams_n):
        assert bt.result(3).nbest == bn.result(3).nbest

    head = _model(("transducer",)).heads["transducer"]

    def decoder(tokens, state):
        with torch.no_grad():
            dec, new = head.step(torch.from_numpy(tokens), tuple(map(torch.from_numpy, state)))
            return head.project_dec(dec).numpy(), tuple(s.numpy() for s in new)

    def joiner(enc, dec_p):
        with torch.no_grad():
            return head.join_projected(head.project_enc(torch.from_numpy(enc)),
                                       torch.from_numpy(dec_p)).log_softmax(-1).numpy()

    enc = torch.randn(3, 9, 16)
    ref = torch_transducer_greedy_init(head, 3)
    zero = tuple(s.numpy() for s in head.initial_state(1))
    got = [asr_search_np.transducer_greedy_init(decoder, zero) for _ in range(3)]
    for a, b, lens in [(0, 5, [5, 3, 5]), (5, 9, [4, 4, 1])]:
        ref = torch_transducer_greedy_advance(head, enc[:, a:b], torch.tensor(lens), ref, 2)
        got = asr_search_np.transducer_greedy_advance(decoder, joiner, enc[:, a:b].numpy(),
                                                      np.array(lens), got, 2)
    assert [s.tokens for s in got] == [s.tokens for s in ref]
    assert [s.times for s in got] == [s.times for s in ref]
    assert [s.frames for s in got] == [s.frames for s in ref]
    assert sum(len(s.tokens) for s in ref) >= 4
    assert [s.score for s in got] == pytest.approx([s.score for s in ref], rel=1e-5)


def _feed(stream, wave, piece):
    for i in range(0, len(wave), piece):
        stream.accept_waveform(16000, wave[i:i + piece])
    stream.input_finished()


@pytest.mark.parametrize("head,method", [("ctc", "ctc_greedy"), ("ctc", "ctc_prefix_beam"),
                                         ("transducer", "transducer_greedy")])
def test_onnx_recognizer_equals_torch_recognizer(exported, head, method):
    model, _, out = exported
    ref_rec = TorchRecognizer(model, TOKENIZER, NO_ENDPOINT, head=head, method=method, beam=3)
    rec = Recognizer(out, head=head, method=method, beam=3)
    assert rec.config.chunk_frames == 8 and rec.frame_seconds == ref_rec.frame_seconds
    _assert_batched_streams_equal_torch(rec, ref_rec)


def _assert_batched_streams_equal_torch(rec, ref_rec):
    """Three streams fed in pieces of different sizes and decoded together (every ready
    stream in one batch per step) end as the torch recognizer's, one stream at a time."""
    waves = [_audio(n, seed) for seed, n in enumerate([9000, 4100, 12345])]
    streams = [rec.create_stream() for _ in waves]
    for s, wave, piece in zip(streams, waves, [160, 1000, 777]):
        _feed(s, wave.numpy(), piece)
    steps = 0
    while rec.decode_streams(streams):
        steps += 1
    assert all(s.finished for s in streams) and steps >= 3
    total = 0
    for s, wave in zip(streams, waves):
        ref = ref_rec.create_stream()
        _feed(ref, wave, 3000)
        ref_rec.decode_stream(ref)
        got, want = s.result(), ref.result()
        assert got.is_final and (got.tokens, got.text) == (want.tokens, want.text)
        assert got.times == pytest.approx(want.times)
        total += len(want.tokens)
    assert total >= 3


def test_onnx_stream_endpoint_and_reset_follow_torch(exported):
    model, _, out = exported
    rules = StreamingConfig(chunk_frames=8, endpoint=EndpointConfig(0.3, 0.2, 0.0))
    ref_rec = TorchRecognizer(model, TOKENIZER, rules)
    rec = Recognizer(out, config=rules)
    wave = torch.cat([_audio(6000, 2), torch.zeros(8000), _audio(5000, 4)])
    ref, got = ref_rec.create_stream(), rec.create_stream()
    seen = []
    for i in range(0, wave.numel(), 1600):
        ref.accept_waveform(16000, wave[i:i + 1600])
        got.accept_waveform(16000, wave[i:i + 1600].numpy())
        ref_rec.decode_stream(ref)
        rec.decode_stream(got)
        assert got.is_endpoint() == ref.is_endpoint()
        a, b = ref.result(), got.result()
        assert (b.tokens, b.segment, b.is_final) == (a.tokens, a.segment, a.is_final)
        seen.append(b.is_final)
        if b.is_final:
            ref.reset()
            got.reset()
    assert any(seen) and got.result().segment >= 1


def test_runtime_does_not_import_torch(exported):
    _, _, out = exported
    code = (
        "import sys, numpy as np\n"
        "from export.asr_runtime import Recognizer\n"
        f"rec = Recognizer({str(out)!r}, int8=True, head='transducer')\n"
        "s = rec.create_stream()\n"
        "t = np.arange(8000) / 16000\n"
        "s.accept_waveform(16000, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))\n"
        "s.input_finished()\n"
        "rec.decode_stream(s)\n"
        "assert s.finished and isinstance(s.result().text, str)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _lc_model(seed=0):
    """A random lc_bgru CTC model with running CMVN (the streaming English recipe's kind),
    chunks of 3 frames with 2 of right context."""
    torch.manual_seed(seed)
    cfg = ExperimentConfig(
        features=FeatureConfig(n_mels=16), specaugment=None, cmvn="running",
        cmvn_running_frames=20,  # the exponential regime within the test's audio
        encoder=EncoderConfig(name="lc_bgru", hidden_size=16, num_layers=2, conv_channels=4,
                              dropout=0.0, chunk_size=3, chunk_right_context=2),
        heads={"ctc": HeadConfig()}, streaming=NO_ENDPOINT)
    model = ASRModel(cfg, TOKENIZER.vocab_size).eval()
    with torch.no_grad():
        model.cmvn.set_stats(torch.randn(16), torch.rand(16) + 0.5)
        for p in model.heads["ctc"].parameters():
            p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def lc_exported(tmp_path_factory):
    model = _lc_model()
    out = tmp_path_factory.mktemp("onnx_lc")
    return model, export_asr(model, TOKENIZER, out), out


def test_lc_bgru_graphs_match_torch_over_chunks_with_state_fed_back(lc_exported):
    """frontend.onnx + one window of encoder.onnx at a time, driven by the runtime, against
    LCBiGRUEncoder.streaming_forward: outputs and every state tensor, chunk after chunk."""
    model, paths, out = lc_exported
    meta = read_metadata(paths["encoder"])
    assert (meta["encoder_kind"], meta["chunk_size"], meta["chunk_right_context"],
            meta["window_frames"]) == ("lc_bgru", "3", "2", "5")
    rec = Recognizer(out)
    streams = [rec.create_stream() for _ in range(3)]
    enc = model.encoder
    state = enc.init_state(3)
    # feature frames per row (4 per output frame); rows end (final) at different chunks
    chunks = [(9, [9, 5, 0], [0, 0, 0]), (16, [16, 16, 3], [0, 0, 0]), (13, [13, 2, 13], [0, 0, 1]),
              (20, [20, 20, 0], [0, 0, 0]), (7, [7, 1, 0], [1, 0, 0]), (6, [0, 6, 0], [0, 1, 0])]
    steps_with_output = 0
    for width, lens, final in chunks:
        x = torch.randn(3, width, 16) * 2
        lens_t, final_t = torch.tensor(lens), torch.tensor(final, dtype=torch.bool)
        with torch.no_grad():
            ref, ref_lens, state = enc.streaming_forward(model.cmvn(x), lens_t, state, final_t)
        got, got_lens = rec._lc_bgru_step(streams, x.numpy(), lens_t.numpy(), final)
        assert got_lens.tolist() == ref_lens.tolist()
        for b, n in enumerate(ref_lens.tolist()):
            assert np.abs(got[b, :n] - ref[b, :n].numpy()).max(initial=0) < 1e-4
        steps_with_output += int(ref_lens.sum() > 0)
        for b, s in enumerate(streams):  # the state fed back equals torch's
            np.testing.assert_allclose(s._rnn_hidden[0], state.rnn_hidden[b].numpy(), atol=1e-4)
            pending = state.pending[b, :state.pending_len[b]].numpy()
            assert s._window_frames.shape == pending.shape
            np.testing.assert_allclose(s._window_frames, pending, atol=1e-4)
            for got_c, ref_c in zip(s._encoder_state, (*state.conv_cache, state.conv_frames)):
                np.testing.assert_allclose(got_c[0], ref_c[b].numpy(), atol=1e-4)
    assert steps_with_output >= 4 and int(state.pending_len.sum()) == 0


def test_lc_bgru_unrolled_window_equals_the_gru_one():
    """The int8 graph's source (the GRUs as MatMuls) computes the same window."""
    from export.asr import WindowStep

    rnn = _lc_model().encoder.rnn
    x, hidden = torch.randn(4, 5, 16), torch.randn(4, 2, 16)
    lens = torch.tensor([5, 4, 2, 1])
    with torch.no_grad():
        ref = WindowStep(rnn)(x, lens, hidden)
        got = WindowStep(rnn, unroll=True)(x, lens, hidden)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["ctc_greedy", "ctc_prefix_beam"])
def test_lc_bgru_onnx_recognizer_equals_torch_recognizer(lc_exported, method):
    model, _, out = lc_exported
    ref_rec = TorchRecognizer(model, TOKENIZER, NO_ENDPOINT, method=method, beam=3)
    rec = Recognizer(out, method=method, beam=3)
    _assert_batched_streams_equal_torch(rec, ref_rec)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_onnx_stream_resamples_like_the_torch_one(lc_exported, rate):
    """A client at 8 kHz or 44.1 kHz: the numpy resampler gives the torch one's samples
    piece by piece, the streams the same feature frames, and the recognizers the same text."""
    from asr.streaming.resample import StreamingResampler as TorchResampler
    from export.asr_resample_np import StreamingResampler

    model, _, out = lc_exported
    g = torch.Generator().manual_seed(rate)
    t = torch.arange(int(1.3 * rate)) / rate
    wave = 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.05 * torch.randn(t.numel(), generator=g)
    ref_r, got_r = TorchResampler(rate, 16000), StreamingResampler(rate, 16000)
    ref_rec, rec = TorchRecognizer(model, TOKENIZER, NO_ENDPOINT), Recognizer(out)
    ref_s, got_s = ref_rec.create_stream(), rec.create_stream()
    pieces, start, n_out = [17, 441, 160, 3000, 1, 2205], 0, 0
    while start < wave.numel():
        piece = wave[start:start + pieces[start % len(pieces)]]
        start += piece.numel()
        a, b = ref_r.accept(piece), got_r.accept(piece.numpy())
        assert b.shape == tuple(a.shape)
        np.testing.assert_allclose(b, a.numpy(), atol=1e-4)
        n_out += b.size
        ref_s.accept_waveform(rate, piece)
        got_s.accept_waveform(rate, piece.numpy())
    a, b = ref_r.flush(), got_r.flush()
    np.testing.assert_allclose(b, a.numpy(), atol=1e-4)
    assert n_out + b.size == math.ceil(wave.numel() * 16000 / rate)
    ref_s.input_finished()
    got_s.input_finished()
    # the ONNX stream's frames lack only the global statistics (applied in the graph)
    frames = (got_s._pending - model.cmvn.mean.numpy()) * model.cmvn.inv_std.numpy()
    assert frames.shape == tuple(ref_s._pending.shape) and frames.shape[0] > 100
    np.testing.assert_allclose(frames, ref_s._pending.numpy(), atol=2e-3, rtol=1e-3)
    ref_rec.decode_stream(ref_s)
    rec.decode_stream(got_s)
    assert got_s.result().tokens == ref_s.result().tokens and ref_s.result().tokens


def _int8_weights(path) -> int:
    import onnx

    return sum(i.data_type == onnx.TensorProto.INT8 for i in onnx.load(str(path)).graph.initializer)


def _decode_all(rec, waves):
    streams = [rec.create_stream() for _ in waves]
    for s, w in zip(streams, waves):
        _feed(s, w, 1600)
    while rec.decode_streams(streams):
        pass
    return [s.result().text for s in streams]


WORDS = ["yes", "no", "up", "down"]
TONE_MODEL = ROOT / "data" / "models" / "tones_stream_ctc.pt"
TONE_MODEL_LC = ROOT / "data" / "models" / "tones_stream_lcbgru.pt"


def tone_clips(n: int, seed: int):
    """``n`` clips of three tone "words" (the pitch says the word, as in conftest's tone
    corpus) with pauses between: [(text, wave (N,) float32)]."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=3)]
        parts = []
        for w in words:
            t = np.arange(int(rng.uniform(0.25, 0.4) * 16000)) / 16000
            parts += [0.3 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(w)) * t), np.zeros(1600)]
        wave = np.concatenate(parts)
        clips.append((" ".join(words), (wave + 0.01 * rng.standard_normal(wave.size)).astype(np.float32)))
    return clips


def train_tone_model(path: Path = TONE_MODEL, steps: int = 400, lc_bgru: bool = False) -> None:
    """Writes the CTC models the int8 tests use (a few CPU minutes each): forward-only
    conv_rnn, or ``lc_bgru`` with running CMVN (the streaming English recipe's kind):
    ``PYTHONPATH=. python tests/test_asr_onnx_export.py [lc_bgru]``."""
    from asr.checkpoint import save_checkpoint

    torch.manual_seed(0)
    if lc_bgru:
        encoder = EncoderConfig(name="lc_bgru", hidden_size=32, num_layers=2, conv_channels=4,
                                dropout=0.0, chunk_size=4, chunk_right_context=2)
    else:
        encoder = EncoderConfig(bidirectional=False, lookahead=2, hidden_size=48, num_layers=1,
                                conv_channels=4, dropout=0.0)
    cfg = ExperimentConfig(features=FeatureConfig(n_mels=16), specaugment=None, encoder=encoder,
                           cmvn="running" if lc_bgru else "global")
    model = ASRModel(cfg, TOKENIZER.vocab_size)
    train = tone_clips(48, seed=0)
    waves = [torch.from_numpy(w) for _, w in train]
    wave_lens = torch.tensor([w.numel() for w in waves])
    waves = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    targets = [torch.tensor(TOKENIZER.encode(t)) for t, _ in train]
    target_lens = torch.tensor([len(t) for t in targets])
    targets = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    with torch.no_grad():
        feats, feat_lens = model.features(waves, wave_lens)
        feats = model.per_utterance_normalization(feats, feat_lens)  # the running mean
        frames = feats[torch.arange(feats.shape[1])[None] < feat_lens[:, None]]
        model.cmvn.set_stats(frames.mean(0), frames.std(0))
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(steps):
        loss = model(waves, wave_lens, targets, target_lens)["total"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(path, cfg, TOKENIZER, model.eval())


@pytest.mark.parametrize("path", [TONE_MODEL, TONE_MODEL_LC], ids=["conv_rnn", "lc_bgru"])
def test_int8_changes_wer_by_less_than_one_point(tmp_path, path):
    """Small CTC models trained on tone "words" (train_tone_model; forward-only conv_rnn,
    and lc_bgru with running CMVN): on their 48 training clips of 3 words, where the fp32
    output is known good (they overfit: WER on fresh clips is high, mostly insertions), the
    int8 graphs' WER is within 1 point."""
    from asr.checkpoint import load_model

    model, tokenizer, _ = load_model(path)
    paths = export_asr(model, tokenizer, tmp_path)
    for name in ("encoder", "ctc"):  # int8 weights really are in the graphs
        assert _int8_weights(paths[f"{name}.int8"]) > 0 and _int8_weights(paths[name]) == 0
    clips = tone_clips(48, seed=0)
    refs, waves = [t for t, _ in clips], [w for _, w in clips]
    fp32 = jiwer.wer(refs, _decode_all(Recognizer(tmp_path), waves))
    int8 = jiwer.wer(refs, _decode_all(Recognizer(tmp_path, int8=True), waves))
    print(f"WER over {3 * len(refs)} words: fp32 {100 * fp32:.2f}%, int8 {100 * int8:.2f}%")
    assert fp32 < 0.5  # the model has learnt the task: the comparison means something
    assert abs(int8 - fp32) < 0.01



def test_cli_writes_every_graph_and_refuses_a_bidirectional_model(tmp_path, capsys):
    from asr.checkpoint import save_checkpoint
    from export.__main__ import main

    model = _model(("transducer",), lookahead=0, layers=1)
    ckpt = save_checkpoint(tmp_path / "m.pt", model.cfg, TOKENIZER, model)
    assert main(["asr", "--model", str(ckpt), "--out", str(tmp_path / "onnx"),
                 "--chunk-frames", "12"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert sorted(written) == ["decoder", "decoder.int8", "encoder", "encoder.int8", "joiner",
                               "joiner.int8"]
    assert all(Path(p).is_file() for p in written.values())
    assert Recognizer(tmp_path / "onnx", head="transducer").config.chunk_frames == 12
    assert main(["asr", "--model", str(ROOT / "data" / "models" / "fsdd_ctc.pt"),
                 "--out", str(tmp_path / "bi")]) == 2
    assert "bidirectional" in capsys.readouterr().err


if __name__ == "__main__":
    if sys.argv[1:] == ["lc_bgru"]:
        train_tone_model(TONE_MODEL_LC, lc_bgru=True)
    else:
        train_tone_model()
