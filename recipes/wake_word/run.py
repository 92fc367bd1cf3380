"""Wake-word recipe: a CRNN that spots one keyword given as text.

    python -m recipes.wake_word.run --keyword computer --shared ../shared/corpora \
        --out exp/wake_word_computer --models data/models

Positives: the keyword synthesized with many espeak-ng / flite / festival voices, rates and
pitches, plus real recordings where the corpora have them (Mycroft Precise folders whose
name ends with the keyword, e.g. ``computer`` and ``heycomputer``; ``--positives DIR``
adds more). Negatives: real speech (LJSpeech, Mycroft not-wake-words, FSDD, Speech
Commands), synthetic near-misses (words that share the keyword's start or end, plus
``--near-miss``), synthetic sentences from the LJSpeech texts, and noise. Hard negatives
are mined from the training negative speech during training.

Held out by file (SHA-1 of the file name or speaker): part of the real positives and part
of the negative speech, written as symlink folders under ``<out>/heldout`` so that

    python -m kws evaluate-detection --model M.onnx --positives <out>/heldout/positives \
        --negatives <out>/heldout/negatives/* [--snr 5 --noise <out>/heldout/noise]

reproduces the reported numbers. For a new word, pass ``--keyword "hey marvin"``: with no
real recordings it trains from synthetic positives alone (and says so in results.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

from kws.phrases import contains_phrase, negative_sentences, sentence_vocabulary
from kws.data import hash_split, list_audio, manifest_entry, read_manifest, speaker_of, write_manifest

log = logging.getLogger("recipes.wake_word")
HERE = Path(__file__).resolve().parent
NEAR_MISS_DEFAULTS = {
    "computer": ["commuter", "compute", "competitor", "complete", "commuters", "compose", "composer",
                 "compete", "pewter", "computation", "come puter", "compote", "counter", "comfort",
                 "cute", "commuted", "campus", "compass", "dispute", "computing"],
}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def near_misses(keyword: str, texts_csv: Path | None, extra: Sequence[str] = (), limit: int = 40) -> List[str]:
    """Words that sound partly like the keyword: those sharing its first three letters or
    its last four, from the LJSpeech text vocabulary (excluding any that contain it), plus
    built-in and user-given lists."""
    kw = _norm(keyword)
    words = list(NEAR_MISS_DEFAULTS.get(kw, [])) + list(extra)
    if texts_csv is not None and texts_csv.exists():
        vocab = sentence_vocabulary(texts_csv)
        cands = [w for w in vocab if len(w) >= 4 and
                 (w[:3] == kw[:3] or (len(kw) >= 5 and w[-4:] == kw[-4:]))]
        cands.sort(key=lambda w: (-vocab[w], w))
        words += cands
    seen, out = set(), []
    for w in words:
        if not contains_phrase(w, kw) and w not in seen:
            seen.add(w)
            out.append(w)
    return out[:limit]


def training_negatives(real_train: List[dict], sc_negatives: int, fsdd_negatives: int
                       ) -> Dict[str, List[dict]]:
    """The training split's Speech Commands and FSDD clips: the ones the train stage uses
    (``sc_negatives`` / ``fsdd_negatives`` drawn with a fixed seed) and the rest, which no
    stage trains on and the evaluation adds to the held-out negatives."""
    rng = random.Random(0)
    sc = [e for e in real_train if e["meta"]["kind"] == "speech_commands"]
    rng.shuffle(sc)
    fsdd = [e for e in real_train if e["meta"]["kind"] == "fsdd"]
    rng.shuffle(fsdd)
    return {"speech_commands": sc[:sc_negatives], "fsdd": fsdd[:fsdd_negatives],
            "speech_commands_unused": sc[sc_negatives:], "fsdd_unused": fsdd[fsdd_negatives:]}


def _link_all(entries: List[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        src = Path(e["audio"]).resolve()
        dst = folder / f"{src.parent.name}__{src.name}"  # unique: Speech Commands reuses names
        if not dst.exists():
            os.symlink(src, dst)


def prepare(keyword: str, shared: Path, out: Path, positive_dirs: Sequence[str] = (),
            sc_negatives: int = 800, fsdd_negatives: int = 500) -> dict:
    """Real data by split (manifests) and the held-out folders under ``out/heldout``.

    The held-out negatives are the test split's files (speakers or files never trained
    on) plus, in ``*_train_speakers_unused`` folders, the training split's Speech Commands
    and FSDD clips that the train stage does not draw (other recordings of training
    speakers: never trained on, never used to choose anything)."""
    kw = _norm(keyword)
    mp = shared / "mycroft_precise"
    pos_dirs = [Path(d) for d in positive_dirs]
    if mp.exists():
        pos_dirs += [d / "en" for d in sorted(mp.iterdir()) if d.is_dir() and _norm(d.name).endswith(kw)
                     and (d / "en").exists()]
    entries: Dict[str, List[dict]] = {"train": [], "val": [], "test": []}

    def add(path: Path, label: str, key: str, kind: str, test: float, val: float, **meta) -> None:
        split = hash_split(key, val, test)
        e = manifest_entry(path, label, key, "real", split, kind=kind, **meta)
        if e:
            entries[split].append(e)

    for d in pos_dirs:
        for p in list_audio(d):
            add(p, keyword, p.stem, "positive", 40.0, 10.0, origin=d.parent.name)
    lj = shared / "ljspeech" / "wavs"
    for p in list_audio(lj) if lj.exists() else []:
        add(p, "_background_", p.stem, "ljspeech", 45.0, 15.0)
    nww = mp / "not-wake-words" / "en"
    for p in list_audio(nww) if nww.exists() else []:
        add(p, "_background_", p.stem, "not_wake_words", 45.0, 15.0)
    fsdd = shared / "fsdd" / "recordings"
    for p in list_audio(fsdd) if fsdd.exists() else []:
        add(p, "_background_", p.stem.split("_")[1], "fsdd", 25.0, 0.0)
    sc = shared / "speech_commands"
    if sc.exists():
        for p in list_audio(sc):
            if p.parent.name == "_background_noise_":  # long noise recordings, not speech
                continue
            kind = "noise" if p.parent.name == "_silence_" else "speech_commands"
            # the same speaker split as the Speech Commands recipe
            add(p, "_background_", speaker_of(p), kind, 20.0, 10.0)
    held = out / "heldout"
    if held.exists():
        shutil.rmtree(held)
    for split, root in (("test", held), ("val", out / "val")):
        if root.exists():
            shutil.rmtree(root)
        es = entries[split]
        _link_all([e for e in es if e["meta"]["kind"] == "positive"], root / "positives")
        for kind in ("ljspeech", "not_wake_words", "fsdd", "speech_commands"):
            _link_all([e for e in es if e["meta"]["kind"] == kind], root / "negatives" / kind)
        _link_all([e for e in es if e["meta"]["kind"] == "noise"], root / "noise")
    unused = training_negatives(entries["train"], sc_negatives, fsdd_negatives)
    for kind in ("speech_commands", "fsdd"):
        _link_all(unused[f"{kind}_unused"], held / "negatives" / f"{kind}_train_speakers_unused")
    counts = {}
    for split, es in entries.items():
        write_manifest(es, out / f"real_{split}.jsonl")
        by = {}
        for e in es:
            k = e["meta"]["kind"]
            by.setdefault(k, [0, 0.0])
            by[k][0] += 1
            by[k][1] += e["duration"] / 3600
        counts[split] = {k: {"files": v[0], "hours": round(v[1], 4)} for k, v in by.items()}
    counts["test_extra_unused_train_split"] = {
        k: {"files": len(unused[f"{k}_unused"]),
            "hours": round(sum(e["duration"] for e in unused[f"{k}_unused"]) / 3600, 4)}
        for k in ("speech_commands", "fsdd")}
    counts["positive_dirs"] = [str(d) for d in pos_dirs]
    return counts


def synthesize(keyword: str, shared: Path, out: Path, n_pos: int, n_near: int, n_sent: int,
               extra_near: Sequence[str], jobs: int, seed: int = 0) -> dict:
    from kws.synth import sample_voices, synthesize_many

    texts = shared / "texts" / "ljspeech_metadata.csv"
    misses = near_misses(keyword, texts, extra_near)
    items = [(keyword, v) for v in sample_voices(n_pos, seed=seed)]
    near = []
    for i, w in enumerate(misses):
        near += [(w, v) for v in sample_voices(n_near, seed=seed + 10 + i)]
    sents = negative_sentences(texts, keyword, n_sent, seed) if texts.exists() else []
    sent_items = [(s, v) for s, v in zip(sents, sample_voices(len(sents), seed=seed + 999))]
    done = synthesize_many(items + near + sent_items, out / "synth", jobs=jobs)
    es = []
    for text, v, p in done:
        if text == keyword:
            es.append(manifest_entry(p, keyword, f"tts:{v.engine}:{v.voice}", "synthetic", "train", kind="positive"))
        elif text in misses:
            es.append(manifest_entry(p, "_background_", f"tts:{v.engine}", "synthetic", "train",
                                     kind="near_miss", word=text))
        else:
            es.append(manifest_entry(p, "_background_", f"tts:{v.engine}", "synthetic", "train", kind="sentence"))
    write_manifest(es, out / "synth.jsonl")
    kinds = {}
    for e in es:
        if e:
            kinds[e["meta"]["kind"]] = kinds.get(e["meta"]["kind"], 0) + 1
    return {"near_misses": misses, **kinds}


def run(args: argparse.Namespace) -> dict:
    import torch

    from kws.config import load_kws_config
    from kws.data import NoiseBank, add_pitch_variants, load_clips
    from kws.edge import KWSModel
    from kws.evaluate import detection_summary, evaluate_detection
    from kws.export import export_onnx, quantize_int8
    from kws.metrics import plot_det
    from kws.model import count_parameters
    from kws.train import load_checkpoint, train

    shared = Path(args.shared)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.override) + [f"keyword={json.dumps(args.keyword)}",
                                       f"labels={json.dumps(['_background_', args.keyword])}",
                                       f"name={args.name}"]
    cfg = load_kws_config(args.config, overrides)
    cfg.data.corpus_dir = str(shared)
    cfg.data.prepared_dir = str(out)
    cfg.data.options = {"tts_positives": args.tts_positives, "tts_near_miss_per_word": args.tts_near_miss,
                        "tts_sentences": args.tts_sentences}
    summary: dict = {}
    ckpt = out / args.checkpoint
    if (ckpt / "results.json").exists():
        summary = json.loads((ckpt / "results.json").read_text())
    if "prepare" in args.stages:
        summary["prepare"] = prepare(args.keyword, shared, out, args.positives, args.sc_negatives,
                                     args.fsdd_negatives)
        print(json.dumps({"prepare": summary["prepare"]}), flush=True)
    if "synth" in args.stages:
        summary["synth"] = synthesize(args.keyword, shared, out, args.tts_positives, args.tts_near_miss,
                                      args.tts_sentences, args.near_miss, args.jobs)
        print(json.dumps({"synth": summary["synth"]}), flush=True)
    if "train" in args.stages:
        torch.set_num_threads(cfg.train.num_threads)
        index = {n: i for i, n in enumerate(cfg.labels)}
        real = read_manifest(out / "real_train.jsonl")
        synth = read_manifest(out / "synth.jsonl")
        chosen = training_negatives(real, args.sc_negatives, args.fsdd_negatives)
        keep = [e for e in real if e["meta"]["kind"] in ("positive", "ljspeech", "not_wake_words")]
        entries = keep + chosen["speech_commands"] + chosen["fsdd"] + synth
        clips = load_clips(entries, index, cfg.features.sample_rate, desc="train clips")
        kinds = {e["audio"]: e["meta"]["kind"] for e in entries}
        for c in clips:  # long speech: random crops, no single word to keep whole
            if kinds.get(c.path) in ("ljspeech", "sentence"):
                c.focus = None
        add_pitch_variants([c for c in clips if c.label == 1], cfg.augment.pitch_semitones,
                           cfg.features.sample_rate)
        val_entries = read_manifest(out / "real_val.jsonl")
        val_pos = [e for e in val_entries if e["meta"]["kind"] == "positive"]
        val_neg = [e for e in val_entries if e["meta"]["kind"] in ("not_wake_words", "speech_commands")]
        val = load_clips(val_pos + val_neg[:300], index, cfg.features.sample_rate, desc="val clips")
        noise_files = [e["audio"] for e in real if e["meta"]["kind"] == "noise"]
        noise = NoiseBank.from_files(noise_files, cfg.features.sample_rate, cfg.augment.colored_noise_prob)
        streams = [torch.cat([c.wave for c in clips if kinds.get(c.path) in args.mine_from])]
        summary["train"] = train(cfg, clips, val, ckpt, noise, streams)
        summary["train"]["real_positive_clips"] = sum(1 for e in keep if e["meta"]["kind"] == "positive")
        summary["train"]["synthetic_positive_clips"] = sum(1 for e in synth if e["meta"]["kind"] == "positive")
    models = Path(args.models)
    fp32, int8 = models / f"{args.name}.onnx", models / f"{args.name}_int8.onnx"
    if "export" in args.stages:
        spotter = load_checkpoint(ckpt)
        export_onnx(spotter.crnn, spotter.cfg, fp32, frontend=spotter.frontend)
        # operating threshold: the one meeting 0.5 false alarms/hour on the validation split
        val_negs = [str(d) for d in sorted((out / "val" / "negatives").iterdir()) if any(d.iterdir())]
        res = evaluate_detection(KWSModel(str(fp32)), [str(out / "val" / "positives")], val_negs)
        res.pop("_streams"), res.pop("_positive_max")
        thr = max(0.5, min(0.99, res["threshold_at_0.5_fa_per_hour"]))
        spotter.cfg.detector.threshold = round(thr, 4)
        export_onnx(spotter.crnn, spotter.cfg, fp32, frontend=spotter.frontend)
        quantize_int8(fp32, int8)
        summary["export"] = {"params": count_parameters(spotter.crnn), "fp32_bytes": fp32.stat().st_size,
                             "int8_bytes": int8.stat().st_size, "threshold": thr,
                             "val_negative_hours": res["negative_hours"]}
        print(json.dumps({"export": summary["export"]}), flush=True)
    if "validate" in args.stages:
        from kws.edge import KWSModel
        from kws.evaluate import noisy_validation

        res = noisy_validation(KWSModel(str(fp32)), out / "val")
        summary["validate_noisy"] = res
        print(json.dumps({"validate_noisy": {"clean": res["conditions"]["clean"], "mean_noisy": res["mean_noisy"]}}),
              flush=True)
    if "evaluate" in args.stages:
        held = out / "heldout"
        negs = [str(d) for d in sorted((held / "negatives").iterdir()) if any(d.iterdir())]
        noise = [str(held / "noise")] if (held / "noise").exists() and any((held / "noise").iterdir()) else []
        res, curves = {}, {}
        keys = ("frr_at_0.5_fa_per_hour", "frr_at_1_fa_per_hour", "negative_hours", "positives")
        for tag, path in (("fp32", fp32), ("int8", int8)):
            m = KWSModel(str(path))
            for cond, snr in (("clean", None), ("snr5", 5.0)):
                r = evaluate_detection(m, [str(held / "positives")], negs, snr_db=snr, noise_dirs=noise)
                curves[f"{tag} {cond}"] = r.pop("_curve")
                # the same figures on the test split alone (no training speaker's audio)
                sub = detection_summary(r.pop("_positive_max"), [st for st in r.pop("_streams")
                                        if not st["dir"].endswith("_unused")], m.detector_config)
                sub.pop("_curve")
                r["test_split_only"] = sub
                res[f"{tag}_{cond}"] = r
                print(json.dumps({f"{tag}_{cond}": {k: r[k] for k in keys},
                                  "test_split_only": {k: sub[k] for k in keys}}), flush=True)
        plot_det(curves, str(ckpt / "det.png"), title=f"'{args.keyword}' held-out: "
                 f"{res['fp32_clean']['negative_hours']:.2f} h negatives, {res['fp32_clean']['positives']} positives")
        summary["evaluate"] = res
        summary["evaluate_commands"] = {
            "negatives": negs, "positives": str(held / "positives"), "noise": noise}
    ckpt.mkdir(parents=True, exist_ok=True)
    with open(ckpt / "results.json", "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keyword", default="computer", help="the wake word, as text")
    p.add_argument("--shared", default="../shared/corpora")
    p.add_argument("--out", default="")
    p.add_argument("--models", default="data/models")
    p.add_argument("--name", default="", help="model file stem (default <keyword>_crnn)")
    p.add_argument("--checkpoint", default="checkpoint", help="checkpoint folder name inside --out")
    p.add_argument("--config", default=str(HERE / "conf" / "crnn.yaml"))
    p.add_argument("--positives", nargs="*", default=[], help="extra folders of real keyword recordings")
    p.add_argument("--near-miss", nargs="*", default=[], help="extra confusable words or phrases")
    p.add_argument("--stages", nargs="+", default=["prepare", "synth", "train", "export", "evaluate"],
                   help="also: validate (the validation split clean and with noise at 5 and 0 dB)")
    p.add_argument("--tts-positives", type=int, default=600)
    p.add_argument("--tts-near-miss", type=int, default=12, help="renderings per near-miss word")
    p.add_argument("--tts-sentences", type=int, default=300)
    p.add_argument("--sc-negatives", type=int, default=800)
    p.add_argument("--fsdd-negatives", type=int, default=500)
    p.add_argument("--mine-from", nargs="+", default=["ljspeech", "not_wake_words", "sentence"],
                   choices=["ljspeech", "not_wake_words", "sentence", "speech_commands", "fsdd"],
                   help="kinds of training negatives scanned for hard negatives")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("-o", "--override", action="append", default=[], help="section.key=value")
    args = p.parse_args(argv)
    slug = re.sub(r"[^a-z0-9]+", "_", args.keyword.lower()).strip("_")
    args.name = args.name or f"{slug}_crnn"
    args.out = args.out or f"exp/wake_word_{slug}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
