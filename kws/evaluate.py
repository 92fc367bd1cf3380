"""Evaluation of exported models on the edge runtime (numpy + onnxruntime).

- :func:`evaluate_commands`: N-way accuracy on a Speech Commands layout.
- :func:`evaluate_detection`: FRR against false alarms per hour. Each positive clip is
  streamed on its own (fresh stream, trailing silence flushed) and counts as detected if
  the detector fires anywhere in it; the negative files of each directory are streamed
  back to back as one long stream, and every firing is a false alarm.
- :func:`noisy_validation`: the same on a validation split, clean and with its own noise
  at several SNRs and noise draws, for several detector smoothings: a model-selection
  metric where the clean split cannot tell models apart.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from kws.layout import hash_split, list_audio, scan_speech_commands
from kws.detector import count_firings, smooth_scores
from kws.edge import EdgeError, KWSModel, read_audio
from kws.metrics import classification_report, det_curve, frr_at_fa, plot_confusion, plot_det

log = logging.getLogger(__name__)


def evaluate_commands(model: KWSModel, data_dir: str, split: str = "all", val_percent: float = 10.0,
                      test_percent: float = 20.0, plot: Optional[str] = None,
                      shifts_ms: Sequence[float] = (0.0,)) -> Dict:
    """Accuracy of ``model`` on ``<class>/<file>`` clips. ``split`` keeps only the speakers
    that :func:`kws.layout.hash_split` puts in that split ('all' keeps every clip).
    ``shifts_ms`` other than (0,) averages the posteriors of the clip shifted by each amount
    (zero-padded), a test-time option; the default is one centered window."""
    items = scan_speech_commands(data_dir, model.labels)
    if split != "all":
        items = [it for it in items if hash_split(it[2], val_percent, test_percent) == split]
    if not items:
        raise ValueError(f"{data_dir}: no clips for split {split!r}")
    index = {name: i for i, name in enumerate(model.labels)}
    feats, labels, skipped = [], [], []
    for path, label, _ in tqdm(items, desc="features", leave=False, mininterval=2.0):
        try:
            wave = read_audio(str(path), model.sample_rate)
        except EdgeError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(path))
            continue
        for ms in shifts_ms:
            k = int(round(ms * model.sample_rate / 1000))
            shifted = np.concatenate([np.zeros(k, np.float32), wave]) if k > 0 else wave[-k:]
            feats.append(model.features(model.fit_window(shifted)))
        labels.append(index[label])
    probs = model.predict(np.stack(feats))
    probs = probs.reshape(len(labels), len(shifts_ms), -1).mean(axis=1)
    rep = classification_report(probs, np.array(labels), model.labels)
    rep["speakers"] = len({it[2] for it in items})
    rep["skipped"] = skipped
    if plot:
        plot_confusion(rep["confusion"], model.labels, plot,
                       title=f"{Path(model.path).name}: accuracy {rep['accuracy']:.3f}")
    return rep


# ----------------------------------------------------------------------------- noise
def active_power(wave: np.ndarray, sample_rate: int = 16000, floor_db: float = 30.0) -> float:
    """Mean power of the 20 ms frames within ``floor_db`` of the loudest (a simple active
    speech level), so an SNR means the same for a short word in a long clip."""
    frame = sample_rate // 50
    n = wave.size // frame
    if n < 1:
        return float(np.mean(wave ** 2) + 1e-12)
    e = (wave[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    keep = e >= e.max() * 10 ** (-floor_db / 10)
    return float(e[keep].mean() + 1e-12)


class NumpyNoise:
    """Noise source for evaluation: files from ``--noise`` or generated colored noise."""

    def __init__(self, sample_rate: int, noise_dirs: Sequence[str] = (), seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.waves = []
        for d in noise_dirs:
            for p in list_audio(d):
                try:
                    self.waves.append(read_audio(str(p), sample_rate))
                except EdgeError as exc:
                    log.warning("skipping noise %s", exc)
        if noise_dirs and not self.waves:
            raise ValueError(f"no readable noise audio in {list(noise_dirs)}")

    def colored(self, n: int) -> np.ndarray:
        color = self.rng.choice(["white", "pink", "brown"])
        white = self.rng.standard_normal(n)
        if color == "white":
            return white
        spec = np.fft.rfft(white)
        f = np.maximum(np.arange(spec.size, dtype=np.float64), 1.0)
        out = np.fft.irfft(spec / f ** (0.5 if color == "pink" else 1.0), n=n)
        return out / max(out.std(), 1e-8)

    def sample(self, n: int) -> np.ndarray:
        if not self.waves:
            return self.colored(n)
        w = self.waves[self.rng.integers(len(self.waves))]
        if w.size < n:
            w = np.tile(w, n // w.size + 1)
        s = self.rng.integers(0, w.size - n + 1)
        return w[s:s + n].astype(np.float64)

    def mix(self, wave: np.ndarray, snr_db: float, sample_rate: int) -> np.ndarray:
        noise = self.sample(wave.size)
        p_sig = active_power(wave, sample_rate)
        p_noise = float(np.mean(noise ** 2) + 1e-12)
        scale = math.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
        return (wave + scale * noise).astype(np.float32)


# ----------------------------------------------------------------------------- detection
def _best_target(posteriors: List[np.ndarray], targets: Sequence[int], smooth_hops: int) -> np.ndarray:
    if not posteriors:
        return np.zeros(0)
    p = np.stack(posteriors)[:, targets]
    return smooth_scores(p, smooth_hops).max(axis=1)


def evaluate_detection(model: KWSModel, positives: Sequence[str], negatives: Sequence[str],
                       snr_db: Optional[float] = None, noise_dirs: Sequence[str] = (),
                       seed: int = 0, plot: Optional[str] = None, label: str = "") -> Dict:
    """FRR at 0.5 and 1 false alarms per hour, and the DET curve (see module doc)."""
    det = model.detector_config
    smooth = int(det["smooth_hops"])
    noise = NumpyNoise(model.sample_rate, noise_dirs, seed) if snr_db is not None else None
    targets = model.targets

    pos_files = [p for d in positives for p in list_audio(d)]
    if not pos_files:
        raise ValueError(f"no positive audio under {list(positives)}")
    pos_max, skipped = [], []

    def load(path):
        """The clip at the model's rate with noise mixed in, or None (reported, skipped)."""
        try:
            wave = read_audio(str(path), model.sample_rate)
        except EdgeError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(path))
            return None
        return noise.mix(wave, snr_db, model.sample_rate) if noise is not None else wave

    for path in tqdm(pos_files, desc="positives", leave=False, mininterval=2.0):
        wave = load(path)
        if wave is None:
            continue
        s = model.stream(record=True)
        s.accept_waveform(wave)
        s.flush()
        scores = _best_target(s.posteriors, targets, smooth)
        pos_max.append(float(scores.max()) if scores.size else 0.0)

    streams = []
    for d in negatives:
        files = list_audio(d)
        if not files:
            raise ValueError(f"{d}: no negative audio")
        s = model.stream(record=True)
        seconds, n_files = 0.0, 0
        for path in tqdm(files, desc=f"negatives {Path(d).name}", leave=False, mininterval=2.0):
            wave = load(path)
            if wave is None:
                continue
            s.accept_waveform(wave)
            seconds += wave.size / model.sample_rate
            n_files += 1
        s.flush()
        streams.append({"dir": str(d), "scores": _best_target(s.posteriors, targets, smooth),
                        "seconds": seconds, "files": n_files})
    result = detection_summary(pos_max, streams, det)
    result.update({"snr_db": snr_db, "skipped": skipped})
    if plot:
        name = label or ("clean" if snr_db is None else f"{snr_db:g} dB SNR")
        plot_det({name: result["_curve"]}, plot,
                 title=f"{Path(model.path).name}: {result['negative_hours']:.2f} h of negatives")
    result["_positive_max"] = pos_max
    result["_streams"] = streams
    return result


