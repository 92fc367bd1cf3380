"""Choosing clips to label: the highest scores that fit a budget of audio hours,
optionally spread over speakers."""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from asr.data import Utterance


@dataclass
class SelectionConfig:
    """hours: audio budget. speaker_decay: diversity; a clip's score is multiplied by
    ``speaker_decay ** k`` where k clips of its speaker are already chosen (1.0: off;
    clips without a speaker count as their own speaker)."""

    hours: float
    speaker_decay: float = 1.0

    def __post_init__(self) -> None:
        if self.hours < 0:
            raise ValueError(f"hours must be >= 0, got {self.hours}")
        if not 0.0 < self.speaker_decay <= 1.0:
            raise ValueError(f"speaker_decay must lie in (0, 1], got {self.speaker_decay}")


def select_clips(utts: Sequence[Utterance], scores: Dict[str, float],
                 cfg: SelectionConfig) -> List[Tuple[Utterance, float]]:
    """Greedy: take the clip with the highest (speaker-decayed) score that still fits the
    remaining budget, until none fits. Clips without a score are not candidates.
    Returns (utterance, score) pairs in the order chosen."""
    budget = cfg.hours * 3600.0
    candidates = [u for u in utts if u.id in scores]
    if cfg.speaker_decay < 1.0 and any(scores[u.id] < 0 for u in candidates):
        raise ValueError("speaker diversity scales scores and needs them >= 0")
    speaker = lambda u: u.speaker if u.speaker is not None else f"\0{u.id}"
    picks: Dict[str, int] = {}
    # lazy greedy: a popped entry is current if its speaker's count has not moved since
    heap = [(-scores[u.id], i, 0) for i, u in enumerate(candidates)]
    heapq.heapify(heap)
    chosen, used = [], 0.0
    while heap:
        neg, i, seen = heapq.heappop(heap)
        u = candidates[i]
        k = picks.get(speaker(u), 0)
        if k != seen:
            heapq.heappush(heap, (-scores[u.id] * cfg.speaker_decay ** k, i, k))
            continue
        if used + u.duration > budget:
            continue  # too long for what is left; a shorter clip may still fit
        chosen.append((u, scores[u.id]))
        used += u.duration
        picks[speaker(u)] = k + 1
    return chosen
