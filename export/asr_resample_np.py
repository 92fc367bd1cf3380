"""Resampling of audio that arrives in chunks, in numpy, for the onnxruntime recognizer:
:class:`asr.streaming.resample.StreamingResampler` (torchaudio's windowed-sinc ``Resample``
with its defaults, a Hann window over 6 zero crossings, rolloff 0.99) without torch.

With the rates divided by their gcd (``orig``, ``new``), output block k (samples
``k new .. k new + new - 1``) is a fixed (new, 2 width + orig) kernel applied to the input
samples ``[k orig - width, k orig + width + orig)``, zero outside the signal. A block is
released once its input is in; the end's zeros come at :meth:`StreamingResampler.flush`.
Over a whole signal the output equals ``torchaudio.functional.resample``'s, length
``ceil(N new / orig)``.
"""
from __future__ import annotations

import math

import numpy as np


def sinc_resample_kernel(orig: int, new: int, lowpass_filter_width: int = 6,
                         rolloff: float = 0.99):
    """torchaudio's ``_get_sinc_resample_kernel`` (sinc_interp_hann) for rates already
    divided by their gcd -> (kernel (new, 2 width + orig) float32, width)."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx
    t = np.clip(t * base, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    kernel = np.where(t == 0, 1.0, np.sin(safe) / safe) * window * (base / orig)
    return kernel.astype(np.float32), width


class StreamingResampler:
    """``accept(samples (N,)) -> (M,)`` and ``flush() -> (M,)`` at ``new_rate``, float32."""

    def __init__(self, orig_rate: int, new_rate: int, lowpass_filter_width: int = 6,
                 rolloff: float = 0.99) -> None:
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig, self.new = int(orig_rate) // g, int(new_rate) // g
        self.kernel, self.width = sinc_resample_kernel(self.orig, self.new, lowpass_filter_width,
                                                       rolloff)
        self.span = self.kernel.shape[1]  # input samples per block: 2 width + orig
        # the buffer starts with the left zero padding: global index of buffer[0] is -width
        self.buffer = np.zeros(self.width, dtype=np.float32)
        self.buffer_start = -self.width
        self.received = 0
        self.next_block = 0

    def accept(self, samples) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.orig == self.new:
            return samples
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.size
        # blocks whose whole input window [k orig - width, k orig + width + orig) is in
        end = max(0, (self.received - self.width - self.orig) // self.orig + 1)
        return self._blocks(end, end * self.new)

    def flush(self) -> np.ndarray:
        """The rest of the output, the signal's end padded with zeros."""
        if self.orig == self.new:
            return np.zeros(0, dtype=np.float32)
        total = -(-self.new * self.received // self.orig)  # ceil(N new / orig)
        end = -(-total // self.new)
        need = end * self.orig - self.width + self.span - self.buffer_start  # last block's end
        if need > self.buffer.size:
            self.buffer = np.concatenate([self.buffer,
                                          np.zeros(need - self.buffer.size, np.float32)])
        return self._blocks(end, total)

    def _blocks(self, end: int, end_sample: int) -> np.ndarray:
        """Blocks next_block..end-1, cut at output sample ``end_sample``."""
        if end <= self.next_block:
            return np.zeros(0, dtype=np.float32)
        first = self.next_block * self.orig - self.width - self.buffer_start
        count = end - self.next_block
        windows = np.lib.stride_tricks.sliding_window_view(
            self.buffer[first:first + (count - 1) * self.orig + self.span], self.span)[::self.orig]
        out = (windows.astype(np.float64) @ self.kernel.T.astype(np.float64)).reshape(-1)
        out = out[:end_sample - self.next_block * self.new].astype(np.float32)
        self.next_block = end
        keep = self.next_block * self.orig - self.width  # the next block's first input
        self.buffer = self.buffer[keep - self.buffer_start:]
        self.buffer_start = keep
        return out
