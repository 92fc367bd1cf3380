"""CRNN size, ONNX export parity (torch vs onnxruntime), int8 size, metadata."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kws.config import ConfigError, CRNNConfig, KWSConfig, load_kws_config
from kws.edge import KWSModel
from kws.export import export_onnx, quantize_int8, read_metadata
from kws.model import CRNN, count_parameters, model_summary

ROOT = Path(__file__).resolve().parent.parent
RECIPE_CONFIGS = [ROOT / "recipes" / "speech_commands" / "conf" / "crnn.yaml",
                  ROOT / "recipes" / "wake_word" / "conf" / "crnn.yaml"]


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: p.parent.parent.name)
def test_recipe_models_are_small(path):
    cfg = load_kws_config(path, ["keyword=computer"])
    s = model_summary(cfg.model, cfg.features.n_mels, len(cfg.labels), cfg.window_frames)
    assert 200_000 <= s["params"] <= 250_000, s  # "about 230k" (Arik et al.), at most 250k
    assert cfg.features.n_mels == 40


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [a, b]\nmodel: {gru_sise: 3}\n")
    with pytest.raises(ConfigError, match="gru_sise"):
        load_kws_config(bad)
    bad.write_text("task: wakeword\nlabels: [_background_, x]\n")
    with pytest.raises(ConfigError, match="keyword"):
        load_kws_config(bad)


def _random_model(cfg: KWSConfig, seed=0) -> CRNN:
    torch.manual_seed(seed)
    m = CRNN(cfg.model, cfg.features.n_mels, len(cfg.labels))
    m.set_normalization(torch.randn(cfg.features.n_mels), torch.rand(cfg.features.n_mels) + 0.5)
    if isinstance(m.bn, torch.nn.BatchNorm2d):  # non-trivial running statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("bidirectional,pool,bn,cmn", [(True, "last", True, False), (False, "mean", False, True)])
def test_onnx_fp32_matches_torch(tmp_path, bidirectional, pool, bn, cmn):
    cfg = KWSConfig(labels=["_silence_", "_unknown_", "a", "b", "c"],
                    model=CRNNConfig(gru_size=24, bidirectional=bidirectional, pool=pool, conv_batchnorm=bn,
                                     cmn=cmn, conv_kernel=[10, 5], conv_stride=[3, 2]))
    m = _random_model(cfg)
    path = export_onnx(m, cfg, tmp_path / "m.onnx")
    edge = KWSModel(str(path))
    for batch in (1, 3):
        x = torch.randn(batch, cfg.window_frames, 40) * 3
        with torch.no_grad():
            ref = torch.softmax(m(x), dim=-1).numpy()
        got = edge.predict(x.numpy())
        np.testing.assert_allclose(got, ref, atol=1e-4)
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # softmax is inside the graph


def test_int8_is_small_and_close_with_metadata(tmp_path):
    cfg = KWSConfig(labels=["_background_", "computer"], task="wakeword", keyword="computer",
                    model=CRNNConfig(gru_size=48))
    m = _random_model(cfg, seed=1)
    assert count_parameters(m) <= 250_000
    fp32 = export_onnx(m, cfg, tmp_path / "m.onnx")
    int8 = quantize_int8(fp32, tmp_path / "m_int8.onnx")
    assert int8.stat().st_size <= 300 * 1024
    assert int8.stat().st_size < fp32.stat().st_size / 3
    meta = read_metadata(int8)
    assert meta["model_type"] == "kws_crnn" and json.loads(meta["labels"]) == cfg.labels
    assert "int8" in meta["quantization"]
    assert json.loads(meta["feature_config"])["n_mels"] == 40
    assert int(meta["num_params"]) == count_parameters(m)
    assert json.loads(meta["config"])["model"]["gru_size"] == 48  # resolved config inside
    x = np.random.default_rng(0).standard_normal((16, cfg.window_frames, 40)).astype(np.float32) * 3
    a, b = KWSModel(str(fp32)).predict(x), KWSModel(str(int8)).predict(x)
    assert np.abs(a - b).max() < 0.05
    assert not np.allclose(a, b, atol=1e-7)  # the weights really changed


def test_edge_rejects_a_non_kws_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g), str(p))
    with pytest.raises(ValueError, match="other.onnx"):
        KWSModel(str(p))


def test_weight_average_tracks_and_swaps():
    import torch

    from kws.train import WeightAverage

    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(m, decay=0.9)
    start = m[0].weight.detach().clone()
    for _ in range(200):  # move the weights to a new constant value
        with torch.no_grad():
            m[0].weight.fill_(1.0)
        avg.update(m)
    avg.swap(m)  # now holding the average: close to the new value after many updates
    assert torch.allclose(m[0].weight, torch.ones_like(start), atol=1e-3)
    avg.swap(m)  # and back
    assert torch.equal(m[0].weight, torch.ones_like(start))
    assert int(avg.shadow["1.num_batches_tracked"]) == int(m[1].num_batches_tracked)
