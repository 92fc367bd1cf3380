"""Prometheus metrics of one server (its own registry, so servers in one process, as in
tests, do not collide)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter("asr_connections", "Connections accepted", ["protocol"],
                                   registry=r)
        self.active_streams = Gauge("asr_active_streams", "Recognition streams open",
                                    ["protocol"], registry=r)
        self.errors = Counter("asr_errors", "Sessions ended by an error", ["protocol", "kind"],
                              registry=r)
        self.audio_seconds = Counter("asr_audio_seconds", "Audio received, in seconds",
                                     ["protocol"], registry=r)
        self.partials = Counter("asr_partials", "Partial results sent", ["protocol"], registry=r)
        self.finals = Counter("asr_finals", "Final results sent", ["protocol"], registry=r)
        self.detections = Counter("asr_wake_detections", "Wake words detected", registry=r)
        self.batch_size = Histogram("asr_decode_batch_size", "Streams decoded per batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.decode_seconds = Histogram("asr_decode_step_seconds", "Time of one decode step",
                                        registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
