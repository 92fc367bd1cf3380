"""ONNX export of the CRNN (softmax and metadata inside) and int8 quantisation."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from asr.config import to_dict
from kws.config import KWSConfig
from kws.model import CRNN, CRNNStepWithSoftmax, CRNNWithSoftmax, count_parameters

MODEL_TYPE = "kws_crnn"
FORMAT_VERSION = "1"


def feature_config_dict(cfg: KWSConfig, model: Optional[CRNN] = None,
                        frontend: Optional[torch.nn.Module] = None) -> Dict:
    """The feature config as plain data for the edge runtime (learned PCEN values included)."""
    d = dataclasses.asdict(cfg.features)
    pcen = getattr(frontend, "pcen", None) if frontend is not None else None
    if cfg.features.kind == "pcen" and cfg.features.pcen_trainable and pcen is not None:
        d["pcen_params"] = {
            "s": pcen.log_s.exp().clamp(max=1.0).tolist(), "alpha": pcen.log_alpha.exp().tolist(),
            "delta": pcen.log_delta.exp().tolist(), "r": pcen.log_r.exp().tolist()}
    return d


def metadata(cfg: KWSConfig, model: CRNN, frontend: Optional[torch.nn.Module] = None) -> Dict[str, str]:
    return {
        "model_type": MODEL_TYPE,
        "version": FORMAT_VERSION,
        "task": cfg.task,
        "keyword": cfg.keyword,
        "labels": json.dumps(cfg.labels),
        "sample_rate": str(cfg.features.sample_rate),
        "feature_config": json.dumps(feature_config_dict(cfg, model, frontend)),
        "window_frames": str(cfg.window_frames),
        "window_samples": str(cfg.window_samples),
        "detector": json.dumps(dataclasses.asdict(cfg.detector)),
        "num_params": str(count_parameters(model)),
        "config": json.dumps(to_dict(cfg)),
        "input": "features (B, window_frames, n_mels) float32",
        "output": "posteriors (B, num_classes) float32, softmax applied",
    }


def add_metadata(path: str | Path, meta: Dict[str, str]) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(m, str(path))


def read_metadata(path: str | Path) -> Dict[str, str]:
    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def export_onnx(model: CRNN, cfg: KWSConfig, path: str | Path,
                frontend: Optional[torch.nn.Module] = None, opset: int = 17) -> Path:
    """Write the fp32 graph: features (B, T, F) -> softmax posteriors (B, C).

    The GRU becomes ONNX GRU nodes (one fused kernel per layer); batch and time are
    dynamic axes, though the runtime feeds windows of ``window_frames``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = CRNNWithSoftmax(model.eval()).eval()
    dummy = torch.randn(2, cfg.window_frames, cfg.features.n_mels)
    with torch.no_grad(), warnings.catch_warnings():
        # tracing notes about the (unused) short-input padding branch and GRU batch sizes;
        # batch and time parity are tested for several sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), str(path), input_names=["features"], output_names=["posteriors"],
            dynamic_axes={"features": {0: "batch", 1: "time"}, "posteriors": {0: "batch"}},
            opset_version=opset, dynamo=False)
    add_metadata(path, metadata(cfg, model, frontend))
    onnx.checker.check_model(str(path))
    return path


def export_streaming_onnx(model: CRNN, cfg: KWSConfig, path: str | Path,
                          frontend: Optional[torch.nn.Module] = None, opset: int = 17) -> Path:
    """Write the streaming step of a streamable model (:attr:`CRNN.can_stream`):
    inputs ``features`` (B, T, F) with T = LT + (K - 1) * ST and ``state`` (L, B, H);
    outputs ``posteriors`` (B, K, C) (softmax) and ``state_out`` (L, B, H).

    The same file serves both paths of the edge runtime: streaming (the state carried from
    hop to hop, :class:`kws.edge.KeywordStream` ``mode="streaming"``) and windowed (one
    window with a zero state, the last step's posteriors). Metadata as :func:`export_onnx`,
    plus ``graph: streaming_step``, ``state_shape`` [L, H] and the time kernel/stride.
    """
    if not model.can_stream:
        model.step(torch.zeros(1, cfg.model.conv_kernel[0], cfg.features.n_mels))  # raises, naming why
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = CRNNStepWithSoftmax(model.eval()).eval()
    lt, st = cfg.model.conv_kernel[0], cfg.model.conv_stride[0]
    layers, hidden = model.state_shape
    dummy = (torch.randn(2, lt + st, cfg.features.n_mels), torch.zeros(layers, 2, hidden))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing notes on the checks in CRNN.step (constant here)
        torch.onnx.export(
            wrapper, dummy, str(path), input_names=["features", "state"],
            output_names=["posteriors", "state_out"],
            dynamic_axes={"features": {0: "batch", 1: "time"}, "state": {1: "batch"},
                          "posteriors": {0: "batch", 1: "steps"}, "state_out": {1: "batch"}},
            opset_version=opset, dynamo=False)
    meta = metadata(cfg, model, frontend)
    meta.update({"graph": "streaming_step", "state_shape": json.dumps([layers, hidden]),
                 "conv_kernel_t": str(lt), "conv_stride_t": str(st),
                 "input": "features (B, LT + (K-1) ST, n_mels) float32; state (L, B, H) float32",
                 "output": "posteriors (B, K, num_classes) softmax; state_out (L, B, H)"})
    add_metadata(path, meta)
    onnx.checker.check_model(str(path))
    return path


def _quantize_tensor(w: np.ndarray, axis: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: w ~= q * scale, per channel along ``axis`` (or per tensor)."""
    if axis is None:
        amax = np.abs(w).max(keepdims=False)
        scale = np.asarray(max(amax, 1e-12) / 127.0, dtype=np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        return q, scale
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale = (np.maximum(amax, 1e-12) / 127.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_int8(src: str | Path, dst: str | Path, min_elements: int = 1024) -> Path:
    """int8 weights: every float initializer with at least ``min_elements`` values is
    stored as int8 with per-channel scales and a DequantizeLinear node in front of its users.

    This is weight-only quantisation: onnxruntime has no integer GRU kernel, so the GRU,
    which holds nearly all the weights, computes in float after dequantising (onnxruntime
    folds the constant dequantisation when the session loads). The file is ~4x smaller
    and the accuracy cost is measured, not assumed (see the recipes' READMEs).
    """
    src, dst = Path(src), Path(dst)
    m = onnx.load(str(src))
    g = m.graph
    users: Dict[str, list] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node, i))
    new_inits, new_nodes = [], []
    for init in list(g.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or init.name not in users:
            new_inits.append(init)
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_elements:
            new_inits.append(init)
            continue
        # per output channel: GRU W/R are (dirs, 3H, in) -> axis 1; MatMul (in, out) -> 1;
        # Gemm B (out, in) with transB -> 0; Conv (out, in, kh, kw) -> 0
        kinds = {n.op_type for n, _ in users[init.name]}
        axis = 1 if kinds <= {"GRU", "MatMul"} else (0 if w.ndim >= 2 else None)
        q, scale = _quantize_tensor(w, axis)
        qname, sname, zname = init.name + "_q", init.name + "_scale", init.name + "_zero"
        new_inits += [numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), zname)]
        attrs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [init.name],
                                          name=init.name + "_dequant", **attrs))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    meta = {p.key: p.value for p in m.metadata_props}
    meta["quantization"] = "int8 weights (symmetric, per output channel), float compute"
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dst))
    return dst
