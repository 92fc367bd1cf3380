"""The server's limits and addresses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # HTTP: the page, /ws, /health, /metrics
    wyoming_port: Optional[int] = None  # Wyoming over TCP; None: off
    max_streams: int = 16  # concurrent recognition streams, all protocols together
    max_frame_bytes: int = 64000  # one binary audio frame (2 s of 16 kHz pcm_s16le)
    max_text_bytes: int = 4096  # one JSON control message
    min_sample_rate: int = 8000
    max_sample_rate: int = 48000
    max_buffered_seconds: float = 5.0  # audio accepted but not yet decoded, per stream;
    # past it the connection stops reading (backpressure), so memory stays bounded
    outbox_size: int = 64  # results waiting to be sent, per connection; partials coalesce
    idle_timeout_s: float = 30.0  # no message from the client for this long: closed
    send_timeout_s: float = 10.0  # a send blocked this long (client not reading): closed
