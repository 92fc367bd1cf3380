"""What a stream reports: :class:`StreamResult` with :class:`WordTime` words, and
:func:`word_times`. Torch-free, shared by ``asr.streaming`` and the onnxruntime runtime
(``export.asr_runtime``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from asr.text import Tokenizer


@dataclass
class WordTime:
    word: str
    start: float  # seconds from the stream's start
    end: float


@dataclass
class StreamResult:
    """A segment's text so far. Times are seconds from the stream's start."""

    text: str
    tokens: List[int]
    times: List[float]
    words: List[WordTime] = field(default_factory=list)
    segment: int = 0  # index of the segment within the stream
    start: float = 0.0  # where the segment began
    is_final: bool = False  # an endpoint or the end of the input closed it


def word_times(tokens: Sequence[int], times: Sequence[float], tokenizer: Tokenizer,
               frame_seconds: float) -> List[WordTime]:
    """Words from token pieces (a space, or SentencePiece's "▁", starts a new word): each
    starts at its first token's time and ends one frame after its last token's."""
    words: List[WordTime] = []
    current: Optional[WordTime] = None
    for tok, t in zip(tokens, times):
        for ch in tokenizer.token(tok).replace("\u2581", " "):
            if ch == " ":
                current = None
                continue
            if current is None:
                current = WordTime("", t, t + frame_seconds)
                words.append(current)
            current.word += ch
            current.end = t + frame_seconds
    return words
