"""Metrics: accuracy (overall, per class, confusion), and detection trade-offs: false
rejection rate against false alarms per hour, DET curves and their plots.

numpy only (matplotlib is imported by the plotting functions alone).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from kws.detector import count_firings


def classification_report(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> Dict:
    """probs (B, C), labels (B,) -> accuracy, per-class accuracy (recall), confusion."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    pred = probs.argmax(axis=1)
    C = len(names)
    conf = np.zeros((C, C), dtype=int)
    for t, p in zip(labels, pred):
        conf[t, p] += 1
    per_class = {names[k]: (float(conf[k, k] / conf[k].sum()) if conf[k].sum() else None)
                 for k in range(C)}
    return {"accuracy": float((pred == labels).mean()) if labels.size else 0.0,
            "per_class_accuracy": per_class, "n": int(labels.size),
            "per_class_n": {names[k]: int(conf[k].sum()) for k in range(C)},
            "confusion": conf.tolist()}


def default_thresholds(extra: Optional[np.ndarray] = None) -> np.ndarray:
    """A grid dense near 1, where posteriors of a confident model live."""
    grid = np.concatenate([np.linspace(0.0, 1.0, 501), 1.0 - np.logspace(-7, -0.3, 300)])
    if extra is not None and extra.size:
        grid = np.concatenate([grid, np.asarray(extra, dtype=np.float64).ravel()])
    return np.unique(np.clip(grid, 0.0, 1.0))


def det_curve(positive_max: np.ndarray, negative_scores: Sequence[np.ndarray], negative_hours: float,
              refractory_hops: int, thresholds: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """FRR and false alarms per hour at each threshold.

    Args:
        positive_max: (P,) highest smoothed score the detector saw in each positive clip
            (a clip counts as detected when that reaches the threshold).
        negative_scores: smoothed best-target score sequences (N_i,), one per negative
            stream; every firing (with the refractory period) is a false alarm.
        negative_hours: total duration of the negative streams.
    Returns:
        dict of arrays: thresholds, frr, false_alarms, fa_per_hour.
    """
    pos = np.asarray(positive_max, dtype=np.float64)
    if thresholds is None:
        thresholds = default_thresholds(pos)
    frr = np.array([float((pos < t).mean()) if pos.size else 0.0 for t in thresholds])
    fa = np.array([sum(count_firings(s, t, refractory_hops) for s in negative_scores)
                   for t in thresholds])
    return {"thresholds": thresholds, "frr": frr, "false_alarms": fa,
            "fa_per_hour": fa / max(negative_hours, 1e-12)}


def frr_at_fa(curve: Dict[str, np.ndarray], fa_per_hour: float) -> Dict[str, float]:
    """Lowest FRR among thresholds whose false alarms per hour are at most ``fa_per_hour``
    (the smallest such threshold wins ties)."""
    ok = np.flatnonzero(curve["fa_per_hour"] <= fa_per_hour + 1e-12)
    if ok.size == 0:
        return {"frr": 1.0, "threshold": 1.0, "false_alarms": int(curve["false_alarms"][-1])}
    best = ok[np.argmin(curve["frr"][ok])]
    return {"frr": float(curve["frr"][best]), "threshold": float(curve["thresholds"][best]),
            "false_alarms": int(curve["false_alarms"][best])}


def plot_det(curves: Dict[str, Dict[str, np.ndarray]], path: str, title: str = "",
             marks: Sequence[float] = (0.5, 1.0), min_rate: Optional[float] = None) -> None:
    """FRR (y) against false alarms per hour (x) for each named curve, as a PNG.

    ``min_rate``: rates below it are shaded as not observable with the negative audio
    given (see :func:`kws.evaluate.hours_needed`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (name, c), ls in zip(curves.items(), ["-", "--", "-.", ":"] * 4):
        # the achievable frontier: best FRR at each false-alarm rate or below
        fa_levels = np.unique(c["fa_per_hour"])
        frr = [float(c["frr"][c["fa_per_hour"] <= f].min()) for f in fa_levels]
        ax.step(np.maximum(fa_levels, 1e-2), 100 * np.array(frr), where="post", ls=ls, marker=".",
                label=name)
    for m in marks:
        ax.axvline(m, color="gray", ls=":", lw=1)
    if min_rate is not None and min_rate > 1e-2:
        ax.axvspan(1e-2 / 1.5, min_rate, color="gray", alpha=0.15, lw=0,
                   label=f"below {min_rate:.2g} FA/h: too little negative audio")
    ax.set_xscale("log")
    ax.set_xlabel("false alarms per hour (0 drawn at 0.01)")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion: List[List[int]], names: Sequence[str], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(confusion, dtype=float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
