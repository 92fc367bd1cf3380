"""The WebSocket protocol (docs/protocol.md): parsing the client's messages, building the
server's, and the close codes. No I/O here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from asr.server.config import ServerConfig

PROTOCOL_VERSION = 1
# sample width of each accepted encoding
FORMATS = {"pcm_s16le": 2, "pcm_f32le": 4}

# close codes (RFC 6455; 4xxx are this protocol's own)
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1008  # policy violation: wrong message for the state
CLOSE_UNSUPPORTED = 1003  # unsupported data: text where audio is expected, format, rate
CLOSE_INVALID = 1007  # invalid payload: bad JSON, empty or misaligned audio
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BUSY = 1013  # try again later: too many streams
CLOSE_IDLE = 4408  # nothing received for idle_timeout_s
CLOSE_NOT_READING = 4429  # results piled up or a send blocked: the client is not reading


class ProtocolError(Exception):
    """A client message the protocol refuses: ``reason`` for the error event, ``code``
    for the close frame."""

    def __init__(self, reason: str, code: int = CLOSE_PROTOCOL) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


@dataclass
class StartMessage:
    sample_rate: int
    format: str
    version: int = PROTOCOL_VERSION


def parse_json(text: str, config: ServerConfig) -> Dict[str, Any]:
    if len(text.encode("utf-8")) > config.max_text_bytes:
        raise ProtocolError(f"text message over {config.max_text_bytes} bytes", CLOSE_TOO_BIG)
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("text message is not JSON", CLOSE_INVALID) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError('a JSON message must be an object with a "type"', CLOSE_INVALID)
    return msg


def parse_start(text: str, config: ServerConfig) -> StartMessage:
    msg = parse_json(text, config)
    if msg["type"] != "start":
        raise ProtocolError(f'expected a "start" message first, got {msg["type"]!r}')
    version = msg.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported "
                            f"(this server speaks {PROTOCOL_VERSION})", CLOSE_UNSUPPORTED)
    fmt = msg.get("format", "pcm_s16le")
    if fmt not in FORMATS:
        raise ProtocolError(f"format {fmt!r} is not supported; use one of {sorted(FORMATS)}",
                            CLOSE_UNSUPPORTED)
    rate = msg.get("sample_rate")
    if (not isinstance(rate, int) or isinstance(rate, bool)
            or not config.min_sample_rate <= rate <= config.max_sample_rate):
        raise ProtocolError(f"sample_rate {rate!r} is not supported; give an integer from "
                            f"{config.min_sample_rate} to {config.max_sample_rate}",
                            CLOSE_UNSUPPORTED)
    return StartMessage(sample_rate=rate, format=fmt, version=version)


def parse_control(text: str, config: ServerConfig) -> str:
    """A text message after the start: only "end" is one."""
    try:
        msg = parse_json(text, config)
    except ProtocolError as exc:
        if exc.code == CLOSE_INVALID:  # plain text where audio belongs
            raise ProtocolError("expected binary audio frames or an end message, got text",
                                CLOSE_UNSUPPORTED) from None
        raise
    if msg["type"] != "end":
        raise ProtocolError(f'expected binary audio or an "end" message, got {msg["type"]!r}',
                            CLOSE_UNSUPPORTED)
    return "end"


def decode_audio(data: bytes, fmt: str, config: ServerConfig) -> np.ndarray:
    """A binary frame -> (N,) float32 samples in [-1, 1]."""
    width = FORMATS[fmt]
    if not data:
        raise ProtocolError("empty audio frame", CLOSE_INVALID)
    if len(data) > config.max_frame_bytes:
        raise ProtocolError(f"audio frame of {len(data)} bytes is over the limit of "
                            f"{config.max_frame_bytes}", CLOSE_TOO_BIG)
    if len(data) % width:
        raise ProtocolError(f"audio frame of {len(data)} bytes is not a whole number of "
                            f"{fmt} samples", CLOSE_INVALID)
    if fmt == "pcm_s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError("audio frame has NaN or Inf samples", CLOSE_INVALID)
    return samples


def ready_message(start: StartMessage, model_sample_rate: int) -> Dict[str, Any]:
    return {"type": "ready", "version": PROTOCOL_VERSION, "sample_rate": start.sample_rate,
            "format": start.format, "model_sample_rate": model_sample_rate}


def partial_message(segment: int, text: str) -> Dict[str, Any]:
    return {"type": "partial", "segment": segment, "text": text}


def final_message(result) -> Dict[str, Any]:
    """result: an asr.streaming.StreamResult."""
    words: List[Dict[str, Any]] = [{"word": w.word, "start": round(w.start, 3),
                                    "end": round(w.end, 3)} for w in result.words]
    return {"type": "final", "segment": result.segment, "text": result.text,
            "start": round(result.start, 3), "words": words}


def done_message() -> Dict[str, Any]:
    return {"type": "done"}


def error_message(reason: str) -> Dict[str, Any]:
    return {"type": "error", "reason": reason}
