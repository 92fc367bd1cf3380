"""Building and running the server: one decode worker, the HTTP/WebSocket app (uvicorn)
and, when asked, the Wyoming TCP server, all on one event loop."""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional, Protocol, Sequence, Tuple

from asr.server.config import ServerConfig
from asr.server.metrics import ServerMetrics
from asr.server.sessions import DecodeWorker

log = logging.getLogger(__name__)


class StreamingRecognizer(Protocol):
    """What the server needs of a recognizer (``asr.streaming.Recognizer`` or the
    onnxruntime ``export.asr_runtime.Recognizer``): streams with accept_waveform / input_finished / is_ready / finished
    / is_endpoint / result / reset, decoded in batches."""

    sample_rate: int

    def create_stream(self): ...

    def decode_streams(self, streams: Sequence) -> int: ...


@dataclass
class RecognitionService:
    """What the front ends share."""

    recognizer: StreamingRecognizer
    config: ServerConfig
    model_name: str
    kws_model: Optional[object] = None  # a kws.edge.KWSModel
    languages: Tuple[str, ...] = ("en",)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    def __post_init__(self) -> None:
        self.worker = DecodeWorker(self.recognizer, self.metrics, self.config.max_streams)

    @property
    def model_sample_rate(self) -> int:
        return self.recognizer.sample_rate


def load_service(model_path: str, config: ServerConfig, kws_model_path: Optional[str] = None,
                 search: Optional[str] = None, beam: int = 8, int8: bool = False,
                 num_threads: int = 1) -> RecognitionService:
    """``model_path``: a checkpoint (.pt, decoded with torch by ``asr.streaming``) or a
    directory written by ``python -m export asr`` (decoded with onnxruntime by
    ``export.asr_runtime``, its ``*.int8.onnx`` graphs with ``int8``)."""
    if Path(model_path).is_dir():
        from export.asr_runtime import Recognizer as OnnxRecognizer

        recognizer = OnnxRecognizer(model_path, int8=int8, method=search, beam=beam,
                                    num_threads=num_threads)
    else:
        if int8:
            raise ValueError(f"{model_path}: int8 is for an ONNX export directory "
                             "(python -m export asr), not a checkpoint")
        from asr.checkpoint import load_model
        from asr.streaming import Recognizer

        model, tokenizer, cfg = load_model(model_path)
        recognizer = Recognizer(model, tokenizer, cfg.streaming, method=search, beam=beam)
    kws = None
    if kws_model_path:
        from kws.edge import KWSModel

        kws = KWSModel(kws_model_path)
    return RecognitionService(recognizer, config, Path(model_path).stem, kws)


class RunningServer:
    """The servers on an event loop of their own thread (tests, embedding); ``stop()``."""

    def __init__(self, service: RecognitionService) -> None:
        self.service = service
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._main, name="asr-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("server did not start within 30 s")
        if self._error:
            raise RuntimeError(f"server failed to start: {self._error}") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(serve(self.service, self._on_started))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    def _on_started(self, loop, stop: asyncio.Event) -> None:
        self._loop, self._stop = loop, stop
        self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


async def serve(service: RecognitionService, on_started=None) -> None:
    """Serve until cancelled (Ctrl+C) or, with ``on_started(loop, stop_event)``, until
    the event is set."""
    import uvicorn
    from wyoming.server import AsyncTcpServer

    from asr.server.websocket_app import create_app
    from asr.server.wyoming_handler import WyomingHandler

    cfg = service.config
    service.worker.start()
    # uvicorn's own cap only stops frames far over ours, which get an error event first
    http = uvicorn.Server(uvicorn.Config(
        create_app(service), host=cfg.host, port=cfg.port, log_level="warning",
        ws_max_size=4 * max(cfg.max_frame_bytes, cfg.max_text_bytes), lifespan="off",
        timeout_graceful_shutdown=2))  # a stuck client must not hold up shutdown
    wyoming = None
    if cfg.wyoming_port is not None:
        wyoming = AsyncTcpServer(cfg.host, cfg.wyoming_port)
        await wyoming.start(partial(WyomingHandler, service=service))
    http_task = asyncio.create_task(http.serve())
    try:
        while not http.started:
            if http_task.done():
                http_task.result()  # raises the start-up error (port taken, ...)
                raise RuntimeError("HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        log.info("serving on http://%s:%d%s", cfg.host, cfg.port,
                 f" and wyoming tcp://{cfg.host}:{cfg.wyoming_port}" if wyoming else "")
        stop = asyncio.Event()
        if on_started:
            on_started(asyncio.get_running_loop(), stop)
        await asyncio.wait([http_task, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        http.should_exit = True
        await asyncio.gather(http_task, return_exceptions=True)
        if wyoming is not None:
            await wyoming.stop()
        service.worker.stop()