def detection_summary(pos_max: Sequence[float], streams: Sequence[Dict], det: Dict) -> Dict:
    """FRR at 0.5 / 1 false alarms per hour and the DET curve from the highest score in
    each positive clip and the score sequences of negative streams (dicts with
    ``scores``, ``seconds``, ``files``), e.g. a subset of :func:`evaluate_detection`'s
    ``_streams``."""
    refractory = int(round(det["refractory_s"] / float(det["hop_s"])))
    neg_scores = [st["scores"] for st in streams]
    hours = sum(st["seconds"] for st in streams) / 3600.0
    curve = det_curve(np.array(pos_max), neg_scores, hours, refractory)
    at05, at1 = frr_at_fa(curve, 0.5), frr_at_fa(curve, 1.0)
    thr = float(det["threshold"])
    pos = np.array(pos_max)
    fa_default = sum(count_firings(sc, thr, refractory) for sc in neg_scores)
    return {
        "frr_at_0.5_fa_per_hour": at05["frr"], "frr_at_1_fa_per_hour": at1["frr"],
        "threshold_at_0.5_fa_per_hour": at05["threshold"], "threshold_at_1_fa_per_hour": at1["threshold"],
        "negative_hours": round(hours, 6), "negative_files": sum(st["files"] for st in streams),
        "false_alarms": fa_default, "threshold": thr,
        "frr_at_threshold": float((pos < thr).mean()) if pos.size else None,
        "fa_per_hour_at_threshold": fa_default / max(hours, 1e-12),
        "positives": int(pos.size), "detected_at_threshold": int((pos >= thr).sum()),
        "_curve": curve,
    }


