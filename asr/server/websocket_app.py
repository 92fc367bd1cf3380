"""The HTTP side: GET / (the microphone page), GET /health, GET /metrics and the
WebSocket protocol at /ws (docs/protocol.md)."""
from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from asr.server import protocol as P
from asr.server.page import PAGE_HTML
from asr.server.sessions import Closing, Done, Final, Partial, ServerBusy, Session

log = logging.getLogger(__name__)


def create_app(service) -> FastAPI:
    """service: an :class:`asr.server.service.RecognitionService`."""
    app = FastAPI(title="speechkit ASR server")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE_HTML

    @app.get("/health")
    async def health():
        return JSONResponse({"status": "ok", "model": service.model_name,
                             "active_streams": service.worker.active,
                             "max_streams": service.config.max_streams,
                             "protocol_version": P.PROTOCOL_VERSION})

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        service.metrics.connections.labels("websocket").inc()
        await WebSocketConnection(websocket, service).serve()

    return app


class WebSocketConnection:
    """One client: a reader task (audio into the session) and a writer (the session's
    results out); each side has its own timeout so a silent or stalled client ends only
    itself."""

    def __init__(self, websocket: WebSocket, service) -> None:
        self.ws, self.service, self.config = websocket, service, service.config
        self.session: Session | None = None

    async def serve(self) -> None:
        try:
            start = await self._read_start()
        except P.ProtocolError as exc:
            await self._refuse(exc.code, exc.reason)
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        try:
            self.session = self.service.worker.open_session(
                start.sample_rate, "websocket", self.config.max_buffered_seconds,
                self.config.outbox_size)
        except ServerBusy as exc:
            await self._refuse(P.CLOSE_BUSY, str(exc))
            return
        self.format = start.format
        reader = asyncio.create_task(self._read_audio())
        try:
            await self._send(P.ready_message(start, self.service.model_sample_rate))
            await self._write_results()
        except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            pass  # send blocked or the socket is gone; the session is released below
        finally:
            reader.cancel()
            self.session.release()
            await asyncio.gather(reader, return_exceptions=True)

    async def _receive(self):
        msg = await asyncio.wait_for(self.ws.receive(), self.config.idle_timeout_s)
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        return msg

    async def _read_start(self) -> P.StartMessage:
        try:
            msg = await self._receive()
        except asyncio.TimeoutError:
            raise P.ProtocolError(f"no start message within {self.config.idle_timeout_s} s",
                                  P.CLOSE_IDLE) from None
        if msg.get("text") is None:
            raise P.ProtocolError('expected a JSON "start" message first, got binary data')
        return P.parse_start(msg["text"], self.config)

    async def _read_audio(self) -> None:
        session, ended = self.session, False
        try:
            while True:
                try:
                    msg = await self._receive()
                except asyncio.TimeoutError:
                    if ended:  # the client is waiting for its results: fine
                        continue
                    self._fail(P.CLOSE_IDLE, f"no audio for {self.config.idle_timeout_s} s",
                               "idle")
                    return
                if msg.get("bytes") is not None:
                    if ended:
                        raise P.ProtocolError("audio after the end message")
                    await session.put_audio(P.decode_audio(msg["bytes"], self.format, self.config))
                elif msg.get("text") is not None:
                    if ended:
                        raise P.ProtocolError("message after the end message")
                    P.parse_control(msg["text"], self.config)
                    ended = True
                    session.finish()
        except P.ProtocolError as exc:
            self._fail(exc.code, exc.reason, "protocol")
        except WebSocketDisconnect:
            if not ended:  # an abrupt disconnect: nobody to tell, free the stream
                self.service.metrics.errors.labels("websocket", "disconnect").inc()
            session.release()
        except RuntimeError:
            session.release()

    def _fail(self, code: int, reason: str, kind: str) -> None:
        self.service.metrics.errors.labels("websocket", kind).inc()
        self.session.fail(code, reason)

    async def _write_results(self) -> None:
        while True:
            event = await self.session.next_event()
            if isinstance(event, Partial):
                await self._send(P.partial_message(event.segment, event.text))
            elif isinstance(event, Final):
                await self._send(P.final_message(event.result))
            elif isinstance(event, Done):
                await self._send(P.done_message())
                await self._close(P.CLOSE_NORMAL, "done")
                return
            elif isinstance(event, Closing):
                await self._refuse(event.code, event.reason)
                return

    async def _send(self, message: dict) -> None:
        await asyncio.wait_for(self.ws.send_text(json.dumps(message)), self.config.send_timeout_s)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code, reason[:120]), self.config.send_timeout_s)
        except (asyncio.TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            pass

    async def _refuse(self, code: int, reason: str) -> None:
        """An error event, then the close frame with the code and (short) reason."""
        try:
            await self._send(P.error_message(reason))
        except (asyncio.TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            pass
        await self._close(code, reason)
