"""ONNX export of a streaming ASR model (torch side; the runtime is ``export.asr_runtime``).

One directory per model:

- ``encoder.onnx`` (``conv_rnn``): one streaming step of a forward-only ``conv_rnn``
  encoder, global CMVN folded in. Inputs ``features (B, T, F)`` (log-mel, not normalised), ``feature_lens (B,)``,
  ``final (B,)`` bool and the state, one input ``state.NAME`` per tensor of
  :class:`~asr.encoders.ConvRNNState`; outputs ``encoder_out (B, T', D)``,
  ``encoder_out_lens (B,)`` and ``new_state.NAME``. Every control value (frames read,
  lookahead fill) is a state tensor, so the first chunk runs the same graph as the rest;
  the initial state is all zeros, each input's shape with the batch set.
- ``lc_bgru`` (latency-controlled BiGRU) has a data-dependent number of windows per
  step, so its step is split in two fixed-shape graphs that ``export.asr_runtime`` drives:
  ``frontend.onnx``: CMVN, the causal convolutions and the input projection, ``features
  (B, T, F)``, ``feature_lens (B,)`` and ``state.conv_cache*``, ``state.conv_frames`` ->
  ``frames (B, T', H)``, ``frame_lens (B,)`` and the new state; ``encoder.onnx``: exactly
  one window, ``window (B, W, H)`` (W = chunk_size + chunk_right_context frames after
  subsampling, left-aligned), ``window_lens (B,)`` and ``state.rnn_hidden (B, N, H)`` ->
  ``encoder_out (B, C, D)`` (the window's chunk_size outputs) and ``new_state.rnn_hidden``
  (the forward states after its first C frames). The runtime keeps each stream's pending
  frames and runs a window once W are in (or the input ended), as
  ``LCBiGRUEncoder.streaming_forward`` does.
- With ``cmvn: running`` the runtime subtracts the running mean (numpy, per stream) and the
  graphs apply the global statistics; with ``cmvn: global`` the graphs do all of it.
- ``ctc.onnx``: ``encoder_out (B, T, D) -> log_probs (B, T, V)``.
- ``decoder.onnx``: one RNN-T prediction step, ``tokens (N,)`` and ``state.NAME`` ->
  ``decoder_proj (N, Dj)`` (the joiner's projection applied) and ``new_state.NAME``.
- ``joiner.onnx``: ``encoder_out (N, D)``, ``decoder_proj (N, Dj) -> log_probs (N, V)``.

Each file carries the same metadata (:func:`metadata`), so the runtime needs no side
config. ``*.int8.onnx`` are onnxruntime's dynamic int8 quantisation of each graph.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import onnx
import torch
from torch import nn

from asr.encoders import (ConvRNNEncoder, ConvRNNState, LatencyControlledBiGRU, LCBiGRUEncoder,
                          last_valid, reverse_padded)
from asr.heads.ctc import CTCHead
from asr.heads.transducer import TransducerHead
from asr.text import Tokenizer
from kws.export import add_metadata, read_metadata  # noqa: F401 (one ONNX metadata helper for both exports)

MODEL_TYPE = "asr_streaming"
FORMAT_VERSION = "1"
OPSET = 17


class ExportError(ValueError):
    """A model this export cannot write; the message says why."""


def state_names(encoder: nn.Module) -> List[str]:
    """The state tensors that carry information for this configuration (an LSTM cell
    for GRU layers or an empty lookahead buffer would be zero-size inputs). For lc_bgru:
    the front end's (``frontend.onnx``); the window graph's state is ``rnn_hidden``."""
    names = [f"conv_cache{l}" for l in range(encoder.subsampling.num_layers)]
    names += ["conv_frames"]
    if isinstance(encoder, LCBiGRUEncoder):
        return names
    names += ["rnn_hidden"]
    if encoder.cfg.rnn_type == "lstm":
        names.append("rnn_cell")
    if encoder.cfg.lookahead:
        names += ["lookahead", "lookahead_filled"]
    return names


def _flatten(state: ConvRNNState, names: List[str]) -> Tuple[torch.Tensor, ...]:
    values = {f"conv_cache{l}": c for l, c in enumerate(state.conv_cache)}
    values.update(conv_frames=state.conv_frames, rnn_hidden=state.rnn_hidden,
                  rnn_cell=state.rnn_cell, lookahead=state.lookahead,
                  lookahead_filled=state.lookahead_filled)
    return tuple(values[n] for n in names)


class EncoderStep(nn.Module):
    """CMVN then one ``streaming_forward`` of the encoder, the state flat in the order of
    :func:`state_names`. forward(features (B, T, F), feature_lens (B,), final (B,), *state)
    -> (encoder_out (B, T', D), encoder_out_lens (B,), *new_state)."""

    def __init__(self, cmvn: nn.Module, encoder: ConvRNNEncoder) -> None:
        super().__init__()
        self.cmvn, self.encoder = cmvn, encoder
        self.names = state_names(encoder)

    def forward(self, features, feature_lens, final, *state):
        full = self.encoder.init_state(features.shape[0])  # fills the fields left out
        given = dict(zip(self.names, state))
        layers = self.encoder.subsampling.num_layers
        full = ConvRNNState(
            conv_cache=tuple(given[f"conv_cache{l}"] for l in range(layers)),
            conv_frames=given["conv_frames"], rnn_hidden=given["rnn_hidden"],
            rnn_cell=given.get("rnn_cell", full.rnn_cell),
            lookahead=given.get("lookahead", full.lookahead),
            lookahead_filled=given.get("lookahead_filled", full.lookahead_filled))
        out, lens, new = self.encoder.streaming_forward(self.cmvn(features), feature_lens, full,
                                                        final)
        return (out, lens) + _flatten(new, self.names)


class FrontendStep(nn.Module):
    """lc_bgru's front end: CMVN, the causal convolutions' streaming step and the input
    projection. forward(features (B, T, F), feature_lens (B,), *conv_state) ->
    (frames (B, T', H), frame_lens (B,), *new_conv_state), the state in the order of
    :func:`state_names`."""

    def __init__(self, cmvn: nn.Module, encoder: LCBiGRUEncoder) -> None:
        super().__init__()
        self.cmvn, self.encoder = cmvn, encoder
        self.layers = encoder.subsampling.num_layers

    def forward(self, features, feature_lens, *state):
        h, lens, cache, frames = self.encoder.subsampling.streaming_forward(
            self.cmvn(features), feature_lens, tuple(state[:self.layers]), state[self.layers])
        return (self.encoder._front(h), lens) + tuple(cache) + (frames,)


def gru_unrolled(gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """``gru(x, h0[None])[0]`` as MatMuls and gates, one step per frame of the (fixed) width:
    x (B, W, I), h0 (B, H) -> (B, W, H). onnxruntime has no int8 GRU, but quantises MatMuls,
    so the int8 window graph is exported this way (torch's gate order: r, z, n)."""
    H = gru.hidden_size
    gi = x @ gru.weight_ih_l0.t() + gru.bias_ih_l0  # (B, W, 3H), all frames at once
    h, outs = h0, []
    for t in range(x.shape[1]):
        gh = h @ gru.weight_hh_l0.t() + gru.bias_hh_l0  # (B, 3H)
        r = torch.sigmoid(gi[:, t, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, t, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, t, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1)


class WindowStep(nn.Module):
    """One latency-controlled window: forward(window (B, W, H), window_lens (B,),
    rnn_hidden (B, N, H)) -> (encoder_out (B, C, D), new_rnn_hidden (B, N, H)).
    ``LatencyControlledBiGRU.window``, the first C = chunk outputs kept; ``unroll``: the
    GRUs as :func:`gru_unrolled` (same function, quantisable MatMuls)."""

    def __init__(self, rnn: LatencyControlledBiGRU, unroll: bool = False) -> None:
        super().__init__()
        self.rnn, self.unroll = rnn, unroll

    def forward(self, window, window_lens, rnn_hidden):
        if not self.unroll:
            out, hidden = self.rnn.window(window, window_lens, rnn_hidden)
            return out[:, :self.rnn.chunk], hidden
        rnn = self.rnn
        carry_at = torch.minimum(window_lens, torch.full_like(window_lens, rnn.chunk))
        h, states = window, []
        for i, (fwd, bwd) in enumerate(zip(rnn.forward_layers, rnn.backward_layers)):
            f = gru_unrolled(fwd, h, rnn_hidden[:, i])
            states.append(last_valid(f, carry_at, rnn_hidden[:, i]))
            b = gru_unrolled(bwd, reverse_padded(h, window_lens), torch.zeros_like(rnn_hidden[:, i]))
            h = torch.cat([f, reverse_padded(b, window_lens)], dim=-1)
        return h[:, :rnn.chunk], torch.stack(states, 1)


class DecoderStep(nn.Module):
    """One prediction-network step: tokens (N,) int64, *state -> (decoder_proj (N, Dj),
    *new_state)."""

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, tokens, *state):
        dec, new = self.head.step(tokens, tuple(state))
        return (self.head.project_dec(dec),) + tuple(new)


class Joiner(nn.Module):
    """encoder_out (N, D), decoder_proj (N, Dj) -> log_probs (N, V)."""

    def __init__(self, head: TransducerHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, encoder_out, decoder_proj):
        logits = self.head.join_projected(self.head.project_enc(encoder_out), decoder_proj)
        return logits.log_softmax(dim=-1)


class CTCProjection(nn.Module):
    def __init__(self, head: CTCHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, encoder_out):
        return self.head(encoder_out)


def metadata(model, tokenizer: Tokenizer) -> Dict[str, str]:
    """What the runtime needs besides the graphs: front end, CMVN, timing, vocabulary."""
    cfg = model.cfg
    enc = model.encoder
    heads = {}
    for name, head in model.heads.items():
        if isinstance(head, TransducerHead):
            heads[name] = {"kind": "transducer", "blank": head.blank,
                           "max_symbols_per_frame": head.config.max_symbols_per_frame}
        elif isinstance(head, CTCHead):
            heads[name] = {"kind": "ctc", "blank": 0}
    extra = {}
    if isinstance(enc, LCBiGRUEncoder):
        # frames after subsampling; window = chunk + right context, one encoder.onnx call
        extra = {"chunk_size": str(enc.rnn.chunk), "chunk_right_context": str(enc.rnn.right),
                 "window_frames": str(enc.rnn.chunk + enc.rnn.right),
                 "frame_dim": str(enc.cfg.hidden_size)}
    return {
        **extra,
        "model_type": MODEL_TYPE,
        "version": FORMAT_VERSION,
        "sample_rate": str(cfg.features.sample_rate),
        "feature_config": json.dumps(dataclasses.asdict(cfg.features)),
        "cmvn": cfg.cmvn,
        # already inside encoder.onnx; kept for runtimes that normalise themselves
        "cmvn_stats": json.dumps({"mean": model.cmvn.mean.tolist(),
                                  "inv_std": model.cmvn.inv_std.tolist()}),
        "subsampling_factor": str(enc.subsampling_factor),
        "right_context": str(enc.right_context),
        "chunk_frames": str(cfg.streaming.chunk_frames),
        "endpoint": json.dumps(dataclasses.asdict(cfg.streaming.endpoint)),
        "state_names": json.dumps(state_names(enc)),
        "encoder_kind": cfg.encoder.name,
        "cmvn_running_frames": str(cfg.cmvn_running_frames),
        "heads": json.dumps(heads),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "vocab_size": str(tokenizer.vocab_size),
    }


def check_exportable(model) -> nn.Module:
    enc = model.encoder
    if isinstance(enc, LCBiGRUEncoder):
        pass  # streams by construction (windows of chunk + right context)
    elif not isinstance(enc, ConvRNNEncoder):
        raise ExportError(f"export writes the conv_rnn or lc_bgru encoder's streaming step, "
                          f"not {model.cfg.encoder.name!r}")
    else:
        if enc.cfg.bidirectional:
            raise ExportError("a bidirectional encoder cannot stream; export needs encoder."
                              "bidirectional: false (or encoder.name: lc_bgru)")
        if enc.cfg.rnn_type != "gru":
            # the streaming LSTM packs each row's valid frames (data-dependent shapes)
            raise ExportError("export supports GRU encoder layers (encoder.rnn_type: gru), "
                              f"not {enc.cfg.rnn_type!r}")
    if model.cfg.cmvn not in ("global", "running"):
        raise ExportError(f"cmvn {model.cfg.cmvn!r} needs the whole utterance; export "
                          "supports cmvn: global or running")
    if model.cfg.features.kind != "logmel":
        raise ExportError("streaming features need features.kind: logmel")
    return enc


def _export(module: nn.Module, args: tuple, path: Path, inputs: List[str], outputs: List[str],
            dynamic: Dict[str, Dict[int, str]], opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # tracer notes on shape arithmetic and the GRU's batch size; parity over several
        # batch and chunk sizes is what the tests check
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def export_encoder(model, path: Path, opset: int = OPSET) -> Path:
    enc = check_exportable(model)
    step = EncoderStep(model.cmvn, enc).eval()
    names = step.names
    B, T = 2, 7  # odd, so the tracer sees no parity coincidence
    state = _flatten(enc.init_state(B), names)
    args = (torch.randn(B, T, model.features.dim), torch.tensor([T, T - 2]),
            torch.tensor([False, False])) + state
    inputs = ["features", "feature_lens", "final"] + [f"state.{n}" for n in names]
    outputs = ["encoder_out", "encoder_out_lens"] + [f"new_state.{n}" for n in names]
    dynamic = {"features": {0: "B", 1: "T"}, "feature_lens": {0: "B"}, "final": {0: "B"},
               "encoder_out": {0: "B", 1: "T_out"}, "encoder_out_lens": {0: "B"}}
    dynamic.update({n: {0: "B"} for n in inputs[3:] + outputs[2:]})
    _export(step, args, path, inputs, outputs, dynamic, opset)
    return path


def export_lc_bgru(model, frontend_path: Path, window_path: Path, opset: int = OPSET,
                   unroll: bool = False) -> Tuple[Path, Path]:
    """lc_bgru's two graphs (see the module's docstring): the front end and one window
    (``unroll``: its GRUs as MatMuls, :func:`gru_unrolled`)."""
    enc = model.encoder
    names = state_names(enc)
    B, T = 2, 7
    cache, frames = enc.subsampling.init_cache(B)
    args = (torch.randn(B, T, model.features.dim), torch.tensor([T, T - 2])) + cache + (frames,)
    inputs = ["features", "feature_lens"] + [f"state.{n}" for n in names]
    outputs = ["frames", "frame_lens"] + [f"new_state.{n}" for n in names]
    dynamic = {"features": {0: "B", 1: "T"}, "feature_lens": {0: "B"},
               "frames": {0: "B", 1: "T_out"}, "frame_lens": {0: "B"}}
    dynamic.update({n: {0: "B"} for n in inputs[2:] + outputs[2:]})
    _export(FrontendStep(model.cmvn, enc).eval(), args, frontend_path, inputs, outputs, dynamic,
            opset)
    W, N, H = enc.rnn.chunk + enc.rnn.right, enc.cfg.num_layers, enc.cfg.hidden_size
    args = (torch.randn(B, W, H), torch.tensor([W, W - 3]), torch.randn(B, N, H))
    _export(WindowStep(enc.rnn, unroll).eval(), args, window_path,
            ["window", "window_lens", "state.rnn_hidden"],
            ["encoder_out", "new_state.rnn_hidden"],
            {n: {0: "B"} for n in ["window", "window_lens", "state.rnn_hidden", "encoder_out",
                                   "new_state.rnn_hidden"]}, opset)
    return frontend_path, window_path


def export_ctc(head: CTCHead, enc_dim: int, path: Path, opset: int = OPSET) -> Path:
    _export(CTCProjection(head).eval(), (torch.randn(2, 5, enc_dim),), path,
            ["encoder_out"], ["log_probs"],
            {"encoder_out": {0: "B", 1: "T"}, "log_probs": {0: "B", 1: "T"}}, opset)
    return path


def export_transducer(head: TransducerHead, enc_dim: int, decoder_path: Path, joiner_path: Path,
                      opset: int = OPSET) -> Tuple[Path, Path]:
    N = 3
    state = head.initial_state(N, torch.device("cpu"))
    names = [f"state{i}" for i in range(len(state))]
    inputs = ["tokens"] + [f"state.{n}" for n in names]
    outputs = ["decoder_proj"] + [f"new_state.{n}" for n in names]
    _export(DecoderStep(head).eval(), (torch.tensor([0, 1, 2]),) + tuple(state), decoder_path,
            inputs, outputs, {n: {0: "N"} for n in inputs + outputs}, opset)
    _export(Joiner(head).eval(), (torch.randn(N, enc_dim), torch.randn(N, head.config.joiner_dim)),
            joiner_path, ["encoder_out", "decoder_proj"], ["log_probs"],
            {n: {0: "N"} for n in ["encoder_out", "decoder_proj", "log_probs"]}, opset)
    return decoder_path, joiner_path


def quantize_int8(src: Path, dst: Path) -> Path:
    """onnxruntime's dynamic quantisation: int8 weights of MatMul/Gemm/Conv (and LSTM),
    activations quantised per run. GRU nodes stay float (onnxruntime has no int8 GRU): the
    conv_rnn encoder's recurrent weights stay float; lc_bgru's window is quantised from
    its unrolled form (:func:`gru_unrolled`), so all its weights are int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    meta = read_metadata(src)
    meta["quantization"] = "onnxruntime dynamic int8 (QInt8 weights, per-run activation scales)"
    add_metadata(dst, meta)
    return dst


def export_asr(model, tokenizer: Tokenizer, out_dir: str | Path, int8: bool = True,
               opset: int = OPSET) -> Dict[str, Path]:
    """Write every graph of ``model`` (eval mode is set) to ``out_dir``; returns
    {name: path}, names like ``encoder`` and ``encoder.int8``."""
    model = model.eval()
    check_exportable(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model.encoder, LCBiGRUEncoder):
        paths = {}
        paths["frontend"], paths["encoder"] = export_lc_bgru(
            model, out / "frontend.onnx", out / "encoder.onnx", opset)
    else:
        paths = {"encoder": export_encoder(model, out / "encoder.onnx", opset)}
    n_encoder = len(paths)
    D = model.encoder.output_dim
    for name, head in model.heads.items():
        if isinstance(head, CTCHead) and "ctc" not in paths:
            paths["ctc"] = export_ctc(head, D, out / "ctc.onnx", opset)
        elif isinstance(head, TransducerHead) and "decoder" not in paths:
            paths["decoder"], paths["joiner"] = export_transducer(
                head, D, out / "decoder.onnx", out / "joiner.onnx", opset)
    if len(paths) == n_encoder:
        raise ExportError(f"no CTC or transducer head to export among {list(model.heads)}")
    meta = metadata(model, tokenizer)
    for name, path in list(paths.items()):
        add_metadata(path, dict(meta, component=name))
        onnx.checker.check_model(str(path))
    if int8:
        unrolled = None
        if isinstance(model.encoder, LCBiGRUEncoder):
            # the int8 window is quantised from the GRUs written as MatMuls (no int8 GRU op)
            unrolled = out / "encoder.unrolled.onnx"
            _, unrolled = export_lc_bgru(model, out / "frontend.unused.onnx", unrolled, opset,
                                         unroll=True)
            (out / "frontend.unused.onnx").unlink()
            add_metadata(unrolled, dict(meta, component="encoder"))
        for name, path in list(paths.items()):
            src = unrolled if (name == "encoder" and unrolled is not None) else path
            paths[f"{name}.int8"] = quantize_int8(src, out / f"{name}.int8.onnx")
        if unrolled is not None:
            unrolled.unlink()
    return paths