def noisy_validation(model: KWSModel, val_dir: str | Path, snrs: Sequence[float] = (5.0, 0.0),
                     seeds: Sequence[int] = (0, 1, 2, 3, 4),
                     smooth_options: Sequence[int] = (1, 2, 3, 4)) -> Dict:
    """FRR at 0.5 false alarms per hour on a validation split, clean and noisy.

    ``val_dir`` holds ``positives/``, ``negatives/<dir>/`` and ``noise/`` (the validation
    speakers' own background noise). Conditions: clean, and each SNR in ``snrs`` with each
    noise draw in ``seeds``. Per condition and per detector smoothing in
    ``smooth_options``: ``frr_at_0.5_fa_per_hour``, ``missed_at_zero_fa`` (positives whose
    best score does not beat the best negative score) and ``mean_margin`` (their mean
    distance to it). ``mean_noisy`` averages the noisy conditions per smoothing.
    """
    val_dir = Path(val_dir)
    pos_files = list_audio(val_dir / "positives")
    neg_dirs = [d for d in sorted((val_dir / "negatives").iterdir()) if list_audio(d)]
    if not pos_files or not neg_dirs:
        raise ValueError(f"{val_dir}: needs audio under positives/ and negatives/<dir>/")
    sr = model.sample_rate
    positives = [read_audio(str(p), sr) for p in pos_files]
    negatives = [[read_audio(str(p), sr) for p in list_audio(d)] for d in neg_dirs]
    neg_seconds = [sum(w.size for w in ws) / sr for ws in negatives]

    def posteriors(waves):
        s = model.stream(record=True)
        for w in waves:
            s.accept_waveform(w)
        s.flush()
        return s.posteriors

    conditions = [("clean", None, 0)] + [(f"snr{snr:g}_seed{seed}", snr, seed)
                                         for snr in snrs for seed in seeds]
    out: Dict = {"model": str(model.path), "smooth_options": list(smooth_options),
                 "positives": len(pos_files),
                 "negative_hours": sum(neg_seconds) / 3600, "conditions": {}}
    for name, snr, seed in tqdm(conditions, desc="noisy validation", leave=False):
        noise = NumpyNoise(sr, [str(val_dir / "noise")], seed) if snr is not None else None
        mix = (lambda w: noise.mix(w, snr, sr)) if noise is not None else (lambda w: w)
        pos_post = [posteriors([mix(w)]) for w in positives]
        neg_post = [posteriors([mix(w) for w in ws]) for ws in negatives]
        row = {}
        for h in smooth_options:
            pos_max = [float(_best_target(p, model.targets, h).max()) for p in pos_post]
            streams = [{"scores": _best_target(p, model.targets, h), "seconds": sec, "files": 1}
                       for p, sec in zip(neg_post, neg_seconds)]
            r = detection_summary(pos_max, streams, model.detector_config)
            neg_max = max(float(st["scores"].max()) for st in streams)
            row[str(h)] = {"frr_at_0.5_fa_per_hour": r["frr_at_0.5_fa_per_hour"],
                           "missed_at_zero_fa": int(sum(x <= neg_max for x in pos_max)),
                           "mean_margin": float(np.mean([x - neg_max for x in pos_max]))}
        out["conditions"][name] = row
    noisy = [k for k in out["conditions"] if k != "clean"]
    out["mean_noisy"] = {str(h): {
        key: float(np.mean([out["conditions"][k][str(h)][key] for k in noisy]))
        for key in ("frr_at_0.5_fa_per_hour", "mean_margin")} for h in smooth_options}
    return out
