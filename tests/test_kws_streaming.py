"""Streaming without recomputation (the GRU state and the convolution's frame context
carried from hop to hop, torch and onnxruntime) and serving-equal training features.

Equality, precisely: for a streamable CRNN (unidirectional GRU, pool "last"), the
posterior the stream gives after convolution step k equals the model run (``forward``)
over all frames from the start of the stream to the end of that step. A window is not
equal to it (the GRU has seen more than one window of audio), so the windowed path is a
different computation, kept for comparison and for bidirectional models.
"""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kws.config import CRNNConfig, KWSConfig, load_kws_config
from kws.edge import EdgeError, KWSModel
from kws.export import export_onnx, export_streaming_onnx, quantize_int8
from kws.features_np import compute_features
from kws.model import CRNN, CRNNStream

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def _random_model(cfg: KWSConfig, seed=0) -> CRNN:
    torch.manual_seed(seed)
    m = CRNN(cfg.model, cfg.features.n_mels, len(cfg.labels))
    m.set_normalization(torch.randn(cfg.features.n_mels), torch.rand(cfg.features.n_mels) + 0.5)
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 2.0)
    for p in m.gru.parameters():  # larger recurrent weights: a state that matters for long
        p.data.mul_(3.0)
    return m.eval()


def _streaming_cfg(**model) -> KWSConfig:
    return KWSConfig(labels=["_background_", "kw"], task="wakeword", keyword="kw",
                     model=CRNNConfig(bidirectional=False, gru_size=24, **model))


def _reference(m: CRNN, feats: torch.Tensor, steps: int) -> np.ndarray:
    """Logits of ``forward`` over frames 0 .. end of step k, for k < steps: (steps, C)."""
    lt, st = m.cfg.conv_kernel[0], m.cfg.conv_stride[0]
    with torch.no_grad():
        return torch.cat([m(feats[None, : lt + k * st]) for k in range(steps)]).numpy()


