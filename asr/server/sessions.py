"""The decode worker and the sessions it serves.

One thread owns the :class:`~asr.streaming.Recognizer` and every stream: it moves the
audio that connections queued into their streams, decodes one chunk of every ready stream
as one batch (``Recognizer.decode_streams``), and hands each session its partials, finals
and end back on the session's event loop. Connections only touch their session's bounded
inbox and outbox, so a slow or broken client costs its own session, never the others'
decoding.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Union

import numpy as np

from asr.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class ServerBusy(Exception):
    """All stream slots are taken."""


@dataclass
class Partial:
    segment: int
    text: str


@dataclass
class Final:
    result: object  # asr.streaming.StreamResult


@dataclass
class Done:
    """The input ended and its last final was sent."""


@dataclass
class Closing:
    """The session ends early: ``reason`` for the client, ``code`` for a close frame."""

    code: int
    reason: str


Event = Union[Partial, Final, Done, Closing]
_END = object()  # inbox marker: input_finished()


class Session:
    """One connection's stream, seen from the connection's event loop."""

    def __init__(self, worker: "DecodeWorker", loop: asyncio.AbstractEventLoop, session_id: int,
                 sample_rate: int, protocol: str, max_buffered_samples: int,
                 outbox_size: int) -> None:
        self.worker, self.loop, self.id = worker, loop, session_id
        self.sample_rate, self.protocol = sample_rate, protocol
        self.max_buffered_samples = max_buffered_samples
        self.outbox_size = outbox_size
        self._inbox: Deque[object] = collections.deque()  # guarded by worker lock
        self._inbox_samples = 0
        self._outbox: Deque[Event] = collections.deque()
        self._outbox_changed = asyncio.Event()
        self.closed = False  # no more events will come
        self.finished_input = False

    # ------------------------------------------------ connection side (event loop)
    async def put_audio(self, samples: np.ndarray) -> None:
        """Queue audio for decoding; waits while the inbox is full (backpressure: the
        connection stops reading its socket until the decoder catches up)."""
        if self.finished_input:
            raise RuntimeError("audio after the end of the input")
        while not self.closed and self.worker.inbox_samples(self) >= self.max_buffered_samples:
            await asyncio.sleep(0.01)
        if not self.closed:
            self.worker.submit(self, samples)

    def finish(self) -> None:
        """No more audio: the worker decodes the rest, then sends the last final and Done."""
        if not self.finished_input:
            self.finished_input = True
            self.worker.submit(self, _END)

    def fail(self, code: int, reason: str) -> None:
        """End the session now (protocol error, timeout): the stream is dropped and the
        connection is told why."""
        if not self.closed:
            self.worker.release(self)
            self._push(Closing(code, reason), force=True)

    def release(self) -> None:
        """The connection is gone: drop the stream, free its slot."""
        self.worker.release(self)
        self.closed = True

    async def next_event(self) -> Event:
        while not self._outbox:
            self._outbox_changed.clear()
            await self._outbox_changed.wait()
        return self._outbox.popleft()

    def _push(self, event: Event, force: bool = False) -> None:
        """Runs on the loop. A newer partial replaces an unsent one; a full outbox of
        finals means the client is not reading, and ends the session."""
        if self.closed and not force:
            return
        from asr.server.protocol import CLOSE_NOT_READING

        if isinstance(event, Partial) and self._outbox and isinstance(self._outbox[-1], Partial):
            self._outbox[-1] = event
        elif len(self._outbox) >= self.outbox_size and not force:
            self.worker.release(self)
            self._outbox.clear()
            self.worker.metrics.errors.labels(self.protocol, "not_reading").inc()
            self._outbox.append(Closing(CLOSE_NOT_READING, "client is not reading its results; "
                                        f"over {self.outbox_size} messages waiting"))
            self.closed = True
        else:
            self._outbox.append(event)
            if isinstance(event, (Done, Closing)):
                self.closed = True
        self._outbox_changed.set()

    # ------------------------------------------------ worker side
    def deliver(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self._push, event)
        except RuntimeError:  # the loop is closed: nobody to tell
            pass


class _Slot:
    """The worker's own view of a session: the stream and what has been sent."""

    def __init__(self, session: Session, stream) -> None:
        self.session, self.stream = session, stream
        self.last_partial: Optional[str] = None
        self.finals = 0


