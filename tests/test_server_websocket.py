"""The WebSocket protocol (docs/protocol.md) driven by a plain `websockets` client: the
finals equal the recognizer's own offline streaming result; every bad input gets an error
event and a close code, and the server keeps serving the others meanwhile."""
import asyncio
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

websockets = pytest.importorskip("websockets")
httpx = pytest.importorskip("httpx")

from server_helpers import (make_streaming_checkpoint, offline_streaming_text,  # noqa: E402
                            start_server, write_speechlike_wav)

pytestmark = pytest.mark.timeout(60)
START = {"type": "start", "version": 1, "sample_rate": 16000, "format": "pcm_s16le"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws")
    model = make_streaming_checkpoint(tmp / "model.pt")
    wav = write_speechlike_wav(tmp / "a.wav")
    wav8k = write_speechlike_wav(tmp / "b8k.wav", seconds=2.0, rate=8000, seed=1)
    return model, wav, wav8k


@pytest.fixture(scope="module")
def server(files):
    srv = start_server(files[0], max_frame_bytes=32000, idle_timeout_s=2.0, send_timeout_s=2.0,
                       max_streams=4)
    yield srv
    srv.stop()


def url(srv):
    return f"ws://127.0.0.1:{srv.service.config.port}/ws"


def pcm(path):
    data, rate = sf.read(str(path), dtype="int16")
    return data.astype("<i2").tobytes(), rate


async def transcribe(srv, path, chunk=3200, rate=None):
    """Send a file; returns (messages, close code)."""
    audio, file_rate = pcm(path)
    async with websockets.connect(url(srv)) as ws:
        await ws.send(json.dumps({**START, "sample_rate": rate or file_rate}))
        for i in range(0, len(audio), chunk):
            await ws.send(audio[i:i + chunk])
        await ws.send(json.dumps({"type": "end"}))
        msgs = await read_all(ws)
        return msgs, ws.close_code


async def refused(srv, *sends):
    """Send these messages; returns (error events, close code)."""
    async with websockets.connect(url(srv)) as ws:
        for m in sends:
            await ws.send(json.dumps(m) if isinstance(m, dict) else m)
        msgs = await read_all(ws)
        return [m for m in msgs if m["type"] == "error"], ws.close_code, msgs


async def read_all(ws):
    """Every message until the close (any code)."""
    msgs = []
    try:
        async for m in ws:
            msgs.append(json.loads(m))
    except websockets.ConnectionClosed:
        pass
    return msgs


def final_text(msgs):
    return " ".join(m["text"] for m in msgs if m["type"] == "final" and m["text"])


def test_finals_equal_the_offline_streaming_result_also_resampled(server, files):
    model, wav, wav8k = files
    for path in (wav, wav8k):
        ref = offline_streaming_text(model, path)
        assert ref["text"] and len(ref["segments"]) >= 2  # the random model says something
        msgs, code = asyncio.run(transcribe(server, path))
        assert code == 1000
        assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "done"
        assert any(m["type"] == "partial" and m["text"] for m in msgs)
        finals = [m for m in msgs if m["type"] == "final"]
        assert final_text(msgs) == ref["text"]
        assert [f["words"] for f in finals] == [
            [{k: round(v, 3) if isinstance(v, float) else v for k, v in w.items()}
             for w in seg["words"]] for seg in ref["segments"]]


@pytest.mark.parametrize("sends,code,reason", [
    ([b"\x00\x01" * 100], 1008, "start"),  # audio before the start message
    (["hello"], 1007, "JSON"),
    ([{"type": "end"}], 1008, "start"),
    ([{**START, "sample_rate": 96000}], 1003, "sample_rate"),
    ([{**START, "sample_rate": "16k"}], 1003, "sample_rate"),
    ([{**START, "format": "mp3"}], 1003, "format"),
    ([{**START, "version": 2}], 1003, "version"),
    ([START, b"\x00" * 40000], 1009, "over the limit"),
    ([START, b""], 1007, "empty"),
    ([START, b"\x00" * 101], 1007, "whole number"),
    ([START, "some text"], 1003, "got text"),
    ([START, {"type": "pause"}], 1003, "pause"),
    # 5 s of audio before the end: its decoding outlasts the reading of the next message, so
    # the server sees the late audio before it could send "done" and close normally (with
    # 0.1 s the "done" sometimes came first under load, and the late audio was never read)
    ([START, *[b"\x00" * 16000] * 10, {"type": "end"}, b"\x00" * 3200], 1008, "after the end"),
])
def test_bad_input_gets_an_error_event_and_a_close_code(server, sends, code, reason):
    errors, got, msgs = asyncio.run(refused(server, *sends))
    assert got == code, msgs
    assert len(errors) == 1 and reason in errors[0]["reason"], msgs


def test_idle_client_is_closed(server):
    async def idle():
        async with websockets.connect(url(server)) as ws:
            await ws.send(json.dumps(START))
            msgs = await read_all(ws)  # sends nothing more
            return msgs, ws.close_code
    msgs, code = asyncio.run(idle())
    assert code == 4408 and msgs[-1]["type"] == "error" and "no audio" in msgs[-1]["reason"]


def test_abrupt_disconnects_and_a_silent_reader_do_not_stall_the_others(server, files):
    model, wav, _ = files
    ref = offline_streaming_text(model, wav)["text"]
    audio, _ = pcm(wav)
    port = server.service.config.port

    async def scenario():
        # 1) clients that vanish mid-stream: a websocket dropped and a raw TCP reset
        for _ in range(3):
            ws = await websockets.connect(url(server))
            await ws.send(json.dumps(START))
            await ws.send(audio[:16000])
            ws.transport.abort()
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        raw.close()
        # 2) a client that streams but never reads its results (its library stops
        #    reading the socket after one queued message)
        silent = await websockets.connect(url(server), max_queue=1)
        await silent.send(json.dumps(START))
        for _ in range(20):
            await silent.send(audio[:32000])
        # 3) meanwhile a normal client gets its whole, correct transcript, in time
        msgs, code = await asyncio.wait_for(transcribe(server, wav), 30)
        silent.transport.abort()
        return msgs, code

    msgs, code = asyncio.run(scenario())
    assert code == 1000 and final_text(msgs) == ref
    # every dropped stream was freed
    for _ in range(100):
        health = httpx.get(f"http://127.0.0.1:{port}/health").json()
        if health["active_streams"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert health["active_streams"] == 0


def test_results_a_client_does_not_read_end_its_session_not_the_server(files):
    # outbox of 2 messages: finals pile up when nobody reads them
    srv = start_server(files[0], outbox_size=2, send_timeout_s=1.0)
    try:
        worker = srv.service.worker
        from asr.server.sessions import Closing, Final, Partial

        async def pile_up():
            session = worker.open_session(16000, "websocket", 5.0, 2)
            for i in range(5):  # newer partials replace unsent ones
                session._push(Partial(0, "x" * i))
            assert len(session._outbox) == 1 and session._outbox[0].text == "xxxx"
            session._push(Final(None))
            session._push(Final(None))  # the third message: over the limit
            event = await session.next_event()
            return event, worker.active

        event, active = asyncio.run(pile_up())
        assert isinstance(event, Closing) and event.code == 4429 and active == 0
    finally:
        srv.stop()


def test_too_many_streams_are_refused_with_try_again_later(server):
    async def crowd():
        conns = []
        for _ in range(4):
            ws = await websockets.connect(url(server))
            await ws.send(json.dumps(START))
            assert json.loads(await ws.recv())["type"] == "ready"
            conns.append(ws)
        errors, code, _ = await refused(server, START)
        for ws in conns:
            await ws.close()
        return errors, code
    errors, code = asyncio.run(crowd())
    assert code == 1013 and "busy" in errors[0]["reason"]


def test_health_and_metrics(server):
    port = server.service.config.port
    health = httpx.get(f"http://127.0.0.1:{port}/health").json()
    assert health["status"] == "ok" and health["protocol_version"] == 1
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'asr_connections_total{protocol="websocket"}' in metrics.text
    assert "asr_decode_batch_size_bucket" in metrics.text


def test_cli_client_prints_partials_and_finals(server, files):
    model, _, wav8k = files
    out = subprocess.run([sys.executable, "-m", "asr", "client", "--url", url(server),
                          "--speed", "4", str(wav8k)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    msgs = [json.loads(line) for line in out.stdout.splitlines()]
    assert {m["type"] for m in msgs} >= {"ready", "partial", "final", "done"}
    assert final_text(msgs) == offline_streaming_text(model, wav8k)["text"]
