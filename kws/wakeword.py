"""Custom wake words from text: ``python -m kws train-wakeword --phrase "hey jarvis" --out DIR``.

Stages, all within ``WakeWordConfig.minutes``:

1. voices: every installed voice (:mod:`kws.voices`), whole families held out;
2. synthesis (cached, :mod:`kws.synth`): the phrase with the training voices, the phrase
   with the held-out voices (evaluation only), near-miss phrases (:mod:`kws.phrases`) and
   sentences of the text corpus with the training voices;
3. real negatives (:mod:`kws.negatives`): the shared corpora and ``--negatives`` folders,
   a speaker-disjoint slice held out for evaluation; Speech Commands
   ``_background_noise_`` for noise, the last part of each recording held out; real
   recordings of the phrase (``--real-positives``), split by file name like
   recipes/wake_word (:func:`split_real_positives`);
4. training (:func:`kws.train.train`): augmentation with reverberation, noise, speed,
   gain and shifts; hard-negative mining rounds over the training negative audio;
5. export (``model.onnx``, ``model_int8.onnx``) and evaluation (:func:`evaluate_heldout`):
   FRR on the held-out voices (and held-out real recordings) at the threshold that meets
   the target false-alarm rate on the held-out negatives, clean and with the held-out noise
   at ``eval_snrs`` (5 dB), written to ``results.json`` with ``config.yaml``; the DET plot
   and the detection report as ``det.png`` and ``detection.json``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from asr.audio import save_audio
from asr.config import to_dict
from kws.config import WakeWordConfig
from kws.data import Clip, NoiseBank, add_pitch_variants, load_or_skip, speech_region, write_atomically
from kws.layout import hash_split, list_audio
from kws.negatives import (LoadedNegative, NegativeFile, check_speakers_disjoint, corpus_files, folder_files,
                           load_negatives, noise_files, split_held_out)
from kws.phrases import near_miss_phrases, negative_sentences, sentence_vocabulary
from kws.synth import synthesize_many
from kws.voices import (DEFAULT_HOLD_OUT, sample_renderings, split_voices, voice_family, voice_id,
                        voice_inventory)

log = logging.getLogger(__name__)

INT8_LIMIT_BYTES = 300 * 1024


class VoiceLeakError(RuntimeError):
    """A held-out voice family reached the training data."""


def check_no_leak(training_voice_ids: Sequence[str], held_out_voice_ids: Sequence[str]) -> None:
    """Raise :class:`VoiceLeakError` if a training rendering's voice family is held out."""
    held = {voice_family(v) for v in held_out_voice_ids}
    leaked = sorted({v for v in training_voice_ids if voice_family(v) in held})
    if leaked:
        raise VoiceLeakError(f"held-out voice families in the training data: {leaked[:10]}")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_") or "phrase"


