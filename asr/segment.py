"""Long recordings cut into pieces of the length a model was trained on, at pauses.

An offline model trained on clips of a few seconds decodes a ten-minute recording badly and
slowly (an attention decoder's cost grows with frames x labels). ``split_at_pauses`` cuts
the recording where it is quietest, so that no piece is longer than ``max_seconds``; the
pieces cover the whole recording, so nothing is dropped, and each is decoded on its own.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["split_at_pauses"]


def split_at_pauses(wave: Tensor, sample_rate: int, max_seconds: float = 20.0,
                    min_seconds: Optional[float] = None, frame_seconds: float = 0.01,
                    smooth_seconds: float = 0.2) -> List[Tuple[int, int]]:
    """Sample spans ``[(start, end), ...]`` covering ``wave`` end to end, each at most
    ``max_seconds`` long, cut at the quietest point of the window that keeps a piece
    between ``min_seconds`` and ``max_seconds``.

    Quiet is the frame energy (``frame_seconds`` RMS, in dB) averaged over
    ``smooth_seconds``, so a cut lands in a pause rather than in a stop consonant's brief
    closure. A recording no longer than ``max_seconds`` is one span.

    Args:
        wave: ``(N,)`` samples.
        sample_rate: samples per second.
        max_seconds, min_seconds: the longest piece, and the shortest piece the search for
            a pause considers (default a quarter of ``max_seconds``; the last piece is
            whatever remains).
    """
    if wave.dim() != 1:
        raise ValueError(f"split_at_pauses: expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if min_seconds is None:
        min_seconds = max_seconds / 4
    if not 0 < min_seconds < max_seconds:
        raise ValueError(f"split_at_pauses: need 0 < min_seconds ({min_seconds}) < "
                         f"max_seconds ({max_seconds})")
    n = wave.numel()
    max_len = int(max_seconds * sample_rate)
    if n <= max_len:
        return [(0, n)]
    hop = max(1, int(frame_seconds * sample_rate))
    frames = n // hop
    power = wave[: frames * hop].reshape(frames, hop).pow(2).mean(dim=1)
    energy = 10.0 * torch.log10(power + 1e-10)
    width = max(1, int(round(smooth_seconds / frame_seconds))) | 1  # odd: centred
    smoothed = F.avg_pool1d(energy[None, None], width, stride=1, padding=width // 2,
                            count_include_pad=False)[0, 0]
    spans, start = [], 0
    while n - start > max_len:
        lo = (start + int(min_seconds * sample_rate)) // hop
        hi = (start + max_len) // hop  # a cut at frame k is sample k * hop <= start + max_len
        k = lo + int(torch.argmin(smoothed[lo: hi + 1]))
        spans.append((start, k * hop))
        start = k * hop
    spans.append((start, n))
    return spans
