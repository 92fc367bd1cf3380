"""The Wyoming protocol (Home Assistant, Rhasspy) over the same decode worker:
describe -> info; transcribe + audio-start/chunk/stop -> transcript-start,
transcript-chunk per final segment, transcript, transcript-stop (the order the protocol
asks for, so clients that do not stream still get their transcript); detect + audio ->
detection(s) or not-detected, with the --kws-model."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import List, Optional

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import (AsrModel, AsrProgram, Attribution, Describe, Info, WakeModel,
                          WakeProgram)
from wyoming.server import AsyncEventHandler
from wyoming.wake import Detect, Detection, NotDetected

from asr.server.sessions import Closing, Done, Final, ServerBusy, Session

log = logging.getLogger(__name__)
ATTRIBUTION = Attribution(name="speechkit", url="https://example.invalid/speechkit")


def wyoming_info(service) -> Info:
    asr = AsrProgram(
        name="speechkit-asr", attribution=ATTRIBUTION, installed=True,
        description="speechkit streaming recognizer", version=None,
        models=[AsrModel(name=service.model_name, attribution=ATTRIBUTION, installed=True,
                         description=None, version=None, languages=list(service.languages))],
        supports_transcript_streaming=True, requires_external_vad=False)
    wake = []
    if service.kws_model is not None:
        kws = service.kws_model
        wake = [WakeProgram(
            name="speechkit-kws", attribution=ATTRIBUTION, installed=True,
            description="speechkit keyword spotter", version=None,
            models=[WakeModel(name=kws.keyword, attribution=ATTRIBUTION, installed=True,
                              description=None, version=None, languages=["en"],
                              phrase=kws.keyword)])]
    return Info(asr=[asr], wake=wake)


class EventTooBig(ValueError):
    """A Wyoming event over the server's limits; the message names the field and limit."""


