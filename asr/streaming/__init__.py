"""Streaming recognition: :class:`Recognizer` (shared model) and :class:`Stream` (one per
utterance or client). See ``asr.streaming.recognizer``."""
from asr.streaming.recognizer import (STREAMING_SEARCHES, Recognizer, Stream, StreamResult,
                                      WordTime, word_times)

__all__ = ["Recognizer", "Stream", "StreamResult", "WordTime", "word_times", "STREAMING_SEARCHES"]
