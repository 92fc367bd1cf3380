"""Command line for ONNX export.

    python -m export asr --model M.pt --out DIR [--no-int8] [--chunk-frames N] [--opset N]

``asr`` writes encoder.onnx (the streaming step; for lc_bgru frontend.onnx and one
window's encoder.onnx), ctc.onnx and/or decoder.onnx +
joiner.onnx, each with its ``*.int8.onnx`` variant, and prints their paths as JSON. The
exported graphs run on ``export.asr_runtime`` (no torch). KWS models export with
``python -m kws export``.
"""
from __future__ import annotations

import argparse
import json
import sys


def cmd_asr(args: argparse.Namespace) -> int:
    from asr.checkpoint import CheckpointError, load_model
    from export.asr import ExportError, export_asr

    try:
        model, tokenizer, cfg = load_model(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.chunk_frames is not None:
        cfg.streaming.chunk_frames = args.chunk_frames  # model.cfg is the same object
    try:
        paths = export_asr(model, tokenizer, args.out, int8=not args.no_int8, opset=args.opset)
    except ExportError as exc:
        print(f"error: {args.model}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({name: str(p) for name, p in paths.items()}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("asr", help="streaming ASR checkpoint -> ONNX graphs (+ int8)")
    a.add_argument("--model", required=True, help="checkpoint (.pt) of a forward-only conv_rnn or an lc_bgru model")
    a.add_argument("--out", required=True, help="directory for the .onnx files")
    a.add_argument("--no-int8", action="store_true", help="skip the int8 variants")
    a.add_argument("--chunk-frames", type=int, default=None,
                   help="feature frames per encoder step recorded in the metadata "
                        "(default: the model's streaming.chunk_frames)")
    a.add_argument("--opset", type=int, default=17)
    a.set_defaults(func=cmd_asr)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
