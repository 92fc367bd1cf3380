"""Post-processing of windowed posteriors: smoothing, threshold, refractory period.

numpy only (the edge runtime uses it). The network scores one window every hop; the
detector averages the last ``smooth_hops`` posteriors of each target class, fires when the
best target's average reaches ``threshold``, and then stays quiet for ``refractory_hops``.
The vectorised :func:`count_firings` gives the same firings as the streaming
:class:`PosteriorDetector` (tested), so DET curves can sweep thresholds cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class Detection:
    time_s: float  # time of the last frame of the window that fired
    label: str
    score: float  # smoothed posterior

    def as_dict(self) -> dict:
        return {"time": round(self.time_s, 3), "label": self.label, "score": round(self.score, 4)}


def target_indices(labels: Sequence[str]) -> List[int]:
    """Classes a detector fires on: every label not starting with '_' (the background,
    ``_silence_`` and ``_unknown_`` classes are never detections)."""
    return [i for i, name in enumerate(labels) if not name.startswith("_")]


class PosteriorDetector:
    """push(probs (C,), time_s) -> Detection or None, one call per hop."""

    def __init__(self, labels: Sequence[str], threshold: float = 0.5, smooth_hops: int = 1,
                 refractory_hops: int = 10, targets: Optional[Sequence[int]] = None) -> None:
        self.labels = list(labels)
        self.targets = list(targets) if targets is not None else target_indices(labels)
        if not self.targets:
            raise ValueError(f"no target classes among labels {self.labels}")
        self.threshold = float(threshold)
        self.smooth_hops = max(1, int(smooth_hops))
        self.refractory_hops = max(0, int(refractory_hops))
        self.reset()

    def reset(self) -> None:
        self._recent: List[np.ndarray] = []
        self._quiet = 0  # hops left in the refractory period

    def smoothed(self, probs: np.ndarray) -> np.ndarray:
        """Moving average over the last ``smooth_hops`` posteriors of the target classes."""
        self._recent.append(np.asarray(probs, dtype=np.float64)[self.targets])
        if len(self._recent) > self.smooth_hops:
            self._recent.pop(0)
        return np.mean(self._recent, axis=0)

    def push(self, probs: np.ndarray, time_s: float) -> Optional[Detection]:
        avg = self.smoothed(probs)
        if self._quiet > 0:
            self._quiet -= 1
            return None
        best = int(np.argmax(avg))
        if avg[best] >= self.threshold:
            self._quiet = self.refractory_hops
            return Detection(float(time_s), self.labels[self.targets[best]], float(avg[best]))
        return None


def smooth_scores(scores: np.ndarray, hops: int) -> np.ndarray:
    """Causal moving average. scores: (N, K) -> (N, K); the first rows average fewer."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    hops = max(1, int(hops))
    c = np.cumsum(np.vstack([np.zeros((1, scores.shape[1])), scores]), axis=0)
    idx = np.arange(1, scores.shape[0] + 1)
    lo = np.maximum(idx - hops, 0)
    return (c[idx] - c[lo]) / (idx - lo)[:, None]


def count_firings(best: np.ndarray, threshold: float, refractory_hops: int) -> int:
    """Firings of the detector on a smoothed best-target score sequence (N,)."""
    above = np.flatnonzero(np.asarray(best) >= threshold)
    count, next_ok = 0, -1
    for i in above:
        if i >= next_ok:
            count += 1
            next_ok = i + refractory_hops + 1
    return count
