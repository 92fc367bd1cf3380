"""Offline transcription of a recording of any length: cut at pauses into pieces no longer
than the model is good at (:func:`asr.segment.split_at_pauses`), decode the pieces in
batches, and join their text, tokens and token times (seconds from the recording's start)."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from asr.segment import split_at_pauses
from asr.text import Tokenizer

__all__ = ["transcribe_wave"]


@torch.no_grad()
def transcribe_wave(model, tokenizer: Tokenizer, wave: Tensor, sample_rate: int,
                    max_segment: float = 20.0, batch_size: int = 8, **options) -> Dict:
    """Transcribe ``wave`` ``(N,)``.

    Args:
        model: an :class:`asr.model.ASRModel`.
        max_segment: the longest piece decoded at once, in seconds (0: the whole recording).
        batch_size: pieces decoded together.
        options: :meth:`asr.model.ASRModel.decode` keyword arguments (head, method, beam...).

    Returns:
        ``text``, ``score`` (summed over pieces), ``tokens``, ``times`` (seconds) and
        ``segments`` (``start``, ``end`` in seconds and ``text`` of each piece).
    """
    spans = split_at_pauses(wave, sample_rate, max_segment) if max_segment > 0 else [(0, wave.numel())]
    results: List = []
    for i in range(0, len(spans), batch_size):
        batch = spans[i: i + batch_size]
        lens = torch.tensor([e - s for s, e in batch])
        waves = torch.zeros(len(batch), int(lens.max()))
        for row, (s, e) in enumerate(batch):
            waves[row, : e - s] = wave[s:e]
        results += [r.best for r in model.decode(waves, lens, **options)]
    out = {"text": [], "score": 0.0, "tokens": [], "times": [], "segments": []}
    for (s, e), best in zip(spans, results):
        offset = s / sample_rate
        text = tokenizer.decode(best.tokens)
        if text:
            out["text"].append(text)
        out["score"] += best.score
        out["tokens"] += [tokenizer.token(t) for t in best.tokens]
        out["times"] += [round(offset + t * model.frame_seconds, 3) for t in best.times]
        out["segments"].append({"start": round(offset, 3), "end": round(e / sample_rate, 3),
                                "text": text})
    out["text"] = " ".join(out["text"])
    out["score"] = round(out["score"], 3)
    return out
