"""Command line for the keyword spotter.

    python -m kws train --config C.yaml --train train.jsonl --val val.jsonl --out DIR
    torchrun --nproc_per_node=N -m kws train ...   (data parallel; continues from DIR/last.pt)
    python -m kws export --checkpoint DIR --out M.onnx [--int8 M_int8.onnx] [--streaming]
    python -m kws evaluate --model M.onnx --corpus speech_commands --data DIR
    python -m kws evaluate-detection --model M(.onnx|checkpoint) --positives DIR... --negatives DIR...
        [--noise DIR...] [--snr 5] [--out DIR]   (noise: ../shared/corpora/speech_commands/_background_noise_
        when found, else generated)
    python -m kws detect FILE|- [--model M.onnx] [--mic]
    python -m kws train-wakeword --phrase "hey jarvis" --out DIR [--minutes 45] [--negatives DIR...]

``detect`` and the two evaluations run on the edge runtime (numpy + onnxruntime);
``train`` and ``export`` need torch, imported only by them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "data" / "models" / "computer_crnn_int8.onnx")


def _print_json(obj: dict) -> None:
    print(json.dumps({k: v for k, v in obj.items() if not k.startswith("_")}), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from asr.distributed import process_group_of_the_run
    from kws.config import load_kws_config
    from kws.data import NoiseBank, list_audio, load_clips, read_manifest
    from kws.negatives import folder_files, load_negatives
    from kws.train import train

    cfg = load_kws_config(args.config, args.override)
    index = {name: i for i, name in enumerate(cfg.labels)}
    train_clips = load_clips(read_manifest(args.train), index, cfg.features.sample_rate, desc="train")
    val_clips = load_clips(read_manifest(args.val), index, cfg.features.sample_rate, desc="val") if args.val else []
    noise_files = [p for d in args.noise for p in list_audio(d)]
    noise = NoiseBank.from_files(noise_files, cfg.features.sample_rate, cfg.augment.colored_noise_prob)
    streams, skipped = [], []
    if args.negatives_stream:  # the wake-word negatives' rule: corrupt or silent files reported, skipped
        import torch

        files = [f for d in args.negatives_stream for f in folder_files(d)]
        loaded, skipped = load_negatives(files, cfg.features.sample_rate, desc="negative stream")
        streams = [torch.cat([ln.wave for ln in loaded])] if loaded else []
    with process_group_of_the_run():
        summary = train(cfg, train_clips, val_clips, args.out, noise, streams)
    if args.negatives_stream:
        summary = {**summary, "skipped_negative_stream": skipped}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        _print_json(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import os

    from kws.export import export_onnx, export_streaming_onnx, quantize_int8
    from kws.model import count_parameters
    from kws.train import load_checkpoint

    spotter = load_checkpoint(args.checkpoint)
    export = export_streaming_onnx if args.streaming else export_onnx
    path = export(spotter.crnn, spotter.cfg, args.out, frontend=spotter.frontend)
    out = {"onnx": str(path), "bytes": os.path.getsize(path), "params": count_parameters(spotter.crnn),
           "graph": "streaming_step" if args.streaming else "window"}
    if args.int8:
        q = quantize_int8(path, args.int8)
        out.update({"int8": str(q), "int8_bytes": os.path.getsize(q)})
    _print_json(out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kws.edge import KWSModel
    from kws.evaluate import evaluate_commands

    if args.corpus != "speech_commands":
        raise SystemExit(f"unknown corpus {args.corpus!r} (supported: speech_commands)")
    model = KWSModel(args.model, num_threads=args.threads)
    rep = evaluate_commands(model, args.data, split=args.split, plot=args.plot, shifts_ms=args.shifts_ms)
    rep["shifts_ms"] = args.shifts_ms
    if not args.confusion:
        rep.pop("confusion", None)
    rep["model"] = args.model
    _print_json(rep)
    return 0


def cmd_evaluate_detection(args: argparse.Namespace) -> int:
    from kws.evaluate import DetectionEvalConfig, default_noise_dirs, detection_report

    model = _load_edge_model(args.model, args.threads, args.out)
    noise = default_noise_dirs() if args.noise is None else args.noise
    cfg = DetectionEvalConfig(snrs=tuple(args.snr), noise_dirs=tuple(noise), seed=args.seed,
                              context_s=args.context_s, min_hours_factor=args.min_hours_factor,
                              mode=args.mode)
    res = detection_report(model, args.positives, args.negatives, cfg, out_dir=args.out or None)
    res["model"] = args.model
    _print_json(res)
    return 0


def _load_edge_model(path: str, threads: int, out: str = ""):
    """An ONNX file as is; a checkpoint (folder or .pt) exported to ONNX first (needs torch),
    into ``out`` when given, else a temporary folder."""
    from kws.edge import KWSModel

    p = Path(path)
    if p.suffix == ".onnx":
        return KWSModel(path, num_threads=threads)
    if not (p.is_dir() or p.suffix == ".pt"):
        raise ValueError(f"{path}: expected an .onnx model or a checkpoint (folder or .pt)")
    import tempfile

    from kws.export import export_onnx, export_streaming_onnx
    from kws.train import load_checkpoint

    spotter = load_checkpoint(p)
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="kws_eval_"))
    folder.mkdir(parents=True, exist_ok=True)
    if spotter.crnn.can_stream:
        onnx_path = export_streaming_onnx(spotter.crnn, spotter.cfg, folder / "model_stream.onnx",
                                          frontend=spotter.frontend)
    else:
        onnx_path = export_onnx(spotter.crnn, spotter.cfg, folder / "model.onnx", frontend=spotter.frontend)
    return KWSModel(str(onnx_path), num_threads=threads)


def cmd_detect(args: argparse.Namespace) -> int:
    from kws.edge import KWSModel, detect_file, pcm16_chunks

    model = KWSModel(args.model, num_threads=args.threads)
    kw = {"threshold": args.threshold}
    if args.mic:
        try:
            import sounddevice as sd  # optional: live input
        except ImportError:
            raise SystemExit("--mic needs the optional 'sounddevice' package; or pipe raw PCM: "
                             "arecord -f S16_LE -r 16000 -c 1 -t raw | python -m kws detect -")
        stream = model.stream(**kw)
        hop = int(model.detector_config["hop_s"] * model.sample_rate)
        with sd.InputStream(samplerate=model.sample_rate, channels=1, dtype="float32", blocksize=hop) as mic:
            while True:
                block, _ = mic.read(hop)
                for d in stream.accept_waveform(block[:, 0]):
                    _print_json(d.as_dict())
    if args.file == "-":
        stream = model.stream(**kw)
        hop = int(model.detector_config["hop_s"] * model.sample_rate)
        for chunk in pcm16_chunks(sys.stdin.buffer, hop):
            for d in stream.accept_waveform(chunk):
                _print_json(d.as_dict())
        for d in stream.flush():
            _print_json(d.as_dict())
        return 0
    for d in detect_file(model, args.file, **kw):
        _print_json(d.as_dict())
    return 0


def cmd_train_wakeword(args: argparse.Namespace) -> int:
    from asr.config import apply_overrides
    from kws.config import wakeword_config_from_dict
    from kws.wakeword import train_wakeword

    data: dict = {"phrase": args.phrase, "minutes": args.minutes, "seed": args.seed}
    data["data"] = {"corpora": "" if args.corpora == "none" else args.corpora, "folders": args.negatives,
                    "texts": args.texts, "real_positives": args.real_positives}
    if args.voices:
        data["voices"] = args.voices
    if args.hold_out_voices:
        data["hold_out_voices"] = args.hold_out_voices
    synth = {k: v for k, v in (("positives", args.positives), ("heldout_positives", args.heldout_positives),
                               ("sentences", args.sentences), ("near_misses", args.near_misses),
                               ("cache_dir", args.cache)) if v is not None}
    data["synth"] = synth
    cfg = wakeword_config_from_dict(apply_overrides(data, args.override))
    res = train_wakeword(cfg, args.out)
    _print_json({k: res[k] for k in ("phrase", "frr_at_target_fa_per_hour", "target_fa_per_hour", "threshold",
                                     "negative_hours", "positives", "rate_observable",
                                     "frr_at_target_fa_per_hour_by_condition", "noise", "int8_bytes")}
                | {"minutes": res["minutes"]["total"], "out": args.out})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kws", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a CRNN from manifests")
    t.add_argument("--config", required=True)
    t.add_argument("--train", required=True, help="JSON-lines manifest (text = class label)")
    t.add_argument("--val", default="")
    t.add_argument("--out", required=True)
    t.add_argument("--noise", nargs="*", default=[], help="noise audio directories")
    t.add_argument("--negatives-stream", nargs="*", default=[],
                   help="negative audio directories mined for hard negatives (corrupt or silent files are "
                        "reported and skipped: skipped_negative_stream)")
    t.add_argument("-o", "--override", action="append", default=[], help="section.key=value")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="checkpoint -> ONNX (+ int8)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--int8", default="")
    e.add_argument("--streaming", action="store_true",
                   help="export the streaming step (GRU state as input/output; unidirectional models)")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate", help="N-way accuracy on a corpus layout (one JSON line)")
    v.add_argument("--model", required=True)
    v.add_argument("--corpus", default="speech_commands")
    v.add_argument("--data", required=True)
    v.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                   help="keep only this split: with the release's testing_list.txt / "
                        "validation_list.txt (full v0.02 layout) the clips they list (train: the "
                        "rest); otherwise the speakers kws.layout.hash_split puts in it (20%% test: "
                        "the shipped model's held-out speakers of the test-set layout, so a test set "
                        "of new speakers keeps about a fifth; use all for every clip). The JSON's "
                        "split_rule and clips_in_folder say which and how many of how many")
    v.add_argument("--plot", default="", help="confusion matrix PNG")
    v.add_argument("--shifts-ms", type=float, nargs="+", default=[0.0],
                   help="average posteriors over these clip shifts (test-time option; default one window)")
    v.add_argument("--confusion", action="store_true", help="include the confusion matrix")
    v.add_argument("--threads", type=int, default=1)
    v.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("evaluate-detection", help="FRR at 0.5 / 1 false alarms per hour, clean and noisy "
                       "(one JSON line)")
    d.add_argument("--model", required=True, help="an .onnx model or a checkpoint (folder or model.pt)")
    d.add_argument("--positives", nargs="+", required=True, help="folders of keyword clips (recursive)")
    d.add_argument("--negatives", nargs="+", required=True,
                   help="folders of audio without the keyword; each streamed as one continuous stream")
    d.add_argument("--snr", type=float, nargs="*", default=[5.0],
                   help="noisy conditions beside clean, dB (default 5; none: clean only)")
    d.add_argument("--noise", nargs="*", default=None,
                   help="real noise folders for the --snr conditions (default: Speech Commands "
                        "_background_noise_ under ../shared/corpora beside the repository or the working "
                        "directory, when found; if none is found, or '--noise' is given with no folder, "
                        "generated white/pink/brown noise, and the JSON says \"noise\": \"generated\")")
    d.add_argument("--out", default="", help="folder for det.png and detection.json")
    d.add_argument("--mode", default="auto", choices=["auto", "windowed", "streaming"],
                   help="windowed: the model on the last 1 s every hop; streaming: recurrent state "
                        "carried from hop to hop (models exported with --streaming); auto: streaming "
                        "when the model can; the JSON's mode is the one used, mode_requested this")
    d.add_argument("--context-s", type=float, default=1.0, help="negative audio streamed before each positive")
    d.add_argument("--min-hours-factor", type=float, default=1.5,
                   help="report FRR at r FA/h only with >= k / r hours of negatives "
                        "(default 1.5: 0.5 FA/h needs 3 h; 3 is the rule of three)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1)
    d.set_defaults(func=cmd_evaluate_detection)

    w = sub.add_parser("train-wakeword", help="a detector for any phrase, from synthetic speech")
    w.add_argument("--phrase", required=True)
    w.add_argument("--out", required=True, help="writes model.onnx, model_int8.onnx, config.yaml, results.json, "
                   "det.png and detection.json (held-out evaluation, clean and 5 dB SNR)")
    w.add_argument("--minutes", type=float, default=45.0, help="budget for the whole run")
    w.add_argument("--negatives", nargs="*", default=[], help="more folders of negative audio")
    w.add_argument("--real-positives", nargs="*", default=[],
                   help="folders of real recordings of the phrase (SHA-1 of the file name: 40%% held out)")
    w.add_argument("--corpora", default="../shared/corpora", help="shared corpora root, or 'none'")
    w.add_argument("--texts", default="", help="id|raw|normalized sentences (default: <corpora>/texts/...)")
    w.add_argument("--voices", nargs="*", default=[], help="voice ids (default: every installed voice)")
    w.add_argument("--hold-out-voices", nargs="*", default=[],
                   help="voice ids or families held out for evaluation (default: kws.voices.DEFAULT_HOLD_OUT)")
    w.add_argument("--positives", type=int, default=None, help="training renderings of the phrase")
    w.add_argument("--heldout-positives", type=int, default=None)
    w.add_argument("--sentences", type=int, default=None)
    w.add_argument("--near-misses", type=int, default=None)
    w.add_argument("--cache", default=None, help="synthesis cache folder (default <out>/synth_cache)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("-o", "--override", action="append", default=[], help="section.key=value, e.g. kws.train.lr=1e-3")
    w.set_defaults(func=cmd_train_wakeword)

    s = sub.add_parser("detect", help="stream a file, or raw 16-bit PCM on stdin ('-')")
    s.add_argument("file", nargs="?", default="-")
    s.add_argument("--model", default=DEFAULT_MODEL)
    s.add_argument("--threshold", type=float, default=None)
    s.add_argument("--mic", action="store_true", help="live microphone (needs sounddevice)")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(func=cmd_detect)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from asr.process_exit import exit_command

    exit_command(main())