async def read_event_limited(reader: asyncio.StreamReader, max_header_bytes: int,
                             max_data_bytes: int, max_payload_bytes: int) -> Optional[Event]:
    """``wyoming.event.async_read_event`` with limits: the JSON header line, ``data_length``
    and ``payload_length`` are checked before anything that large is read, so a client
    declaring a huge payload costs nothing. Returns None at the end of the stream; raises
    :class:`EventTooBig` over a limit and ValueError on a malformed header."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ConnectionError("connection closed inside an event header") from None
    except asyncio.LimitOverrunError:
        raise EventTooBig(f"event header line is over the limit of {max_header_bytes} "
                          "bytes") from None
    if len(line) > max_header_bytes:
        raise EventTooBig(f"event header line of {len(line)} bytes is over the limit of "
                          f"{max_header_bytes}")
    try:
        header = json.loads(line)
    except ValueError:
        raise ValueError("event header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError('event header must be a JSON object with a string "type"')
    lengths = {}
    for key, limit in (("data_length", max_data_bytes), ("payload_length", max_payload_bytes)):
        value = header.get(key)
        if value is None:
            lengths[key] = 0
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        if value > limit:
            raise EventTooBig(f"{key} {value} is over the limit of {limit} bytes "
                              f"(event {header['type']!r})")
        lengths[key] = value
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("event data must be a JSON object")
    if lengths["data_length"]:
        extra = json.loads(await reader.readexactly(lengths["data_length"]))
        if not isinstance(extra, dict):
            raise ValueError("event data must be a JSON object")
        data.update(extra)
    payload = None
    if lengths["payload_length"]:
        payload = await reader.readexactly(lengths["payload_length"])
    return Event(type=header["type"], data=data, payload=payload)


def pcm16_samples(chunk: AudioChunk) -> np.ndarray:
    return np.frombuffer(chunk.audio, dtype="<i2").astype(np.float32) / 32768.0


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection; any number of requests, one after another."""

    def __init__(self, reader, writer, service) -> None:
        super().__init__(reader, writer)
        self.service = service
        self.mode = "transcribe"
        self.wake_names: Optional[List[str]] = None
        self.session: Optional[Session] = None
        self.results: Optional[asyncio.Task] = None
        self.converter: Optional[AudioChunkConverter] = None
        self.kws_stream = None
        self.detected = False
        service.metrics.connections.labels("wyoming").inc()

    async def run(self) -> None:
        """The base class's loop, with the idle timeout: a silent client is dropped."""
        cfg = self.service.config
        try:
            while True:
                try:
                    event = await asyncio.wait_for(
                        read_event_limited(self.reader, cfg.max_text_bytes, cfg.max_text_bytes,
                                           cfg.max_frame_bytes), cfg.idle_timeout_s)
                except asyncio.TimeoutError:
                    self.service.metrics.errors.labels("wyoming", "idle").inc()
                    break
                except (EventTooBig, ValueError) as exc:
                    # the rest of the stream cannot be framed: say why, then close
                    kind = "too_big" if isinstance(exc, EventTooBig) else "invalid"
                    self.service.metrics.errors.labels("wyoming", kind).inc()
                    log.info("wyoming client refused: %s", exc)
                    try:
                        await self.write_event(Error(str(exc), kind).event())
                        await self._lingering_close()
                    except (ConnectionError, OSError):
                        pass
                    break
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.info("wyoming client dropped: %s", exc)
        finally:
            await self.disconnect()
            self.writer.close()

    async def _lingering_close(self, seconds: float = 2.0, max_bytes: int = 1 << 24) -> None:
        """Half-close, then read and drop what the client still sends (for at most
        ``seconds`` and ``max_bytes``): closing with unread input makes the kernel answer
        with a reset, which can destroy the error event before the client reads it."""
        if self.writer.can_write_eof():
            self.writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline, dropped = loop.time() + seconds, 0
        while dropped < max_bytes and (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except asyncio.TimeoutError:
                return
            if not chunk:
                return
            dropped += len(chunk)

    async def disconnect(self) -> None:
        if self.session is not None:
            self.session.release()
        if self.results is not None:
            self.results.cancel()

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(wyoming_info(self.service).event())
        elif Transcribe.is_type(event.type):
            self.mode = "transcribe"
        elif Detect.is_type(event.type):
            if self.service.kws_model is None:
                await self.write_event(Error("no wake word model (--kws-model)", "no_wake").event())
                return True
            self.mode = "detect"
            self.wake_names = Detect.from_event(event).names
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            return await (self._start_detect(start) if self.mode == "detect"
                          else self._start_transcribe(start))
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if self.kws_stream is not None:
                await self._detect(chunk)
            elif self.session is not None:
                await self.session.put_audio(pcm16_samples(self.converter.convert(chunk)))
        elif AudioStop.is_type(event.type):
            if self.kws_stream is not None:
                await self._stop_detect()
            elif self.session is not None:
                self.session.finish()
                await self.results
                self.session = self.results = None
        return True

    # ------------------------------------------------ transcribe
    async def _start_transcribe(self, start: AudioStart) -> bool:
        cfg = self.service.config
        try:
            self.session = self.service.worker.open_session(
                start.rate, "wyoming", cfg.max_buffered_seconds, cfg.outbox_size)
        except ServerBusy as exc:
            await self.write_event(Error(str(exc), "busy").event())
            return False
        self.converter = AudioChunkConverter(rate=start.rate, width=2, channels=1)
        self.results = asyncio.create_task(self._write_transcript(self.session))
        return True

    async def _write_transcript(self, session: Session) -> None:
        texts: List[str] = []
        await self.write_event(TranscriptStart(language=self.service.languages[0]).event())
        while True:
            event = await session.next_event()
            if isinstance(event, Final) and event.result.text:
                chunk = (" " if texts else "") + event.result.text
                texts.append(event.result.text)
                await self.write_event(TranscriptChunk(chunk).event())
            elif isinstance(event, Done):
                await self.write_event(Transcript(" ".join(texts)).event())
                await self.write_event(TranscriptStop().event())
                return
            elif isinstance(event, Closing):
                await self.write_event(Error(event.reason, str(event.code)).event())
                return

    # ------------------------------------------------ detect
    async def _start_detect(self, start: AudioStart) -> bool:
        kws = self.service.kws_model
        self.kws_stream = kws.stream()
        self.detected = False
        self.converter = AudioChunkConverter(rate=kws.sample_rate, width=2, channels=1)
        return True

    async def _detect(self, chunk: AudioChunk) -> None:
        samples = pcm16_samples(self.converter.convert(chunk))
        # onnxruntime off the event loop, so other connections keep being served
        detections = await asyncio.to_thread(self.kws_stream.accept_waveform, samples)
        await self._report(detections)

    async def _report(self, detections) -> None:
        for det in detections:
            if self.wake_names and det.label not in self.wake_names:
                continue
            self.detected = True
            self.service.metrics.detections.inc()
            await self.write_event(Detection(name=det.label,
                                             timestamp=int(det.time_s * 1000)).event())

    async def _stop_detect(self) -> None:
        await self._report(await asyncio.to_thread(self.kws_stream.flush))
        if not self.detected:
            await self.write_event(NotDetected().event())
        self.kws_stream = None
