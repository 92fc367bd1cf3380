"""Hard-negative mining for wake words: windows of long negative audio that the model
scores as a keyword, kept as a pool the trainer draws background examples from.

A pool entry is a reference into the negative streams, ``(stream index, start sample)``,
not a copy of the audio: the pool costs nothing to keep, goes into a resume checkpoint as
a few numbers, and every process of a distributed run cuts the same window from it.
"""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

import torch

from kws.data import NoiseBank

# a piece of negative audio to scan: (stream index, offset of the piece in the stream, samples (M,))
Piece = Tuple[int, int, torch.Tensor]
# a mined window: (keyword posterior, (stream index, start sample))
Mined = Tuple[float, Tuple[int, int]]


def scan_slice(streams: Sequence[torch.Tensor], seconds: float, sample_rate: int, rng: random.Random,
               piece_s: float = 60.0) -> List[Piece]:
    """A random part of the negative audio: pieces of ``piece_s`` seconds cut from the
    streams (N_i,), shuffled, about ``seconds`` in all (every stream whole when
    ``seconds`` <= 0)."""
    if seconds <= 0:
        return [(i, 0, s) for i, s in enumerate(streams)]
    piece = int(piece_s * sample_rate)
    pieces = [(k, i, s[i:i + piece]) for k, s in enumerate(streams) for i in range(0, s.numel(), piece)]
    rng.shuffle(pieces)
    out, total = [], 0
    for p in pieces:
        if total >= seconds * sample_rate:
            break
        out.append(p)
        total += p[2].numel()
    return out


@torch.no_grad()
def mine(spotter, pieces: Sequence[Piece], background: int, threshold: float, limit: int,
         hop: int) -> List[Mined]:
    """The windows (with their context) of ``pieces`` whose best keyword posterior is at
    least ``threshold``: at most ``limit``, highest first (ties by position, so the order
    does not depend on how the pieces were spread over processes)."""
    from kws.train import predict_windows

    n = spotter.cfg.window_samples + 2 * spotter.cfg.context_samples
    found: List[Mined] = []
    for k, offset, s in pieces:
        if s.numel() < n:
            continue
        starts = torch.arange(0, s.numel() - n + 1, hop)
        for i in range(0, len(starts), 512):
            idx = starts[i:i + 512].tolist()
            p = predict_windows(spotter, torch.stack([s[j:j + n] for j in idx]))
            p[:, background] = 0
            best = p.max(dim=-1).values
            found += [(float(best[j]), (k, offset + idx[j])) for j in
                      torch.nonzero(best >= threshold).flatten().tolist()]
    return best_first(found, limit)


def best_first(found: Sequence[Mined], limit: int) -> List[Mined]:
    return sorted(found, key=lambda m: (-m[0], m[1]))[:limit]


def cut(streams: Sequence[torch.Tensor], key: Tuple[int, int], n: int) -> torch.Tensor:
    """The (n,) samples a pool entry points at."""
    k, start = key
    return streams[k][start:start + n]


def noisy_copy(stream: torch.Tensor, noise: NoiseBank, snrs: Sequence[float], chunk: int,
               rng: random.Random) -> torch.Tensor:
    """``stream`` (N,) with noise mixed in, each ``chunk`` samples at an SNR drawn from ``snrs``."""
    from asr.augment import add_noise

    parts = []
    for i in range(0, stream.numel(), chunk):
        part = stream[i:i + chunk]
        if part.abs().max() < 1e-4:
            parts.append(part)
            continue
        parts.append(add_noise(part, noise.sample(part.numel(), rng), rng.choice(list(snrs))).clamp(-1.0, 1.0))
    return torch.cat(parts) if parts else stream
