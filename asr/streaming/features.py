"""Streaming front end: audio arriving in chunks of any size -> exactly the feature frames
the offline :class:`~asr.features.FeatureExtractor` gives for the whole audio.

With ``center`` the offline STFT reflects the signal about its first and last samples.
The start is known once ``n_fft // 2 + 1`` samples have arrived; the end only when the
stream is flushed, so the frames whose window reaches past the samples received wait for
more audio or for :meth:`StreamingFeatures.flush`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from asr.features import FeatureExtractor

Normalize = Callable[[torch.Tensor], torch.Tensor]


class StreamingFeatures:
    """Feature state of one utterance.

    ``accept(samples (N,)) -> frames (T, D)``, the frames that became computable;
    ``flush() -> frames (T, D)``, the rest, the end reflected as offline. Over a whole
    utterance the frames equal ``extractor(wave)`` (then ``normalize``, applied per frame).
    """

    def __init__(self, extractor: FeatureExtractor, normalize: Optional[Normalize] = None) -> None:
        cfg = extractor.cfg
        if extractor.pcen is not None:
            # PCEN's smoother runs over the whole utterance from a fixed start value; it
            # would need its own carried state
            raise ValueError("streaming features support features.kind 'logmel', not 'pcen'")
        self.extractor = extractor
        self.normalize = normalize
        self.hop = cfg.hop_length
        self.n_fft = cfg.n_fft
        self.pad = cfg.n_fft // 2 if cfg.center else 0
        self.buffer = torch.zeros(0)
        self.buffer_start = 0  # global index of buffer[0]
        self.received = 0  # samples accepted so far
        self.next_frame = 0  # first frame not yet returned
        self.finished = False

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """samples: (N,) float audio at the extractor's rate -> new frames (T, D)."""
        if self.finished:
            raise RuntimeError("accept() after flush(): reset the stream first")
        samples = samples.detach().reshape(-1).to(torch.float32)
        self.buffer = torch.cat([self.buffer, samples])
        self.received += samples.numel()
        if self.received <= self.pad:  # the start's reflection needs samples 1..pad
            return self._empty()
        # frame t reads samples [t hop - pad, t hop - pad + n_fft)
        end = (self.received - self.n_fft + self.pad) // self.hop + 1
        return self._frames(end, last=None)

    def flush(self) -> torch.Tensor:
        """The frames left at the end of the utterance, (T, D)."""
        self.finished = True
        if self.received == 0:
            return self._empty()
        total = int(self.extractor.mel.num_frames(torch.tensor(self.received)))
        return self._frames(total, last=self.received - 1)

    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, self.extractor.dim)

    def _frames(self, end: int, last: Optional[int]) -> torch.Tensor:
        """Frames next_frame..end-1; ``last``: the final sample's index once known."""
        if end <= self.next_frame:
            return self._empty()
        # the padded signal those frames span, in global sample indices
        first = self.next_frame * self.hop - self.pad
        i = torch.arange(first, (end - 1) * self.hop - self.pad + self.n_fft)
        top = self.received - 1 if last is None else last
        # reflect_pad_within_lengths' mapping, so short utterances clamp as offline
        i = torch.where(i < 0, -i, torch.where(i > top, 2 * top - i, i))
        i = torch.minimum(i.clamp(min=0), torch.tensor(top))
        local = i - self.buffer_start
        if bool((local < 0).any()):  # a negative index would silently read the buffer's end
            raise RuntimeError("streaming features trimmed samples a frame still needs")
        segment = self.buffer[local]
        with torch.no_grad():
            mel = self.extractor.mel.from_padded(segment[None])
            feats = self.extractor.from_mel(mel)[0]
            if self.normalize is not None:
                feats = self.normalize(feats)
        self.next_frame = end
        # keep one sample before the next frame: the end's reflection can read it
        keep_from = max(0, self.next_frame * self.hop - self.pad - 1)
        self.buffer = self.buffer[keep_from - self.buffer_start:]
        self.buffer_start = keep_from
        return feats


def streaming_front_end(model) -> StreamingFeatures:
    """A fresh feature state for an :class:`~asr.model.ASRModel`'s front end and CMVN."""
    from asr.model import RunningMeanNormalization

    if model.cfg.cmvn == "running":
        running = RunningMeanNormalization(model.features.dim, model.cfg.cmvn_running_frames)
        return StreamingFeatures(model.features, normalize=lambda f: model.cmvn(running(f)))
    if model.cfg.cmvn != "global":
        raise ValueError(f"cmvn {model.cfg.cmvn!r} subtracts each utterance's mean over all its "
                         "frames, which a stream has only at its end; streaming needs cmvn: "
                         "global or running")
    return StreamingFeatures(model.features, normalize=model.cmvn)
