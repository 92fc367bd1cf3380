"""Resampling of audio that arrives in chunks, equal to resampling the whole at once.

``asr.audio.resample`` (torchaudio's windowed-sinc ``Resample``) computes each block of
``new`` output samples (rates divided by their gcd) from the input samples
``[k orig - width, k orig + width + orig)``, zero-padded at both ends. A block is
released once its input is in; the end's zero padding is applied at :meth:`flush`.
"""
from __future__ import annotations

import math

import torch

from asr.audio import resample


class StreamingResampler:
    """``accept(samples (N,)) -> (M,)`` and ``flush() -> (M,)`` at ``new_rate``."""

    def __init__(self, orig_rate: int, new_rate: int, lowpass_filter_width: int = 6,
                 rolloff: float = 0.99) -> None:
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self.orig, self.new = self.orig_rate // g, self.new_rate // g
        # torchaudio's kernel half-width in input samples (the defaults of Resample)
        self.width = math.ceil(lowpass_filter_width * self.orig / (min(self.orig, self.new) * rolloff))
        self.buffer = torch.zeros(0)
        self.buffer_start = 0  # global index of buffer[0], a multiple of orig
        self.received = 0
        self.next_block = 0

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        samples = samples.detach().reshape(-1).to(torch.float32)
        if self.orig == self.new:
            return samples
        self.buffer = torch.cat([self.buffer, samples])
        self.received += samples.numel()
        # blocks whose input window lies within the samples received
        end = max(0, (self.received - self.width - self.orig) // self.orig + 1)
        return self._blocks(end * self.new)

    def flush(self) -> torch.Tensor:
        if self.orig == self.new:
            return torch.zeros(0)
        return self._blocks(math.ceil(self.new * self.received / self.orig))

    def _blocks(self, end_sample: int) -> torch.Tensor:
        """Output samples from next_block * new up to end_sample."""
        first = self.next_block * self.new
        if end_sample <= first or self.buffer.numel() == 0:
            return torch.zeros(0)
        out = resample(self.buffer, self.orig_rate, self.new_rate)
        local = self.buffer_start // self.orig * self.new
        out = out[first - local: end_sample - local]
        self.next_block = -(-end_sample // self.new)
        keep = max(0, (self.next_block * self.orig - self.width) // self.orig * self.orig)
        self.buffer = self.buffer[keep - self.buffer_start:]
        self.buffer_start = keep
        return out