def test_torch_stream_equals_the_model_over_all_audio_so_far():
    torch.set_num_threads(1)
    m = _random_model(_streaming_cfg())
    feats = torch.randn(400, 40) * 2
    rng = np.random.default_rng(0)
    s, outs, i = CRNNStream(m), [], 0
    while i < feats.shape[0]:
        n = int(rng.integers(1, 25))  # chunks shorter and longer than one step
        outs.append(s.accept(feats[i:i + n]))
        i += n
    got = torch.cat(outs).numpy()
    assert got.shape == ((400 - 20) // 8 + 1, 2) and s.steps == got.shape[0]
    np.testing.assert_allclose(got, _reference(m, feats, got.shape[0]), atol=1e-5)
    # the state matters: after 4 s the same last window alone gives something else
    with torch.no_grad():
        window = m(feats[None, 400 - 101 - 3: 400 - 3])[0].numpy()
    assert np.abs(window - got[-1]).max() > 1e-2


def test_onnx_streaming_step_matches_torch_in_both_paths(tmp_path):
    cfg = _streaming_cfg()
    m = _random_model(cfg, seed=1)
    path = export_streaming_onnx(m, cfg, tmp_path / "s.onnx")
    edge = KWSModel(str(path))
    assert edge.streaming and edge.state_shape == (2, 24)
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    runs = []
    for chunk in (160, 1234, audio.size):
        s = edge.stream(record=True)
        assert type(s).__name__ == "StatefulKeywordStream"
        for i in range(0, audio.size, chunk):
            s.accept_waveform(audio[i:i + chunk])
        runs.append((np.stack(s.posteriors), np.array(s.times)))
    for post, times in runs[1:]:  # chunk size does not matter
        np.testing.assert_allclose(post, runs[0][0], atol=1e-6)
        np.testing.assert_array_equal(times, runs[0][1])
    post, times = runs[0]
    # one posterior per 100 ms hop from the first convolution step on
    assert np.allclose(np.diff(times), 0.1) and len(times) == len(np.arange(19, 3 * SR // 160 - 1, 10))
    # torch over all frames up to the last step complete at each hop
    feats = torch.from_numpy(compute_features(audio, edge.feature_config))
    frames = np.rint(times * SR / 160).astype(int)
    steps = (frames + 1 - 20) // 8
    ref = torch.softmax(torch.from_numpy(_reference(m, feats, steps.max() + 1)), -1).numpy()[steps]
    np.testing.assert_allclose(post, ref, atol=1e-5)
    # the windowed path of the same file: a zero state over one window = torch forward
    x = torch.randn(3, cfg.window_frames, 40) * 2
    with torch.no_grad():
        np.testing.assert_allclose(edge.predict(x.numpy()), torch.softmax(m(x), -1).numpy(), atol=1e-5)
    w = edge.stream(record=True, mode="windowed")
    assert type(w).__name__ == "KeywordStream"
    w.accept_waveform(audio)
    assert len(w.posteriors) > 0


def test_recipe_sized_streaming_int8_is_small_and_close(tmp_path):
    cfg = load_kws_config(ROOT / "recipes" / "wake_word" / "conf" / "crnn.yaml",
                          ["keyword=computer", "model.bidirectional=false"])
    m = _random_model(cfg, seed=2)
    fp32 = export_streaming_onnx(m, cfg, tmp_path / "s.onnx")
    int8 = quantize_int8(fp32, tmp_path / "s_int8.onnx")
    assert os.path.getsize(int8) <= 300 * 1024
    audio = (0.1 * np.random.default_rng(2).standard_normal(2 * SR)).astype(np.float32)
    posts = []
    for p in (fp32, int8):
        s = KWSModel(str(p)).stream(record=True)
        s.accept_waveform(audio)
        posts.append(np.stack(s.posteriors))
    assert KWSModel(str(int8)).streaming
    assert np.abs(posts[0] - posts[1]).max() < 0.05


def test_bidirectional_models_are_windowed_only(tmp_path):
    cfg = KWSConfig(labels=["_background_", "kw"], task="wakeword", keyword="kw",
                    model=CRNNConfig(bidirectional=True, gru_size=16))
    m = _random_model(cfg)
    assert not m.can_stream
    with pytest.raises(ValueError, match="bidirectional=True"):
        m.step(torch.zeros(1, 20, 40))
    with pytest.raises(ValueError, match="unidirectional"):
        export_streaming_onnx(m, cfg, tmp_path / "no.onnx")
    path = export_onnx(m, cfg, tmp_path / "w.onnx")
    edge = KWSModel(str(path))
    assert not edge.streaming and type(edge.stream()).__name__ == "KeywordStream"
    with pytest.raises(EdgeError, match="w.onnx"):
        edge.stream(mode="streaming")


def test_detection_report_names_the_stream_mode_it_used(tmp_path):
    """evaluate-detection's "mode" is the stream kind used, not the requested "auto"."""
    import soundfile as sf

    from kws.evaluate import DetectionEvalConfig, detection_report

    cfg = _streaming_cfg()
    stream_model = KWSModel(str(export_streaming_onnx(_random_model(cfg), cfg, tmp_path / "s.onnx")))
    bi_cfg = KWSConfig(labels=["_background_", "kw"], task="wakeword", keyword="kw",
                       model=CRNNConfig(bidirectional=True, gru_size=16))
    window_model = KWSModel(str(export_onnx(_random_model(bi_cfg), bi_cfg, tmp_path / "w.onnx")))
    rng = np.random.default_rng(3)
    for sub in ("pos", "neg"):
        (tmp_path / sub).mkdir()
        sf.write(tmp_path / sub / "a.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    got = {}
    for name, model in (("streaming", stream_model), ("windowed", window_model)):
        for mode in ("auto", "windowed"):
            res = detection_report(model, [tmp_path / "pos"], [tmp_path / "neg"],
                                   DetectionEvalConfig(snrs=(), mode=mode))
            assert res["mode_requested"] == mode
            got[name, mode] = res["mode"]
    assert got == {("streaming", "auto"): "streaming", ("streaming", "windowed"): "windowed",
                   ("windowed", "auto"): "windowed", ("windowed", "windowed"): "windowed"}
    assert stream_model.stream_mode() == "streaming" and window_model.stream_mode() == "windowed"
    with pytest.raises(EdgeError, match="w.onnx"):
        window_model.stream_mode("streaming")


def test_training_windows_have_the_features_of_serving(tmp_path):
    """The windows the serving stream feeds the model equal the training path's features
    of the same audio (a window with its context, kws.data.WindowMaker + Spotter.features)."""
    from kws.data import Clip, NoiseBank, WindowMaker
    from kws.train import Spotter

    cfg = KWSConfig(labels=["_background_", "kw"], task="wakeword", keyword="kw",
                    model=CRNNConfig(gru_size=8, conv_channels=4, dense_size=8, gru_layers=1))
    spotter = Spotter(cfg).eval()
    path = export_onnx(spotter.crnn, cfg, tmp_path / "w.onnx")
    edge = KWSModel(str(path))
    seen = []
    predict = edge.predict
    edge.predict = lambda feats, batch=256: (seen.append(np.array(feats)), predict(feats, batch))[1]
    rng = np.random.default_rng(3)
    t = np.arange(4 * SR) / SR
    audio = (0.2 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    s = edge.stream(record=True, mode="windowed")
    s.accept_waveform(audio)
    windows = np.concatenate(seen)  # (K, W, F): one per hop
    ends = np.rint(np.array(s.times) * SR / 160).astype(int)  # last frame of each window
    ctx, n = cfg.context_samples, cfg.window_samples
    assert ctx == 256
    maker = WindowMaker(n, cfg.augment, NoiseBank([]), SR, context=ctx)
    checked = 0
    for k, win in zip(ends, windows):
        start = (k - 100) * 160  # the window's first sample
        if start < ctx or k * 160 + ctx > audio.size - 256:
            continue  # windows holding stream-start silence or frames not yet final
        segment = torch.from_numpy(audio[start - ctx: start + n + ctx])
        # WindowMaker cuts exactly this segment from a clip of the same audio
        clip = Clip(torch.from_numpy(audio[start - ctx - 1000: start + n + ctx + 1000]), 0)
        made = maker(clip, random.Random(0), augment=False)
        assert made.shape == (n + 2 * ctx,) and torch.equal(made, segment)
        with torch.no_grad():
            train_feats = spotter.features(made[None])[0].numpy()
            bare = spotter.features(segment[None, ctx: ctx + n])[0].numpy()  # a window on its own
        np.testing.assert_allclose(train_feats, win, atol=2e-3, rtol=1e-4)
        # without the context the edge frames differ (reflection at the window's ends)
        assert np.abs(bare - win)[[0, -1]].max() > 0.1
        checked += 1
    assert checked >= 20


def test_cli_export_streaming(tmp_path, capsys):
    from kws.__main__ import main
    from kws.train import Spotter, save_checkpoint

    for bidirectional in (False, True):
        cfg = KWSConfig(labels=["_background_", "kw"], task="wakeword", keyword="kw",
                        model=CRNNConfig(bidirectional=bidirectional, gru_size=8, conv_channels=4,
                                         dense_size=8, gru_layers=1))
        ck = tmp_path / f"ck{int(bidirectional)}"
        save_checkpoint(Spotter(cfg).eval(), ck)
        rc = main(["export", "--checkpoint", str(ck), "--out", str(ck / "s.onnx"),
                   "--int8", str(ck / "s_int8.onnx"), "--streaming"])
        if bidirectional:  # a clear error, not a broken file
            assert rc == 2 and "unidirectional" in capsys.readouterr().err
        else:
            assert rc == 0
            assert KWSModel(str(ck / "s.onnx")).streaming and KWSModel(str(ck / "s_int8.onnx")).streaming
