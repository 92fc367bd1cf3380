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


class SegmentStream:
    """The segment logic shared by the torch Stream (``asr.streaming``) and the onnxruntime
    one (``export.asr_runtime``): readiness, trailing-silence endpoints, results and reset.

    A subclass sets ``_recognizer`` (with ``config``, ``frame_seconds``, ``tokenizer``,
    ``sample_rate``, ``best(search, final)`` and ``new_search()``), ``_search`` (with
    ``frames``), ``_features`` (streaming front end: ``accept``, ``flush``), ``_pending``
    (frames waiting, (T, F)), ``_input_rate`` and ``_resampler`` (None at first),
    ``_segment_start``, ``_segment``, ``_input_finished`` and ``_finished`` (all set by
    :meth:`_start_stream`), and gives ``_resampler_class`` and defines ``_as_samples`` and
    ``_add_frames`` for its array type.
    """

    def _start_stream(self, recognizer, features, pending) -> None:
        """The state every stream starts with: ``features`` its streaming front end,
        ``pending`` an empty (0, F) frame buffer of its array type."""
        self._recognizer = recognizer
        self._features = features
        self._pending = pending  # frames for the encoder
        self._input_rate: Optional[int] = None
        self._resampler = None
        self._search = recognizer.new_search()
        self._segment = 0
        self._segment_start = 0  # encoder frames before the current segment
        self._input_finished = False
        self._finished = False  # the encoder has had the last frame

    def accept_waveform(self, sample_rate: int, samples) -> None:
        """samples: (N,) float audio in [-1, 1] at ``sample_rate`` (resampled as needed;
        a stream keeps the rate of its first piece)."""
        if self._input_finished:
            raise RuntimeError("accept_waveform() after input_finished()")
        samples = self._as_samples(samples)
        if self._input_rate is None:
            self._input_rate = int(sample_rate)
            if self._input_rate != self._recognizer.sample_rate:
                self._resampler = self._resampler_class(self._input_rate,
                                                        self._recognizer.sample_rate)
        elif int(sample_rate) != self._input_rate:
            raise ValueError(f"stream started at {self._input_rate} Hz, got {sample_rate} Hz")
        if self._resampler is not None:
            samples = self._resampler.accept(samples)
        self._add_frames(self._features.accept(samples))

    def input_finished(self) -> None:
        """No more audio: the last frames (the end's padding) become ready."""
        if self._input_finished:
            return
        if self._resampler is not None:
            self._add_frames(self._features.accept(self._resampler.flush()))
        self._add_frames(self._features.flush())
        self._input_finished = True

    def is_ready(self) -> bool:
        """A chunk of frames is waiting, or the last frames after input_finished()."""
        if self._finished:
            return False
        return (self._pending.shape[0] >= self._recognizer.config.chunk_frames
                or self._input_finished)

    @property
    def finished(self) -> bool:
        """All audio has been decoded."""
        return self._finished

    def is_endpoint(self) -> bool:
        """The current segment ended by the trailing-silence rules of the config."""
        rules = self._recognizer.config.endpoint
        seconds = self._recognizer.frame_seconds
        hyp = self._recognizer.best(self._search, final=False)
        frames = self._search.frames
        trailing = (frames - (hyp.times[-1] + 1 if hyp.tokens else 0)) * seconds
        if rules.max_segment > 0 and frames * seconds >= rules.max_segment:
            return True
        limit = rules.silence_after_speech if hyp.tokens else rules.silence_without_speech
        return limit > 0 and trailing >= limit

    def result(self) -> StreamResult:
        """The current segment: partial, or final at an endpoint or the end of the input."""
        rec = self._recognizer
        final = self._finished or self.is_endpoint()
        hyp = rec.best(self._search, final=final)
        offset = self._segment_start
        times = [(offset + t) * rec.frame_seconds for t in hyp.times]
        return StreamResult(
            text=rec.tokenizer.decode(hyp.tokens), tokens=list(hyp.tokens), times=times,
            words=word_times(hyp.tokens, times, rec.tokenizer, rec.frame_seconds),
            segment=self._segment, start=offset * rec.frame_seconds, is_final=final)

    def reset(self) -> None:
        """Start the next segment (after an endpoint and its final result); the audio,
        features and encoder state carry on, so times stay relative to the stream's start."""
        self._segment_start += self._search.frames
        self._segment += 1
        self._search = self._recognizer.new_search()