class DecodeWorker:
    """A thread that decodes the streams of all sessions in batches."""

    def __init__(self, recognizer, metrics: ServerMetrics, max_streams: int) -> None:
        self.recognizer, self.metrics, self.max_streams = recognizer, metrics, max_streams
        self._cond = threading.Condition()
        self._slots: Dict[int, _Slot] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="asr-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._slots)

    def open_session(self, sample_rate: int, protocol: str, max_buffered_seconds: float,
                     outbox_size: int) -> Session:
        """A new stream for a connection (on its event loop); ServerBusy when full."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if len(self._slots) >= self.max_streams:
                raise ServerBusy(f"server busy: all {self.max_streams} streams in use")
            session = Session(self, loop, next(self._ids), sample_rate, protocol,
                              max(1, int(max_buffered_seconds * sample_rate)), outbox_size)
            self._slots[session.id] = _Slot(session, self.recognizer.create_stream())
            self.metrics.active_streams.labels(protocol).inc()
        return session

    def submit(self, session: Session, item) -> None:
        with self._cond:
            if session.id not in self._slots:
                return
            session._inbox.append(item)
            if item is not _END:
                session._inbox_samples += len(item)
            self._cond.notify()

    def inbox_samples(self, session: Session) -> int:
        with self._cond:
            return session._inbox_samples

    def release(self, session: Session) -> None:
        with self._cond:
            if self._slots.pop(session.id, None) is not None:
                self.metrics.active_streams.labels(session.protocol).dec()
            session._inbox.clear()
            session._inbox_samples = 0

    # ------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    return
                work = [(slot, list(slot.session._inbox)) for slot in self._slots.values()]
                for slot, _ in work:
                    slot.session._inbox.clear()
                    slot.session._inbox_samples = 0
            try:
                self._step(work)
            except Exception as exc:  # a decoder bug must not kill the server silently
                log.exception("decode step failed")
                from asr.server.protocol import CLOSE_INTERNAL

                for slot, _ in work:
                    self.release(slot.session)
                    slot.session.deliver(Closing(CLOSE_INTERNAL, f"decoder error: {exc}"))

    def _has_work(self) -> bool:
        return any(slot.session._inbox or slot.stream.is_ready() for slot in self._slots.values())

    def _step(self, work: List) -> None:
        for slot, items in work:
            for item in items:
                if item is _END:
                    slot.stream.input_finished()
                else:
                    slot.stream.accept_waveform(slot.session.sample_rate, item)
                    self.metrics.audio_seconds.labels(slot.session.protocol).inc(
                        len(item) / slot.session.sample_rate)
        slots = [slot for slot, _ in work]
        with self.metrics.decode_seconds.time():
            n = self.recognizer.decode_streams([slot.stream for slot in slots])
        if n:
            self.metrics.batch_size.observe(n)
        for slot in slots:
            self._emit(slot)

    def _emit(self, slot: _Slot) -> None:
        """Endpoint and end rules as in ``python -m asr transcribe --streaming``."""
        stream, session = slot.stream, slot.session
        if stream.finished:
            result = stream.result()
            if result.tokens or not slot.finals:
                session.deliver(Final(result))
                self.metrics.finals.labels(session.protocol).inc()
            session.deliver(Done())
            self.release(session)
            return
        if stream.is_endpoint():
            result = stream.result()
            if result.tokens:
                session.deliver(Final(result))
                slot.finals += 1
                self.metrics.finals.labels(session.protocol).inc()
            stream.reset()
            slot.last_partial = None
            return
        result = stream.result()
        if result.text != slot.last_partial and (result.text or slot.last_partial):
            slot.last_partial = result.text
            session.deliver(Partial(result.segment, result.text))
            self.metrics.partials.labels(session.protocol).inc()
