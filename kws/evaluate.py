"""Evaluation of exported models on the edge runtime (numpy + onnxruntime).

- :func:`evaluate_commands`: N-way accuracy on a Speech Commands layout.
- :func:`detection_report` (``python -m kws evaluate-detection``): FRR against false
  alarms per hour, clean and with real noise at given SNRs, DET plot. Each positive clip is
  streamed after a second of negative audio and counts as detected if the detector's
  smoothed score reaches the threshold in it; the negative files of each folder are
  streamed back to back as one long stream through the serving detector, and every
  firing (with its refractory period) is a false alarm. A rate is reported only when the
  negative audio can show it (:func:`hours_needed`). :func:`evaluate_detection` is one
  condition of it, with the raw scores for re-summarising subsets.
- :func:`noisy_validation`: the same on a validation split, clean and with its own noise
  at several SNRs and noise draws, for several detector smoothings: a model-selection
  metric where the clean split cannot tell models apart.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from kws.layout import BACKGROUND_NOISE, SHARED_CORPORA, hash_split, list_audio, scan_speech_commands
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
    found = scan_speech_commands(data_dir, model.labels)
    items, rule = select_split(found, data_dir, split, val_percent, test_percent)
    if not items:
        raise ValueError(f"{data_dir}: none of its {len(found)} clips is in split {split!r} "
                         f"({rule}); give --split all to evaluate every clip")
    if len(items) < len(found):
        log.warning("--split %s: %d of the %d clips (%s)", split, len(items), len(found), rule)
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
            feats.append(model.window_features(model.fit_window(shifted)))
        labels.append(index[label])
    probs = model.predict(np.stack(feats))
    probs = probs.reshape(len(labels), len(shifts_ms), -1).mean(axis=1)
    rep = classification_report(probs, np.array(labels), model.labels)
    rep["speakers"] = len({it[2] for it in items})
    rep["skipped"] = skipped
    rep.update(split=split, split_rule=rule, clips_in_folder=len(found))
    if plot:
        plot_confusion(rep["confusion"], model.labels, plot,
                       title=f"{Path(model.path).name}: accuracy {rep['accuracy']:.3f}")
    return rep


#: the full Speech Commands release's split lists (relative paths, one a line)
SPLIT_LISTS = {"test": "testing_list.txt", "val": "validation_list.txt"}


def select_split(items: Sequence[Tuple[Path, str, str]], data_dir: str | Path, split: str,
                 val_percent: float = 10.0, test_percent: float = 20.0
                 ) -> Tuple[List[Tuple[Path, str, str]], str]:
    """The clips of ``split`` among ``items`` (:func:`kws.layout.scan_speech_commands`) and
    the rule that chose them. A folder with the release's ``testing_list.txt`` /
    ``validation_list.txt`` (the full v0.02 layout) is split by them ('train': the clips in
    neither, ``_silence_`` clips cut from background noise included); any other folder by
    speaker with :func:`kws.layout.hash_split` (``test_percent`` of the speakers in 'test',
    the split the shipped models held out of the test-set layout)."""
    if split == "all":
        return list(items), "every clip"
    root = Path(data_dir)
    lists = {name: root / f for name, f in SPLIT_LISTS.items() if (root / f).is_file()}
    if lists:
        listed = {name: {str(Path(line.strip()).with_suffix("")) for line in open(path, encoding="utf-8")
                         if line.strip()} for name, path in lists.items()}

        def which(path: Path) -> str:
            key = path.relative_to(root).with_suffix("").as_posix()
            return next((name for name, keys in listed.items() if key in keys), "train")

        if split != "train" and split not in lists:
            return [], f"{root} has {', '.join(sorted(f.name for f in lists.values()))} but no {SPLIT_LISTS[split]}"
        return ([it for it in items if which(it[0]) == split],
                f"the release's {SPLIT_LISTS[split] if split != 'train' else 'lists (train: in neither)'}")
    rule = (f"speakers whose SHA-1 falls in the {split} share (kws.layout.hash_split: "
            f"{test_percent:g}% test, {val_percent:g}% val); no testing_list.txt in the folder")
    return [it for it in items if hash_split(it[2], val_percent, test_percent) == split], rule


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


def default_noise_dirs(roots: Optional[Sequence[str | Path]] = None) -> List[str]:
    """``evaluate-detection``'s noise when ``--noise`` is not given: the Speech Commands
    ``_background_noise_`` recordings (:data:`kws.layout.BACKGROUND_NOISE`) under the first
    of ``roots`` that has them; by default the shared corpora (:data:`kws.layout.SHARED_CORPORA`,
    ``../shared/corpora``) relative to the repository, then to the working directory.
    [] when none has audio: the noisy conditions then mix generated noise, and the report
    says ``"noise": "generated"``."""
    if roots is None:
        repo = Path(__file__).resolve().parent.parent
        roots = [repo / SHARED_CORPORA, Path.cwd() / SHARED_CORPORA]
    for root in roots:
        d = Path(root) / BACKGROUND_NOISE
        if d.is_dir() and list_audio(d):
            return [str(d.resolve())]
    return []


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
        """wave (N,) plus noise at ``snr_db`` below its active speech level."""
        return self.mix_at_level(wave, active_power(wave, sample_rate), snr_db)

    def mix_at_level(self, wave: np.ndarray, signal_power: float, snr_db: float) -> np.ndarray:
        """wave (N,) plus noise (N,) scaled to ``snr_db`` below ``signal_power``."""
        noise = self.sample(wave.size)
        p_noise = float(np.mean(noise ** 2) + 1e-12)
        scale = math.sqrt(signal_power / (p_noise * 10 ** (snr_db / 10)))
        return (wave + scale * noise).astype(np.float32)


# ----------------------------------------------------------------------------- detection
def _best_target(posteriors: List[np.ndarray], targets: Sequence[int], smooth_hops: int) -> np.ndarray:
    if not posteriors:
        return np.zeros(0)
    p = np.stack(posteriors)[:, targets]
    return smooth_scores(p, smooth_hops).max(axis=1)


MIN_HOURS_FACTOR = 1.5


def hours_needed(rate: float, factor: float = MIN_HOURS_FACTOR) -> float:
    """Negative hours needed before an FRR "at ``rate`` false alarms per hour" is reported.

    The rule is ``negative_hours >= factor / rate``: ``rate * hours`` is how many false
    alarms the operating point may make, and below 1.5 the rate is not observed at all
    (0.5 FA/h on 17 minutes means "no false alarm"). With the default 1.5, 0.5 FA/h needs
    3 h and 1 FA/h 1.5 h: the operating point then allows one false alarm, and is a measured
    rate rather than an empty count. ``factor`` 3 is the stricter "rule of three" (after
    ``H`` hours with no false alarm the one-sided 95% upper bound on the rate is about
    ``3 / H``): 0.5 FA/h then needs 6 h.
    """
    return factor / rate


def rate_unobservable(hours: float, rate: float, factor: float = MIN_HOURS_FACTOR) -> str:
    """Why ``hours`` of negative audio cannot show ``rate`` false alarms per hour by the
    reporting rule (:func:`hours_needed`), or "" when they can. The one test of the rule:
    :func:`detection_summary` and :func:`kws.wakeword.observability` both ask it."""
    need = hours_needed(rate, factor)
    if hours + 1e-9 >= need:
        return ""
    return f"needs >= {need:g} h of negative audio ({factor:g} / {rate:g} FA/h), {hours:.3f} h given"


@dataclass
class DetectionEvalConfig:
    """How :func:`detection_report` builds its trials.

    snrs: noisy conditions (dB) evaluated beside the clean one; noise from ``noise_dirs``
        (real recordings; generated white/pink/brown noise when empty, reported as
        ``"noise": "generated"``; the command line defaults to :func:`default_noise_dirs`).
    context_s / tail_s: each positive clip is streamed after ``context_s`` of negative
        audio (taken in turn from the negative files, so the detector's window and
        smoothing are warm, as in serving) and before ``tail_s`` of silence; its score is
        the highest smoothed keyword score over the hops whose window reaches into the clip.
    min_hours_factor: k of the reporting rule, see :func:`hours_needed`.
    silence_peak: a file whose peak absolute sample is below this is "silent" and skipped.
    mode: the stream's ``mode`` (:meth:`kws.edge.KWSModel.stream`): "auto", "windowed"
        or "streaming"; the report's ``mode`` is the one used (:meth:`kws.edge.KWSModel.stream_mode`),
        ``mode_requested`` this.
    """

    snrs: Tuple[float, ...] = (5.0,)
    noise_dirs: Tuple[str, ...] = ()
    context_s: float = 1.0
    tail_s: float = 0.5
    min_hours_factor: float = MIN_HOURS_FACTOR
    silence_peak: float = 1e-4
    seed: int = 0
    mode: str = "auto"


def _load_checked(path: Path, sample_rate: int, silence_peak: float, skipped: Dict[str, str]
                  ) -> Optional[np.ndarray]:
    """The file as (N,) float32 at ``sample_rate``, or None after a warning naming it and an
    entry in ``skipped`` (path -> reason: undecodable, empty, non-finite, or silent)."""
    try:
        wave = read_audio(str(path), sample_rate)
    except EdgeError as exc:
        reason = str(exc).replace(f"{path}: ", "")
    else:
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        if peak >= silence_peak:
            return wave
        reason = f"silent (peak {peak:.2g} < {silence_peak:g})"
    if str(path) not in skipped:
        log.warning("skipping %s: %s", path, reason)
        skipped[str(path)] = reason
    return None


def _stream_scores(model: KWSModel, waves: Iterable[np.ndarray], mode: str
                   ) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """Stream the waves back to back through one fresh detector stream (flushed at the end).
    Returns (hop end times (H,), smoothed best-target scores (H,), seconds, files)."""
    s = model.stream(record=True, mode=mode)
    samples, files = 0, 0
    for w in waves:
        s.accept_waveform(w)
        samples += w.size
        files += 1
    s.flush()
    scores = _best_target(s.posteriors, model.targets, int(model.detector_config["smooth_hops"]))
    return np.asarray(s.times, dtype=np.float64), scores, samples / model.sample_rate, files


def _condition(model: KWSModel, positives: Sequence[np.ndarray], contexts: Sequence[np.ndarray],
               negatives: Sequence[Tuple[str, List[Path]]], snr_db: Optional[float],
               cfg: DetectionEvalConfig, skipped: Dict[str, str]) -> Tuple[List[float], List[Dict]]:
    """Scores of one condition: the best score in each positive trial and the score
    sequence of each negative stream (its files read one at a time)."""
    sr = model.sample_rate
    noise = NumpyNoise(sr, cfg.noise_dirs, cfg.seed) if snr_db is not None else None
    tail = np.zeros(int(cfg.tail_s * sr), np.float32)
    pos_max = []
    for clip, ctx in tqdm(list(zip(positives, contexts)), desc="positives", leave=False, mininterval=2.0):
        trial = np.concatenate([ctx, clip, tail]).astype(np.float32)
        if noise is not None:  # the SNR is set by the keyword's own active level
            trial = noise.mix_at_level(trial, active_power(clip, sr), snr_db)
        times, scores, _, _ = _stream_scores(model, [trial], cfg.mode)
        inside = times >= ctx.size / sr  # windows that reach into the clip
        pos_max.append(float(scores[inside].max()) if inside.any() else 0.0)
    streams = []
    for name, paths in negatives:
        def waves():
            for p in tqdm(paths, desc=f"negatives {Path(name).name}", leave=False, mininterval=5.0):
                w = _load_checked(p, sr, cfg.silence_peak, skipped)
                if w is not None:
                    yield noise.mix(w, snr_db, sr) if noise is not None else w
        _, scores, seconds, files = _stream_scores(model, waves(), cfg.mode)
        streams.append({"dir": name, "scores": scores, "files": files, "seconds": seconds})
    return pos_max, streams


def _load_trials(model: KWSModel, positives: Sequence[str], negatives: Sequence[str],
                 cfg: DetectionEvalConfig, skipped: Dict[str, str]):
    """(positive waves, their negative contexts (context_s each), [(folder, negative
    files)]); unreadable or silent positives go to ``skipped``."""
    sr = model.sample_rate
    pos_files = [p for d in positives for p in list_audio(d)]
    if not pos_files:
        raise ValueError(f"no positive audio under {list(positives)}")
    neg_sets = []
    for d in negatives:
        files = list_audio(d)
        if not files:
            raise ValueError(f"{d}: no negative audio")
        neg_sets.append((str(d), files))
    pos_waves = [w for w in (_load_checked(p, sr, cfg.silence_peak, skipped) for p in pos_files)
                 if w is not None]
    if not pos_waves:
        raise ValueError(f"no readable positive audio under {list(positives)}")
    # the context before positive i: the start of negative files spread over all folders
    n_ctx = int(cfg.context_s * sr)
    all_neg = [p for _, ps in neg_sets for p in ps]
    step = max(1, len(all_neg) // (len(pos_waves) + 1))
    buf, contexts = np.zeros(0, np.float32), []
    for p in all_neg[::step] + all_neg:
        if len(contexts) == len(pos_waves):
            break
        w = _load_checked(p, sr, cfg.silence_peak, skipped)
        if w is None:
            continue
        buf = np.concatenate([buf, w])
        while buf.size >= n_ctx and len(contexts) < len(pos_waves):
            contexts.append(buf[:n_ctx])
            buf = buf[n_ctx:]
    while len(contexts) < len(pos_waves):  # less negative audio than contexts: pad with silence
        contexts.append(np.zeros(n_ctx, np.float32))
    return pos_waves, contexts, neg_sets


def positive_scores(model: KWSModel, positives: Sequence[str], negatives: Sequence[str],
                    skipped: Optional[Dict[str, str]] = None, snr_db: Optional[float] = None,
                    cfg: Optional[DetectionEvalConfig] = None) -> List[float]:
    """The best score in each positive trial, each after its context of negative audio as
    in :func:`detection_report` (clean, or with ``cfg``'s noise at ``snr_db``), without
    streaming the negatives: another positive set scored against negative streams already
    scored (``_streams`` of :func:`evaluate_detection`, or ``raw`` of :func:`detection_report`),
    e.g. with :func:`detection_summary`. Unreadable or silent files go to ``skipped``."""
    cfg = cfg or DetectionEvalConfig()
    skipped = {} if skipped is None else skipped
    waves, contexts, _ = _load_trials(model, positives, negatives, cfg, skipped)
    pos_max, _ = _condition(model, waves, contexts, [], snr_db, cfg, skipped)
    return pos_max


def detection_report(model: KWSModel, positives: Sequence[str], negatives: Sequence[str],
                     cfg: Optional[DetectionEvalConfig] = None, out_dir: Optional[str] = None,
                     raw: Optional[Dict[str, Dict]] = None) -> Dict:
    """Wake-word detection evaluation: FRR at 0.5 and 1 false alarms per hour, clean and at
    each SNR in ``cfg.snrs``, with the DET curves.

    Args:
        model: an exported model on the edge runtime (the serving code path: streaming
            features, the model once per hop, the detector's smoothing and refractory rule).
        positives: folders (read recursively; wav, flac, ogg, opus, mp3) of keyword clips.
            Each clip is one trial (see :class:`DetectionEvalConfig`): detected if the
            smoothed score reaches the threshold anywhere in it.
        negatives: folders of long or short audio without the keyword. Each folder's files
            are streamed back to back as one continuous stream (sorted by path); every
            detector firing is a false alarm, counted per hour of that audio. A corrupt,
            empty or silent file (positive or negative) is skipped with a warning and
            listed in ``skipped``; it never stops the evaluation.
        cfg: conditions and trial construction (defaults: clean and 5 dB SNR).
        out_dir: if given, ``det.png`` (FRR against FA/h, log axis, one curve per
            condition) and ``detection.json`` (this result) are written there.
        raw: if a dict, filled per condition name (``clean``, ``snr_<x>``) with the
            material for other operating points and other positive sets: ``_curve``,
            ``_positive_max`` and ``_streams`` (as :func:`evaluate_detection` gives them).
    Returns:
        JSON-ready dict: ``mode`` (the stream kind used, "windowed" or "streaming") and
        ``mode_requested``, ``positives``, ``negative_hours``, ``negative_files``,
        ``negatives_by_dir``, ``skipped``, ``noise`` (the noise folders of the SNR
        conditions, or "generated"), ``hours_needed`` (per rate, the reporting rule
        of :func:`hours_needed`), ``conditions`` (``clean``, ``snr_<x>``: each the fields
        of :func:`detection_summary`), and at the top level the clean condition's
        ``frr_at_0.5_fa_per_hour`` and ``frr_at_1_fa_per_hour`` (null when the negative
        audio is too short to observe that rate, with ``..._unreported`` saying why).

    Speakers: the function evaluates what it is given; keeping the evaluation speakers
    out of training is the caller's job (the wake-word recipe holds out by file/speaker hash
    and adds corpora never used in training).
    """
    cfg = cfg or DetectionEvalConfig()
    if cfg.snrs and not cfg.noise_dirs:
        log.warning("no real noise given: the %s dB SNR condition(s) mix generated white/pink/brown "
                    "noise (reported as \"noise\": \"generated\")", ", ".join(f"{x:g}" for x in cfg.snrs))
    skipped: Dict[str, str] = {}
    pos_waves, contexts, neg_sets = _load_trials(model, positives, negatives, cfg, skipped)

    conditions: Dict[str, Dict] = {}
    curves: Dict[str, Dict] = {}
    for snr in [None] + list(cfg.snrs):
        name = "clean" if snr is None else f"snr_{snr:g}"
        pos_max, streams = _condition(model, pos_waves, contexts, neg_sets, snr, cfg, skipped)
        r = detection_summary(pos_max, streams, model.detector_config, cfg.min_hours_factor)
        curve = curves["clean" if snr is None else f"{snr:g} dB SNR"] = r.pop("_curve")
        if raw is not None:
            raw[name] = {"_curve": curve, "_positive_max": pos_max, "_streams": streams}
        r["snr_db"] = snr
        r["by_dir"] = {st["dir"]: {"files": st["files"], "hours": round(st["seconds"] / 3600, 4),
                                   "max_score": float(st["scores"].max()) if st["scores"].size else None,
                                   "false_alarms_at_threshold": count_firings(
                                       st["scores"], float(model.detector_config["threshold"]),
                                       int(round(model.detector_config["refractory_s"]
                                                 / float(model.detector_config["hop_s"]))))}
                       for st in streams}
        r["positive_scores"] = [round(x, 4) for x in pos_max]
        conditions[name] = r
    clean = conditions["clean"]
    hours = clean["negative_hours"]
    res = {"model": str(model.path), "mode": model.stream_mode(cfg.mode), "mode_requested": cfg.mode,
           "positives": clean["positives"],
           "negative_hours": hours, "negative_files": clean["negative_files"],
           "negatives_by_dir": {st: {"files": v["files"], "hours": v["hours"]}
                                for st, v in clean["by_dir"].items()},
           "skipped": [{"file": f, "reason": why} for f, why in skipped.items()],
           "hours_needed": {"0.5": hours_needed(0.5, cfg.min_hours_factor),
                            "1": hours_needed(1.0, cfg.min_hours_factor)},
           "min_hours_factor": cfg.min_hours_factor, "context_s": cfg.context_s,
           "noise": list(cfg.noise_dirs) or "generated",
           "threshold": clean["threshold"]}
    for key in ("frr_at_0.5_fa_per_hour", "frr_at_1_fa_per_hour"):
        res[key] = clean[key]
        if key + "_unreported" in clean:
            res[key + "_unreported"] = clean[key + "_unreported"]
    res["conditions"] = conditions
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_det(curves, str(out / "det.png"), min_rate=min(cfg.min_hours_factor / max(hours, 1e-12), 1e9),
                 title=f"{Path(model.path).name}: {hours:.2f} h negatives, {clean['positives']} positives")
        res["det_plot"] = str(out / "det.png")
        (out / "detection.json").write_text(json.dumps(res, indent=1))
    return res


def evaluate_detection(model: KWSModel, positives: Sequence[str], negatives: Sequence[str],
                       snr_db: Optional[float] = None, noise_dirs: Sequence[str] = (),
                       seed: int = 0, plot: Optional[str] = None, label: str = "",
                       min_hours_factor: float = MIN_HOURS_FACTOR, mode: str = "auto") -> Dict:
    """One condition of :func:`detection_report` (clean, or noise at ``snr_db``), with the
    raw material for re-summarising subsets: ``_curve``, ``_positive_max`` and
    ``_streams`` (one dict per negative folder: ``dir``, ``scores``, ``seconds``, ``files``)."""
    cfg = DetectionEvalConfig(snrs=(), noise_dirs=tuple(noise_dirs), seed=seed,
                              min_hours_factor=min_hours_factor, mode=mode)
    skipped: Dict[str, str] = {}
    pos_waves, contexts, neg_sets = _load_trials(model, positives, negatives, cfg, skipped)
    pos_max, streams = _condition(model, pos_waves, contexts, neg_sets, snr_db, cfg, skipped)
    result = detection_summary(pos_max, streams, model.detector_config, min_hours_factor)
    result.update({"snr_db": snr_db, "skipped": [{"file": f, "reason": why} for f, why in skipped.items()]})
    if plot:
        name = label or ("clean" if snr_db is None else f"{snr_db:g} dB SNR")
        plot_det({name: result["_curve"]}, plot,
                 title=f"{Path(model.path).name}: {result['negative_hours']:.2f} h of negatives")
    result["_positive_max"] = pos_max
    result["_streams"] = streams
    return result


def detection_summary(pos_max: Sequence[float], streams: Sequence[Dict], det: Dict,
                      min_hours_factor: float = MIN_HOURS_FACTOR) -> Dict:
    """FRR at 0.5 / 1 false alarms per hour and the DET curve from the highest score in
    each positive clip and the score sequences of negative streams (dicts with
    ``scores``, ``seconds``, ``files``), e.g. a subset of :func:`evaluate_detection`'s
    ``_streams``.

    ``frr_at_R_fa_per_hour`` is null when the negative audio is shorter than
    :func:`hours_needed` (R, ``min_hours_factor``); ``frr_at_R_fa_per_hour_unreported``
    then says why. ``threshold_at_R_fa_per_hour`` (an operating point read off the curve,
    not a claim about the rate) and ``frr_at_zero_false_alarms`` are always given.
    ``min_hours_factor=0`` reports every rate (model selection on small sets)."""
    refractory = int(round(det["refractory_s"] / float(det["hop_s"])))
    neg_scores = [st["scores"] for st in streams]
    hours = sum(st["seconds"] for st in streams) / 3600.0
    curve = det_curve(np.array(pos_max), neg_scores, hours, refractory)
    thr = float(det["threshold"])
    pos = np.array(pos_max)
    fa_default = sum(count_firings(sc, thr, refractory) for sc in neg_scores)
    out: Dict = {}
    for rate, key in ((0.5, "0.5"), (1.0, "1")):
        at = frr_at_fa(curve, rate)
        name = f"frr_at_{key}_fa_per_hour"
        why = rate_unobservable(hours, rate, min_hours_factor)
        out[name] = None if why else at["frr"]
        if why:
            out[name + "_unreported"] = why
        out[f"threshold_at_{key}_fa_per_hour"] = at["threshold"]
    zero = frr_at_fa(curve, 0.0)
    out.update({
        "frr_at_zero_false_alarms": zero["frr"], "threshold_at_zero_false_alarms": zero["threshold"],
        "negative_hours": round(hours, 6), "negative_files": sum(st["files"] for st in streams),
        "min_hours_factor": min_hours_factor,
        "false_alarms": fa_default, "threshold": thr,
        "frr_at_threshold": float((pos < thr).mean()) if pos.size else None,
        "fa_per_hour_at_threshold": fa_default / max(hours, 1e-12),
        "positives": int(pos.size), "detected_at_threshold": int((pos >= thr).sum()),
        "_curve": curve,
    })
    return out


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
            r = detection_summary(pos_max, streams, model.detector_config, min_hours_factor=0.0)
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
