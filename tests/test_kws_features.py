"""The edge runtime's numpy features against the torch front end (asr.features)."""
import dataclasses

import numpy as np
import pytest
import torch

from asr.features import FeatureConfig, FeatureExtractor, mel_filters as torch_mel
from kws.features_np import StreamingFeatures, compute_features, mel_filters, resample


def _signal(n=24000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.2 * np.sin(2 * np.pi * 300 * t) * (t > 0.3) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 512, 40, 20.0, 7600.0),
                                                       (8000, 256, 32, 0.0, None)])
def test_mel_filters_equal_torch(sr, n_fft, n_mels, fmin, fmax):
    ours = mel_filters(sr, n_fft, n_mels, fmin, fmax)
    ref = torch_mel(sr, n_fft, n_mels, fmin, fmax).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind,remove_dc", [("logmel", False), ("pcen", False), ("logmel", True)])
def test_numpy_features_match_torch(kind, remove_dc):
    x = _signal() + (0.05 if remove_dc else 0.0)  # a recording's DC offset
    cfg = FeatureConfig(kind=kind, n_mels=40, f_max=7600.0, remove_dc=remove_dc)
    ref, lens = FeatureExtractor(cfg)(torch.from_numpy(x)[None])
    ours = compute_features(x, dataclasses.asdict(cfg))
    assert ours.shape == tuple(ref.shape[1:]) == (1 + x.size // 160, 40)
    np.testing.assert_allclose(ours, ref[0].numpy(), atol=1e-4, rtol=1e-4)


def test_trainable_pcen_values_travel_in_the_config():
    x = _signal(seed=3)
    cfg = FeatureConfig(kind="pcen", n_mels=40, pcen_trainable=True)
    fe = FeatureExtractor(cfg)
    with torch.no_grad():  # learned values that differ from the defaults, per channel
        fe.pcen.log_alpha.add_(torch.linspace(-0.3, 0.0, 40))
        fe.pcen.log_r.add_(torch.linspace(0.0, 0.2, 40))
        ref, _ = fe(torch.from_numpy(x)[None])
    d = dataclasses.asdict(cfg)
    with pytest.raises(ValueError, match="pcen_params"):
        compute_features(x, d)
    p = fe.pcen
    d["pcen_params"] = {"s": p.log_s.exp().tolist(), "alpha": p.log_alpha.exp().tolist(),
                        "delta": p.log_delta.exp().tolist(), "r": p.log_r.exp().tolist()}
    np.testing.assert_allclose(compute_features(x, d), ref[0].numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["logmel", "pcen"])
def test_streaming_features_equal_offline_for_any_chunking(kind):
    x = _signal(n=30000, seed=1)
    d = dataclasses.asdict(FeatureConfig(kind=kind, n_mels=40))
    offline = compute_features(x, d)
    rng = np.random.default_rng(0)
    for _ in range(3):
        sf = StreamingFeatures(d)
        cuts = np.sort(rng.integers(0, x.size, size=12))
        parts = np.split(x, cuts)
        got = np.concatenate([sf.accept(p) for p in parts])
        # all frames whose right half-window has arrived are out, and equal the offline ones
        assert got.shape[0] == (x.size - 256) // 160 + 1
        np.testing.assert_allclose(got, offline[: got.shape[0]], atol=1e-5)


def test_resample_keeps_a_tone():
    t = np.arange(8000) / 8000
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(x, 8000, 16000)
    assert y.size == 16000
    freq = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / y.size
    assert abs(freq - 440) < 2


def test_pcen_stream_normalises_each_window_like_training(tmp_path):
    """A PCEN model's keyword stream computes every window's PCEN from a fresh smoother, as
    the 1 s training windows are (torch), for any chunking; log-mel streams are unchanged."""
    from kws.config import CRNNConfig, KWSConfig
    from kws.edge import KWSModel
    from kws.export import export_onnx
    from kws.model import CRNN

    cfg = KWSConfig(labels=["_background_", "computer"], task="wakeword", keyword="computer",
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1))
    cfg.features = FeatureConfig(kind="pcen", n_mels=40, f_min=20.0, f_max=7600.0)
    torch.manual_seed(0)
    m = CRNN(cfg.model, 40, 2).eval()
    m.set_normalization(torch.full((40,), 1.0), torch.full((40,), 2.0))
    edge = KWSModel(str(export_onnx(m, cfg, tmp_path / "pcen.onnx")))
    x = _signal(n=40000, seed=5) * 3
    runs = []
    for chunk in (1000, 7777, x.size):
        s = edge.stream(record=True)
        for i in range(0, x.size, chunk):
            s.accept_waveform(x[i:i + chunk])
        runs.append(np.stack(s.posteriors))
    for post in runs[1:]:
        np.testing.assert_allclose(post, runs[0], atol=1e-5)
    # reference: torch mel power of the whole input, PCEN (torch) of each window on its own
    fe = FeatureExtractor(cfg.features)
    W = cfg.window_frames
    with torch.no_grad():
        mel = fe.mel(torch.from_numpy(x)[None])[0]  # (T, 40)
        ends = [k for k in range(9, mel.shape[0] - 2, 10)]  # the stream's hops (last frames excluded)
        wins = []
        for k in ends:
            w = mel[max(0, k - W + 1):k + 1]
            w = torch.cat([torch.zeros(W - w.shape[0], 40), w])  # silence before the start
            wins.append(fe.pcen(w[None].clamp(min=0).sqrt() * cfg.features.pcen_input_scale)[0])
        ref = torch.softmax(m(torch.stack(wins)), dim=-1).numpy()
    np.testing.assert_allclose(runs[0][:len(ends)], ref, atol=1e-4)
    # the continuous (not per-window) PCEN would differ: the check above means something
    cont = compute_features(x, dataclasses.asdict(cfg.features))
    k = ends[-1]
    assert np.abs(cont[k - W + 1:k + 1] - wins[-1].numpy()).max() > 0.1
