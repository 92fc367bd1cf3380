"""Speech Commands 12-class recipe: prepare -> synthesize -> train -> export -> evaluate.

    python -m recipes.speech_commands.run --corpus ../shared/corpora/speech_commands \
        --out exp/speech_commands --models data/models

Data (all from disk, nothing downloaded):
- the corpus in the v0.02 test-set layout, split by speaker (SHA-1 of the speaker id):
  20% test, 10% validation, 70% training; the held-out test speakers are also written
  as a public layout (symlinks) under ``<out>/test_layout`` for ``python -m kws evaluate``;
- synthetic clips of the 10 words and of other words (``_unknown_``) from espeak-ng,
  flite and festival voices (``--tts-per-word``);
- extra ``_unknown_`` speech from FSDD digits and Mycroft not-wake-words when present;
- noise for mixing from the training speakers' ``_silence_`` clips plus generated noise.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import List

import torch

from kws.data import (SPEECH_COMMANDS_WORDS, hash_split, list_audio,
                      manifest_entry, read_manifest, scan_speech_commands, write_manifest)

log = logging.getLogger("recipes.speech_commands")
HERE = Path(__file__).resolve().parent
OTHER_WORDS = ["backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward", "four",
               "happy", "house", "learn", "marvin", "nine", "one", "seven", "sheila", "six", "three",
               "tree", "two", "visual", "wow", "zero", "yet", "note", "cup", "town", "light", "write",
               "own", "of", "top", "though", "yellow", "nope", "lift", "dawn", "goal"]


def prepare(corpus_dir: str | Path, out_dir: str | Path, val_percent: float = 10.0,
            test_percent: float = 20.0, extra_unknown: List[str | Path] = ()) -> dict:
    """Write ``train/val/test.jsonl`` (real clips, split by speaker) and the held-out
    layouts ``test_layout/`` and ``val_layout/`` (symlinks). Returns counts."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    items = scan_speech_commands(corpus_dir)
    splits = {"train": [], "val": [], "test": []}
    for path, label, speaker in items:
        split = hash_split(speaker, val_percent, test_percent)
        splits[split].append(manifest_entry(path, label, speaker, "real", split))
    for split in ("val", "test"):
        layout = out_dir / f"{split}_layout"
        if layout.exists():
            shutil.rmtree(layout)
        for e in splits[split]:
            if not e:
                continue
            src = Path(e["audio"]).resolve()
            dst = layout / Path(e["audio"]).parent.name / Path(e["audio"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    counts = {s: write_manifest(v, out_dir / f"{s}.jsonl") for s, v in splits.items()}
    extra = []
    for d in extra_unknown:
        if Path(d).exists():
            extra += [manifest_entry(p, "_unknown_", Path(p).stem.split("_")[1] if "_" in Path(p).stem
                                     else "", "real", "train", origin=str(d)) for p in list_audio(d)]
    counts["extra_unknown"] = write_manifest(extra, out_dir / "extra_unknown.jsonl")
    counts["speakers"] = {s: len({e["speaker"] for e in v if e}) for s, v in splits.items()}
    noise = [e["audio"] for e in splits["train"] if e and e["text"] == "_silence_"]
    (out_dir / "noise_files.txt").write_text("\n".join(noise) + "\n")
    return counts


def ljspeech_unknown(lj_dir: str | Path, n: int, label: int, seconds: float = 2.0,
                     sample_rate: int = 16000, seed: int = 0) -> list:
    """``n`` segments of ``seconds`` of real running speech from LJSpeech as ``_unknown_``
    clips without a focus (training draws a random 1 s crop of each, every time). Only the
    files that the wake-word recipe trains on are used (its validation and held-out LJSpeech
    files stay unseen by every shipped KWS model)."""
    from kws.data import Clip, load_audio

    files = [p for p in list_audio(lj_dir) if hash_split(p.stem, 15.0, 45.0) == "train"]
    seg = int(seconds * sample_rate)
    pieces = []
    for p in files:
        wave = load_audio(str(p), sample_rate)
        for k in range(wave.numel() // seg):
            pieces.append((str(p), k, wave[k * seg:(k + 1) * seg].clone()))
    random.Random(seed).shuffle(pieces)
    return [Clip(w, label, "real", f"{path}#{k * seconds:g}s", "ljspeech", None) for path, k, w in pieces[:n]]


UNKNOWN_SPEECH_CORPORA = ("speechocean762", "an4", "ljspeech")  # no Speech Commands speaker in them


def speech_unknown(corpora: str | Path, n: int, label: int, window_samples: int, sample_rate: int = 16000,
                   seed: int = 0) -> list:
    """Up to ``n`` ``_unknown_`` clips of real speech by speakers outside Speech Commands
    (speechocean762, AN4, LJSpeech under ``corpora``): one per file, files taken from the
    corpora in turn. Each clip is the window with a quarter window of the file's audio on
    either side, centred on the file's speech (:func:`kws.data.speech_region`, which is
    also the clip's focus); utterances whose transcript holds one of the ten command words
    are left out, and so are the speakers the wake-word recipe holds out
    (:func:`kws.negatives.split_held_out`, 50%), which no shipped KWS model hears."""
    from kws.data import Clip, speech_region
    from kws.negatives import corpus_files, load_negatives, split_held_out

    commands = set(SPEECH_COMMANDS_WORDS)
    files, _ = split_held_out(corpus_files(corpora, UNKNOWN_SPEECH_CORPORA), 50.0)
    files = [f for f in files if not commands & set(re.findall(r"[a-z]+", f.text.lower()))]
    rng = random.Random(seed)
    by_corpus = {}
    for f in files:
        by_corpus.setdefault(f.corpus, []).append(f)
    for group in by_corpus.values():
        rng.shuffle(group)
    order = [f for group in itertools.zip_longest(*by_corpus.values()) for f in group if f is not None]
    margin = window_samples // 4
    length = window_samples + 2 * margin
    clips = []
    while order and len(clips) < n:  # a file that cannot be read is reported and skipped
        batch, order = order[:n - len(clips)], order[n - len(clips):]
        loaded, _ = load_negatives(batch, sample_rate, seed=seed, desc="unknown speech")
        for ln in loaded:
            f0, f1 = speech_region(ln.wave, sample_rate)
            start = (f0 + f1) // 2 - length // 2
            seg = torch.zeros(length)
            a, b = max(start, 0), min(start + length, ln.wave.numel())
            seg[a - start:b - start] = ln.wave[a:b]
            focus = (max(f0 - start, 0), min(f1 - start, length))
            clips.append(Clip(seg, label, "real", f"{ln.file.path}#{max(start, 0) / sample_rate:.2f}s",
                              f"{ln.file.corpus}/{ln.file.speaker}", focus))
    return clips


def background_silence(paths: List[str | Path], n: int, label: int, window_samples: int,
                       sample_rate: int = 16000, seed: int = 0) -> list:
    """``n`` ``_silence_`` clips of real noise cropped at random places of the Speech
    Commands ``_background_noise_`` recordings (``paths``, taken in turn): the window with
    a quarter window either side, no focus (training crops the window anywhere in it)."""
    from kws.data import Clip, load_audio

    waves = [(str(p), load_audio(p, sample_rate)) for p in paths]
    length = window_samples + 2 * (window_samples // 4)
    short = [p for p, w in waves if w.numel() < length]
    if short:
        raise ValueError(f"background noise shorter than {length} samples: {short}")
    rng = random.Random(seed)
    clips = []
    for k in range(n):
        path, wave = waves[k % len(waves)]
        start = rng.randrange(wave.numel() - length + 1)
        clips.append(Clip(wave[start:start + length].clone(), label, "real",
                          f"{path}#{start / sample_rate:.2f}s", "", None))
    return clips


def synthesize_words(out_dir: str | Path, per_word: int, per_other: int, seed: int = 0, jobs: int = 2) -> int:
    from kws.synth import sample_voices, synthesize_many

    out_dir = Path(out_dir)
    items = []
    for i, w in enumerate(SPEECH_COMMANDS_WORDS):
        items += [(w, v) for v in sample_voices(per_word, seed=seed * 1000 + i)]
    for i, w in enumerate(OTHER_WORDS):
        items += [(w, v) for v in sample_voices(per_other, seed=seed * 1000 + 100 + i)]
    done = synthesize_many(items, out_dir / "synth", jobs=jobs)
    entries = [manifest_entry(p, text if text in SPEECH_COMMANDS_WORDS else "_unknown_",
                              f"tts:{v.engine}:{v.voice}", "synthetic", "train", word=text)
               for text, v, p in done]
    return write_manifest(entries, out_dir / "synth.jsonl")


def training_data(cfg, out: Path, shared: Path, extra_unknown: int = 400, lj_unknown: int = 0,
                  unknown_speech: int = 0, background_noise: int = 0, command_words: int = 0):
    """The prepared data in memory, as the train stage uses it: (training clips, validation
    clips, noise bank). Training = the training speakers' real clips, ``extra_unknown``
    FSDD / not-wake-word clips and the synthetic clips (and ``lj_unknown`` LJSpeech
    segments, ``unknown_speech`` windows of other corpora's speech as ``_unknown_``
    (:func:`speech_unknown`), ``background_noise`` ``_silence_`` crops of the
    ``_background_noise_`` recordings, which then also join the noise bank, and
    ``command_words`` command words cut from other corpora's utterances,
    :func:`recipes.speech_commands.word_cuts.command_words`); no pitch
    variants yet (:func:`kws.data.add_pitch_variants`)."""
    from kws.data import NoiseBank, load_clips
    from kws.negatives import noise_files as background_files

    index = {n: i for i, n in enumerate(cfg.labels)}
    rng = random.Random(0)
    train_entries = read_manifest(out / "train.jsonl")
    extra = read_manifest(out / "extra_unknown.jsonl")
    rng.shuffle(extra)
    train_entries += extra[:extra_unknown]
    if (out / "synth.jsonl").exists():
        train_entries += read_manifest(out / "synth.jsonl")
    clips = load_clips(train_entries, index, cfg.features.sample_rate, desc="train clips")
    val = load_clips(read_manifest(out / "val.jsonl"), index, cfg.features.sample_rate, desc="val clips")
    for c in clips + val:  # silence and whole-clip unknowns: no word to keep in the window
        if cfg.labels[c.label] == "_silence_":
            c.focus = None
    if lj_unknown > 0:
        lj = ljspeech_unknown(shared / "ljspeech" / "wavs", lj_unknown, index["_unknown_"],
                              sample_rate=cfg.features.sample_rate)
        log.info("%d LJSpeech segments as _unknown_", len(lj))
        clips += lj
    if unknown_speech > 0:
        speech = speech_unknown(shared, unknown_speech, index["_unknown_"], cfg.window_samples,
                                cfg.features.sample_rate)
        log.info("%d windows of other corpora's speech as _unknown_", len(speech))
        clips += speech
    if command_words > 0:
        from recipes.speech_commands.word_cuts import command_words as cut_command_words

        words = cut_command_words(shared, command_words, index, cfg.window_samples, cfg.features.sample_rate)
        log.info("%d command words of other corpora's speakers", len(words))
        clips += words
    noise_files = (out / "noise_files.txt").read_text().split()
    if background_noise > 0:
        recordings = background_files(shared)
        if not recordings:
            raise ValueError(f"{shared / 'speech_commands' / '_background_noise_'}: no recordings "
                             "for --background-noise")
        clips += background_silence(recordings, background_noise, index["_silence_"], cfg.window_samples,
                                    cfg.features.sample_rate)
        noise_files += recordings
    noise = NoiseBank.from_files(noise_files, cfg.features.sample_rate, cfg.augment.colored_noise_prob)
    return clips, val, noise


def run(args: argparse.Namespace) -> dict:
    import torch

    from kws.config import load_kws_config
    from kws.data import Clip, add_pitch_variants
    from kws.edge import KWSModel
    from kws.evaluate import evaluate_commands
    from kws.export import export_onnx, quantize_int8
    from kws.model import count_parameters
    from kws.train import load_checkpoint, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_kws_config(args.config, args.override)
    shared = Path(args.corpus).resolve().parent
    cfg.data.corpus_dir = str(args.corpus)
    cfg.data.prepared_dir = str(out)
    cfg.data.options = {"tts_per_word": args.tts_per_word, "tts_per_other": args.tts_per_other,
                        "val_percent": 10.0, "test_percent": 20.0}
    summary = {}
    if "prepare" in args.stages:
        extra = [shared / "fsdd" / "recordings", shared / "mycroft_precise" / "not-wake-words" / "en"]
        summary["prepare"] = prepare(args.corpus, out, extra_unknown=extra)
        print(json.dumps({"prepare": summary["prepare"]}), flush=True)
    if "synth" in args.stages:
        summary["synth"] = synthesize_words(out, args.tts_per_word, args.tts_per_other, jobs=args.jobs)
        print(json.dumps({"synth": summary["synth"]}), flush=True)
    ckpt = out / args.checkpoint
    if "train" in args.stages:
        torch.set_num_threads(cfg.train.num_threads)
        clips, val, noise = training_data(cfg, out, shared, args.extra_unknown, args.lj_unknown,
                                          args.unknown_speech, args.background_noise, args.command_words)
        add_pitch_variants(clips, cfg.augment.pitch_semitones, cfg.features.sample_rate)
        if args.train_on_val:  # final model: the validation speakers join training (test stays out)
            extra_val = [Clip(c.wave, c.label, c.source, c.path, c.speaker, c.focus) for c in val]
            add_pitch_variants(extra_val, cfg.augment.pitch_semitones, cfg.features.sample_rate)
            clips += extra_val
            val = []
        summary["train"] = train(cfg, clips, val, ckpt, noise)
    name = args.name
    models = Path(args.models)
    fp32, int8 = models / f"{name}.onnx", models / f"{name}_int8.onnx"
    if "export" in args.stages:
        spotter = load_checkpoint(ckpt)
        export_onnx(spotter.crnn, spotter.cfg, fp32, frontend=spotter.frontend)
        quantize_int8(fp32, int8)
        summary["export"] = {"params": count_parameters(spotter.crnn), "fp32_bytes": fp32.stat().st_size,
                             "int8_bytes": int8.stat().st_size}
        print(json.dumps({"export": summary["export"]}), flush=True)
    if "evaluate" in args.stages:
        res = {}
        for tag, path in (("fp32", fp32), ("int8", int8)):
            m = KWSModel(str(path))
            for split in ("test",) if args.train_on_val else ("val", "test"):
                rep = evaluate_commands(m, str(out / f"{split}_layout"),
                                        plot=str(ckpt / f"confusion_{tag}_{split}.png"))
                res[f"{tag}_{split}"] = {k: rep[k] for k in ("accuracy", "per_class_accuracy", "n", "speakers")}
        summary["evaluate"] = res
        print(json.dumps({"evaluate": {k: (v["accuracy"], v["n"]) for k, v in res.items()}}), flush=True)
    ckpt.mkdir(parents=True, exist_ok=True)  # also when no stage trained
    with open(ckpt / "results.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The options that add real data to training (shared with crossval.py)."""
    p.add_argument("--unknown-speech", type=int, default=0,
                   help="windows of speechocean762 / AN4 / LJSpeech speech added to _unknown_ (one per file)")
    p.add_argument("--background-noise", type=int, default=0,
                   help="_silence_ crops of the _background_noise_ recordings (which also join the noise bank)")
    p.add_argument("--command-words", type=int, default=0,
                   help="up to N command words cut from speechocean762 / AN4 / LJSpeech utterances by "
                        "forced alignment (recipes/speech_commands/word_cuts.py)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="../shared/corpora/speech_commands")
    p.add_argument("--out", default="exp/speech_commands")
    p.add_argument("--models", default="data/models")
    p.add_argument("--name", default="speech_commands_crnn")
    p.add_argument("--checkpoint", default="checkpoint", help="checkpoint folder name inside --out")
    p.add_argument("--config", default=str(HERE / "conf" / "crnn.yaml"))
    p.add_argument("--stages", nargs="+", default=["prepare", "synth", "train", "export", "evaluate"])
    p.add_argument("--tts-per-word", type=int, default=120)
    p.add_argument("--tts-per-other", type=int, default=25)
    p.add_argument("--extra-unknown", type=int, default=400, help="FSDD / not-wake-word clips added to _unknown_")
    p.add_argument("--lj-unknown", type=int, default=0,
                   help="2 s segments of LJSpeech running speech added to _unknown_ (random 1 s crops)")
    add_data_options(p)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--train-on-val", action=argparse.BooleanOptionalAction, default=False,
                   help="let the validation speakers join training (no validation then: the checkpoint "
                        "is the last epoch, train.epochs fixed beforehand); by default they choose the checkpoint")
    p.add_argument("-o", "--override", action="append", default=[], help="section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