def _link(paths: Sequence[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        src = Path(p).resolve()
        dst = folder / f"{i:05d}__{src.parent.name}__{src.name}"
        if not dst.exists():
            os.symlink(src, dst)


def split_real_positives(folders: Sequence[str], test_percent: float = 40.0, val_percent: float = 10.0
                          ) -> Dict[str, List[str]]:
    """Real recordings of the phrase -> {"train", "val", "test": [paths]}: SHA-1 of each file
    name (``hash_split`` of the stem), as recipes/wake_word/run.py splits the Mycroft
    ``computer`` / ``heycomputer`` clips, so the same clips are held out there and here."""
    split: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    for d in folders:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d}: no such folder of real positives (data.real_positives)")
        files = list_audio(d)
        if not files:
            raise ValueError(f"{d}: no audio files in this folder of real positives (data.real_positives)")
        for p in files:
            split[hash_split(p.stem, val_percent, test_percent)].append(str(p))
    return split


def split_noise(paths: Sequence[str], sample_rate: int, heldout_percent: float, folder: Path
                ) -> Tuple[List[torch.Tensor], List[str]]:
    """Noise recordings cut in time: the first part of each for training, the last
    ``heldout_percent`` written as a FLAC under ``folder`` for noisy evaluation, so the
    evaluation's noise is never heard in training. Returns (training waves (N_i,), held-out files)."""
    train_waves, held_files = [], []
    for p in paths:
        if (w := load_or_skip(p, sample_rate, "noise ")) is None:
            continue
        cut = int(round(w.numel() * (1.0 - heldout_percent / 100.0)))
        train_waves.append(w[:cut])
        if heldout_percent > 0 and cut < w.numel():
            dst = folder / f"{Path(p).stem}_last{heldout_percent:g}pct.flac"
            save_audio(dst, w[cut:], sample_rate)
            held_files.append(str(dst))
    return train_waves, held_files


def _hours(negs: Sequence[LoadedNegative]) -> float:
    return round(sum(ln.seconds for ln in negs) / 3600, 4)


def _speakers(negs: Sequence[LoadedNegative]) -> int:
    return len({ln.file.speaker for ln in negs})


def _per_corpus(negs: Sequence[LoadedNegative], measure) -> Dict[str, float]:
    """``measure`` (e.g. :func:`_hours`) of each corpus's share of ``negs``."""
    corpora = sorted({ln.file.corpus for ln in negs})
    return {k: measure([ln for ln in negs if ln.file.corpus == k]) for k in corpora}


def window_for(durations_s: Sequence[float], lo: float = 1.0, hi: float = 2.0) -> float:
    """Model window: the 95th percentile of the phrase's spoken durations plus 0.2 s,
    rounded up to 0.1 s, within [lo, hi]."""
    if not durations_s:
        return lo
    d = sorted(durations_s)[min(len(durations_s) - 1, int(0.95 * len(durations_s)))]
    return min(hi, max(lo, math.ceil((d + 0.2) * 10) / 10))


# ----------------------------------------------------------------------------- evaluation
def evaluate_heldout(model_path: str | Path, positives_dir: str | Path, negative_dirs: Sequence[str],
                     target_fa_per_hour: float = 0.5, more_positives: Dict[str, str | Path] | None = None,
                     noise_dirs: Sequence[str | Path] = (), snrs: Sequence[float] = (5.0,),
                     out_dir: str | Path | None = None) -> Dict:
    """FRR on held-out positives at the threshold meeting ``target_fa_per_hour`` on the
    held-out negatives, clean and with ``noise_dirs`` mixed in at each of ``snrs`` (generated
    noise when there is none, reported as ``"noise": "generated"``), by
    :func:`kws.evaluate.detection_report` (each negative folder streamed back to back), which
    writes ``det.png`` and ``detection.json`` into ``out_dir`` when given. The clean operating
    point is at the top level; ``conditions`` holds every condition's (``clean``, ``snr_5``).
    ``more_positives`` (name -> folder): other positive sets scored against the same negative
    streams (streamed once), each under its name with the same fields."""
    from kws.edge import KWSModel
    from kws.evaluate import DetectionEvalConfig, detection_report, detection_summary, positive_scores

    model = KWSModel(str(model_path))
    cfg = DetectionEvalConfig(snrs=tuple(snrs), noise_dirs=tuple(str(d) for d in noise_dirs))
    raw: Dict[str, Dict] = {}
    report = detection_report(model, [str(positives_dir)], list(negative_dirs), cfg,
                              out_dir=str(out_dir) if out_dir else None, raw=raw)

    conditions = {name: _at_target(report["conditions"][name], r["_curve"], r["_positive_max"],
                                   report["skipped"], target_fa_per_hour)
                  for name, r in raw.items()}
    out = {**conditions["clean"], "conditions": conditions, "noise": report["noise"], "snrs_db": list(cfg.snrs)}
    if out_dir:
        out.update(det_plot=report["det_plot"], detection_json=str(Path(out_dir) / "detection.json"))
    for name, folder in (more_positives or {}).items():
        skipped: Dict[str, str] = {}
        more_conditions = {}
        for cond, r in raw.items():
            snr = report["conditions"][cond]["snr_db"]
            pos_max = positive_scores(model, [str(folder)], list(negative_dirs), skipped, snr, cfg)
            summary = detection_summary(pos_max, r["_streams"], model.detector_config, cfg.min_hours_factor)
            curve = summary.pop("_curve")
            more_conditions[cond] = _at_target(summary, curve, pos_max,
                                               [{"file": f, "reason": why} for f, why in skipped.items()],
                                               target_fa_per_hour)
        out[name] = {**more_conditions["clean"], "conditions": more_conditions}
    return out


def observability(hours: float, rate: float) -> Dict:
    """Whether ``hours`` of held-out negatives can show ``rate`` false alarms per hour, by
    the reporting rule of ``python -m kws evaluate-detection`` (:func:`kws.evaluate.rate_unobservable`,
    default factor: 0.5 FA/h needs 3 h): ``rate_observable``, ``hours_needed`` and a ``note``
    saying what the figure is when the rate is not observable."""
    from kws.evaluate import hours_needed, rate_unobservable

    why = rate_unobservable(hours, rate)
    allowed = int(math.floor(rate * hours + 1e-9))
    return {"rate_observable": not why, "hours_needed": hours_needed(rate),
            "note": "" if not why else
            f"{rate:g} FA/h cannot be observed on the held-out negatives: {why}; the figure is the FRR "
            f"at the threshold allowing {allowed} false alarm(s) in those hours, not a measured rate"}


def _at_target(r: Dict, curve, pos_max: Sequence[float], skipped: List[Dict],
               target_fa_per_hour: float) -> Dict:
    """The operating point at the target rate of one evaluation: ``r`` its
    :func:`kws.evaluate.detection_summary`, ``curve`` its DET curve, ``pos_max`` the best
    score of each positive, ``skipped`` the files left out; with its :func:`observability`."""
    from kws.metrics import frr_at_fa

    at = frr_at_fa(curve, target_fa_per_hour)
    hours = r["negative_hours"]
    out = {
        "frr": at["frr"], "threshold": at["threshold"], "false_alarms_at_threshold": at["false_alarms"],
        "target_fa_per_hour": target_fa_per_hour, "negative_hours": hours,
        "negative_files": r["negative_files"], "positives": r["positives"],
        "missed": int(round(at["frr"] * r["positives"])),
        "frr_at_1_fa_per_hour": r["frr_at_1_fa_per_hour"],
        "mean_positive_score": float(sum(pos_max) / max(1, len(pos_max))),
        "skipped": skipped,
        **observability(hours, target_fa_per_hour),
    }
    return out


# ----------------------------------------------------------------------------- the run
def train_wakeword(cfg: WakeWordConfig, out: str | Path) -> Dict:
    """Run every stage (see the module doc) into ``out``; returns the results dict."""
    from kws.export import add_metadata, export_onnx, export_streaming_onnx, quantize_int8, read_metadata
    from kws.model import count_parameters
    from kws.train import load_checkpoint, train

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phrase = cfg.phrase.strip()
    kcfg = cfg.kws
    kcfg.keyword = phrase
    kcfg.labels = ["_background_", phrase]
    kcfg.name = f"{_slug(phrase)}_crnn"
    sr = kcfg.features.sample_rate
    torch.set_num_threads(kcfg.train.num_threads)
    minutes = lambda: (time.time() - t0) / 60  # noqa: E731
    real_split = split_real_positives(cfg.data.real_positives, cfg.data.real_positive_test_percent,
                                      cfg.data.real_positive_val_percent)
    if cfg.data.real_positives and not (real_split["train"] and real_split["test"]):
        raise ValueError(f"{cfg.data.real_positives}: real positives split into "
                         f"{len(real_split['train'])} for training and {len(real_split['test'])} held out: "
                         "need some of each")

    # 1. voices
    voices = list(cfg.voices) or voice_inventory()
    if not voices:
        raise RuntimeError("no speech synthesizer found: install espeak-ng, flite or festival")
    hold = list(cfg.hold_out_voices) or [h for h in DEFAULT_HOLD_OUT
                                         if any(voice_family(v) == h for v in voices)]
    train_voices, held_voices = split_voices(voices, hold)
    check_no_leak(train_voices, held_voices)

    # 2. synthesis
    corpora = Path(cfg.data.corpora) if cfg.data.corpora else None
    texts = Path(cfg.data.texts) if cfg.data.texts else (
        corpora / "texts" / "ljspeech_metadata.csv" if corpora else None)
    if texts is not None and not texts.is_file():
        if cfg.data.texts:
            raise FileNotFoundError(f"{texts}: no such text file")
        log.warning("%s: no text corpus; no synthetic sentences, near misses from the phrase alone", texts)
        texts = None
    vocab = sentence_vocabulary(texts) if texts else None
    misses = near_miss_phrases(phrase, cfg.synth.near_misses, vocab, seed=cfg.seed)
    sents = negative_sentences(texts, phrase, cfg.synth.sentences, seed=cfg.seed) if texts else []
    sc = cfg.synth
    render = lambda vs, n, r: sample_renderings(vs, n, r, sc.rate_range, sc.pitch_range,  # noqa: E731
                                                sc.engine_shares)
    pos_items = [(phrase, v) for v in render(train_voices, sc.positives, random.Random(cfg.seed + 1))]
    held_items = [(phrase, v) for v in render(held_voices, sc.heldout_positives, random.Random(cfg.seed + 2))]
    near_items = [(m, v) for i, m in enumerate(misses)
                  for v in render(train_voices, sc.near_miss_renderings, random.Random(cfg.seed + 100 + i))]
    sent_items = list(zip(sents, render(train_voices, len(sents), random.Random(cfg.seed + 3))))
    check_no_leak([voice_id(v) for _, v in pos_items + near_items + sent_items], held_voices)
    cache = Path(sc.cache_dir) if sc.cache_dir else out / "synth_cache"
    done = synthesize_many(pos_items + held_items + near_items + sent_items, cache, jobs=sc.jobs,
                           desc="synthesizing")
    n_train_pos, n_held = len(pos_items), len(held_items)
    by_item = {(t, v): p for t, v, p in done}
    pos = [(v, by_item[(t, v)]) for t, v in pos_items if (t, v) in by_item]
    held = [(v, by_item[(t, v)]) for t, v in held_items if (t, v) in by_item]
    near = [(t, v, by_item[(t, v)]) for t, v in near_items if (t, v) in by_item]
    sent = [(t, v, by_item[(t, v)]) for t, v in sent_items if (t, v) in by_item]
    if not pos or not held:
        raise RuntimeError(f"synthesis gave {len(pos)} training and {len(held)} held-out positives")
    synth_minutes = minutes()
    print(json.dumps({"stage": "synthesis", "minutes": round(synth_minutes, 2), "positives": len(pos),
                      "heldout_positives": len(held), "near_miss_clips": len(near),
                      "sentence_clips": len(sent)}), flush=True)

    # 3. real negatives
    files: List[NegativeFile] = []
    if corpora is not None:
        files += corpus_files(corpora, cfg.data.corpus_names, phrase)
    for d in cfg.data.folders:
        files += folder_files(d)
    if not files:
        raise ValueError("no negative audio: give --corpora or --negatives DIR")
    train_files, held_files = split_held_out(files, cfg.data.held_out_percent)
    check_speakers_disjoint(train_files, held_files)
    if not train_files or not held_files:
        raise ValueError(f"{len(files)} negative files split into {len(train_files)} for training and "
                         f"{len(held_files)} held out: need some of each")
    train_negs, skipped_train = load_negatives(train_files, sr, cfg.data.max_train_hours, cfg.seed,
                                               desc="training negatives")
    held_negs, skipped_held = load_negatives(held_files, sr, cfg.data.max_heldout_hours, cfg.seed,
                                             keep_audio=False, desc="held-out negatives (headers)")
    if not train_negs or not held_negs:
        raise ValueError(f"usable negative files: {len(train_negs)} for training, {len(held_negs)} held "
                         f"out (skipped: {skipped_train + skipped_held})")
    held_dir = out / "heldout"
    if held_dir.exists():
        import shutil

        shutil.rmtree(held_dir)
    _link([str(p) for _, p in held], held_dir / "positives")
    if real_split["test"]:
        _link(real_split["test"], held_dir / "positives_real")
    by_corpus: Dict[str, List[str]] = {}
    for ln in held_negs:
        by_corpus.setdefault(ln.file.corpus, []).append(ln.file.path)
    for name, paths in by_corpus.items():
        _link(paths, held_dir / "negatives" / name)
    noise_waves, heldout_noise = split_noise(noise_files(corpora) if corpora else [], sr,
                                             cfg.data.heldout_noise_percent, held_dir / "noise")
    noise = NoiseBank(noise_waves, kcfg.augment.colored_noise_prob)

    # 4. training clips
    clips: List[Clip] = []
    durations = []
    for v, p in pos:
        if (w := load_or_skip(p, sr)) is None:
            continue
        f = speech_region(w, sr)
        durations.append((f[1] - f[0]) / sr)
        clips.append(Clip(w, 1, "synthetic", str(p), voice_id(v), f))
    kcfg.window_s = window_for(durations)
    real_pos: List[Clip] = []
    for p in real_split["train"]:
        if (w := load_or_skip(p, sr, "real positive ")) is None:
            continue
        real_pos.append(Clip(w, 1, "real", p, f"real:{Path(p).stem}", speech_region(w, sr)))
    add_pitch_variants(real_pos, kcfg.augment.pitch_semitones, sr)
    clips += real_pos
    for t, v, p in near + sent:
        if (w := load_or_skip(p, sr)) is None:
            continue
        focus = speech_region(w, sr) if w.numel() <= kcfg.window_samples else None
        clips.append(Clip(w, 0, "synthetic", str(p), voice_id(v), focus))
    for ln in train_negs:
        w = ln.wave
        focus = speech_region(w, sr) if w.numel() <= 1.5 * kcfg.window_samples else None
        clips.append(Clip(w, 0, "real", ln.file.path, ln.file.speaker, focus))
    check_no_leak([c.speaker for c in clips if c.source == "synthetic"], held_voices)
    write_atomically(out / "training_data.json", lambda f: f.write(json.dumps({
        "voices_train": train_voices, "voices_held_out": held_voices,
        "held_out_families": sorted({voice_family(v) for v in held_voices}),
        "positives": [[voice_id(v), str(p)] for v, p in pos],
        "heldout_positives": [[voice_id(v), str(p)] for v, p in held],
        "near_misses": misses, "near_miss_clips": [[t, voice_id(v)] for t, v, _ in near],
        "sentence_clips": len(sent), "real_negative_files": [ln.file.path for ln in train_negs],
        "heldout_negative_files": [ln.file.path for ln in held_negs],
        "real_positives_train": [c.path for c in real_pos], "real_positives_unused_val": real_split["val"],
        "real_positives_heldout": real_split["test"], "heldout_noise_files": heldout_noise,
    }, indent=1).encode()))
    streams = [torch.cat([c.wave for c in clips if c.label == 0 and c.focus is None])]
    # the window phase gets what the stream phase (kws.stream_train) and the evaluation leave
    budget = cfg.minutes - cfg.eval_reserve_minutes - kcfg.train.stream_minutes - minutes()
    if budget < 0.5:
        raise RuntimeError(f"{minutes():.1f} of {cfg.minutes} minutes spent before training "
                           f"(synthesis {synth_minutes:.1f}; stream phase {kcfg.train.stream_minutes}): "
                           "raise --minutes")
    kcfg.train.max_minutes = round(budget, 2)
    summary = train(kcfg, clips, [], out / "checkpoint", noise, streams)

    # 5. export and evaluation
    spotter = load_checkpoint(out / "checkpoint")
    fp32, int8 = out / "model.onnx", out / "model_int8.onnx"
    # a streamable model gets the streaming-step graph, which serves windows too: the evaluation
    # below then streams it with its state carried (the edge runtime's "auto" mode)
    export = export_streaming_onnx if spotter.crnn.can_stream else export_onnx
    export(spotter.crnn, spotter.cfg, fp32, frontend=spotter.frontend)
    quantize_int8(fp32, int8)
    neg_dirs = [str(d) for d in sorted((held_dir / "negatives").iterdir())]
    eval_t0 = time.time()
    more = {"real_positives": held_dir / "positives_real"} if real_split["test"] else None
    noise_dirs = [held_dir / "noise"] if heldout_noise else []  # none: generated, and the JSON says so
    res_int8 = evaluate_heldout(int8, held_dir / "positives", neg_dirs, cfg.target_fa_per_hour, more,
                                noise_dirs, cfg.eval_snrs, out)
    res_fp32 = (evaluate_heldout(fp32, held_dir / "positives", neg_dirs, cfg.target_fa_per_hour, more,
                                 noise_dirs, cfg.eval_snrs, out / "fp32")
                if cfg.evaluate_fp32 else None)
    eval_minutes = (time.time() - eval_t0) / 60
    # the shipped operating point: the int8 model's held-out threshold for the target rate
    threshold = round(min(max(res_int8["threshold"], 0.5), 0.999), 4)
    kcfg.detector.threshold = threshold
    for path in (fp32, int8):
        meta = read_metadata(path)
        meta["detector"] = json.dumps(to_dict(kcfg.detector))
        meta["config"] = json.dumps(to_dict(kcfg))
        add_metadata(path, meta)
    int8_bytes = int8.stat().st_size
    if int8_bytes > INT8_LIMIT_BYTES:
        log.warning("%s is %d bytes, over the %d-byte limit", int8, int8_bytes, INT8_LIMIT_BYTES)
    results = {
        "phrase": phrase,
        "frr_at_target_fa_per_hour": res_int8["frr"],
        "target_fa_per_hour": cfg.target_fa_per_hour,
        "threshold": res_int8["threshold"],
        "negative_hours": res_int8["negative_hours"],
        "positives": res_int8["positives"],
        **observability(res_int8["negative_hours"], cfg.target_fa_per_hour),
        # int8, FRR at the target rate clean and at each SNR of the held-out noise (each condition's
        # operating point read off its own curve; the threshold above is the clean one)
        "frr_at_target_fa_per_hour_by_condition": {k: v["frr"] for k, v in res_int8["conditions"].items()},
        "noise": res_int8["noise"], "det_plot": res_int8["det_plot"], "detection_json": res_int8["detection_json"],
        "int8": res_int8, "fp32": res_fp32,
        # held-out real recordings of the phrase (--real-positives), int8, same negatives and threshold rule
        "real_positives": res_int8.get("real_positives"),
        "heldout_noise_files": heldout_noise,
        "int8_bytes": int8_bytes, "fp32_bytes": fp32.stat().st_size,
        "int8_within_limit": int8_bytes <= INT8_LIMIT_BYTES,
        "params": count_parameters(spotter.crnn), "window_s": kcfg.window_s,
        "heldout_negative_hours_by_corpus": _per_corpus(held_negs, _hours),
        "heldout_negative_speakers_by_corpus": _per_corpus(held_negs, _speakers),
        "training_negative_hours_by_corpus": _per_corpus(train_negs, _hours),
        "training_negative_speakers_by_corpus": _per_corpus(train_negs, _speakers),
        "heldout_voices": held_voices, "heldout_families": sorted({voice_family(v) for v in held_voices}),
        "training": {
            "voices": len(train_voices), "positives": len(pos), "positives_requested": n_train_pos,
            "heldout_positives_requested": n_held, "near_misses": misses, "near_miss_clips": len(near),
            "sentence_clips": len(sent), "real_negative_files": len(train_negs),
            "real_negative_hours": _hours(train_negs),
            "noise_files": len(noise.waves), "noise_seconds": round(sum(w.numel() for w in noise.waves) / sr, 1),
            "real_positives": len(real_pos), "real_positives_unused_val": len(real_split["val"]),
            "skipped_negatives": skipped_train,
            "summary": summary},
        "skipped_heldout_negatives": skipped_held + res_int8["skipped"],
        "minutes": {"synthesis": round(synth_minutes, 2), "training": round(summary["minutes"], 2),
                    "evaluation": round(eval_minutes, 2), "total": round(minutes(), 2)},
        "evaluation": "kws.wakeword.evaluate_heldout (kws.evaluate.detection_report, clean and at "
                      f"{cfg.eval_snrs} dB SNR of the held-out noise; held-out voices, each clip streamed "
                      "after 1 s of negative audio; held-out negative speakers streamed per corpus)",
    }
    with open(out / "config.yaml", "w") as f:
        import yaml

        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    write_atomically(out / "results.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    return results
