"""The Wyoming side, driven by the wyoming package's own client: describe -> info with the
ASR model and the wake word; transcribe a file -> the recognizer's offline streaming
result, with the streaming transcript events in the protocol's order; detect -> detection
on a real "computer" recording, not-detected on a not-wake-word one."""
import asyncio
import glob
import json
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wyoming")
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop  # noqa: E402
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.wake import Detect, Detection, NotDetected  # noqa: E402

from kws.edge import read_audio  # noqa: E402
from server_helpers import (make_streaming_checkpoint, offline_streaming_text,  # noqa: E402
                            start_server, write_speechlike_wav)

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]
KWS = ROOT / "data" / "models" / "computer_crnn.onnx"
PRECISE = Path("/work/shared/corpora/mycroft_precise")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wy")
    model = make_streaming_checkpoint(tmp / "model.pt")
    wav = write_speechlike_wav(tmp / "a.wav", seconds=2.5, rate=22050, seed=2)
    srv = start_server(model, kws_model=str(KWS), wyoming=True)
    yield srv, model, wav
    srv.stop()


def client(srv):
    return AsyncTcpClient("127.0.0.1", srv.service.config.wyoming_port)


async def send_audio(c, wave: np.ndarray, rate: int, chunk=1024):
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    await c.write_event(AudioStart(rate=rate, width=2, channels=1).event())
    for i in range(0, len(pcm), chunk * 2):
        await c.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                       audio=pcm[i:i + chunk * 2]).event())
    await c.write_event(AudioStop().event())


async def read_until(c, *types):
    events = []
    while True:
        event = await asyncio.wait_for(c.read_event(), 20)
        assert event is not None, "server closed the connection"
        events.append(event)
        if any(t.is_type(event.type) for t in types):
            return events


def test_describe_lists_the_asr_model_and_the_wake_word(setup):
    srv, _, _ = setup

    async def describe():
        async with client(srv) as c:
            await c.write_event(Describe().event())
            return Info.from_event((await read_until(c, Info))[-1])
    info = asyncio.run(describe())
    assert [m.name for m in info.asr[0].models] == ["model"]
    assert info.asr[0].supports_transcript_streaming
    assert [m.name for m in info.wake[0].models] == ["computer"]


def test_transcribe_a_file_twice_on_one_connection(setup):
    srv, model, wav = setup
    import soundfile as sf

    wave, rate = sf.read(str(wav), dtype="float32")
    ref = offline_streaming_text(model, wav)["text"]
    assert ref

    async def transcribe():
        results = []
        async with client(srv) as c:
            for _ in range(2):
                await c.write_event(Transcribe(language="en").event())
                await send_audio(c, wave, rate)
                results.append(await read_until(c, TranscriptStop))
        return results
    for events in asyncio.run(transcribe()):
        types = [e.type for e in events]
        assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"]
        chunks = "".join(TranscriptChunk.from_event(e).text for e in events
                         if TranscriptChunk.is_type(e.type))
        assert chunks == Transcript.from_event(events[-2]).text == ref


@pytest.mark.skipif(not PRECISE.is_dir(), reason="Mycroft Precise recordings not present")
def test_detect_the_wake_word_and_not_detected_otherwise(setup):
    srv, _, _ = setup
    positive = sorted(glob.glob(str(PRECISE / "computer/en/*.flac")))[0]
    negative = sorted(glob.glob(str(PRECISE / "not-wake-words/en/*.flac")))[0]

    async def detect(path):
        async with client(srv) as c:
            await c.write_event(Detect(names=["computer"]).event())
            await send_audio(c, read_audio(path, 16000), 16000)
            return await read_until(c, NotDetected, Detection)
    hit = asyncio.run(detect(positive))[-1]
    assert Detection.is_type(hit.type) and Detection.from_event(hit).name == "computer"
    miss = asyncio.run(detect(negative))[-1]
    assert NotDetected.is_type(miss.type)


def test_a_dropped_wyoming_client_frees_its_stream(setup):
    srv, _, _ = setup

    async def drop():
        c = client(srv)
        await c.connect()
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 6400).event())
        await asyncio.sleep(0.2)
        assert srv.service.worker.active == 1
        await c.disconnect()
        for _ in range(100):
            if srv.service.worker.active == 0:
                return 0
            await asyncio.sleep(0.05)
        return srv.service.worker.active
    assert asyncio.run(drop()) == 0


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a plain socket and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def test_oversized_events_are_refused_and_others_still_served(setup):
    srv, model, wav = setup
    import soundfile as sf

    port = srv.service.config.wyoming_port
    chunk = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}}
    bad = {  # field named in the error -> the bytes a client sends
        "payload_length": json.dumps({**chunk, "payload_length": 10 ** 12}).encode() + b"\n",
        "data_length": json.dumps({"type": "transcribe", "data_length": 2 ** 40}).encode() + b"\n",
        "header": b'{"type": "describe", "pad": "' + b"x" * 200_000,  # no newline, ever
    }
    for field, data in bad.items():
        reply = _raw_exchange(port, data)
        header = json.loads(reply.split(b"\n", 1)[0])
        assert header["type"] == "error", reply[:200]
        rest = reply.split(b"\n", 1)[1]
        text = json.loads(rest[:header["data_length"]])["text"] if header.get("data_length") \
            else header["data"]["text"]
        assert field in text and "limit" in text, text
    assert srv.service.metrics.errors.labels("wyoming", "too_big")._value.get() == 3

    wave, rate = sf.read(str(wav), dtype="float32")
    events = transcribe_events(srv, wave, rate)
    assert Transcript.from_event(events[-2]).text == offline_streaming_text(model, wav)["text"]


def transcribe_events(srv, wave, rate):
    """The events a Wyoming client reads for one transcribe request of ``wave``, up to
    ``transcript-stop``."""
    async def transcribe():
        async with client(srv) as c:
            await c.write_event(Transcribe(language="en").event())
            await send_audio(c, wave, rate)
            return await read_until(c, TranscriptStop)
    return asyncio.run(transcribe())


def test_an_onnx_export_serves_the_torch_transcript(setup, tmp_path):
    """``serve --model DIR``: the onnxruntime recognizer behind the same server gives the
    checkpoint's own streaming transcript."""
    import soundfile as sf

    from asr.checkpoint import load_model
    from export.asr import export_asr

    _, model_path, wav = setup
    model, tokenizer, _ = load_model(model_path)
    export_asr(model, tokenizer, tmp_path / "onnx", int8=False)
    srv = start_server(tmp_path / "onnx", wyoming=True)
    try:
        assert type(srv.service.recognizer).__module__ == "export.asr_runtime"
        wave, rate = sf.read(str(wav), dtype="float32")
        events = transcribe_events(srv, wave, rate)
    finally:
        srv.stop()
    ref = offline_streaming_text(model_path, wav)["text"]
    assert ref and Transcript.from_event(events[-2]).text == ref


def test_a_streaming_wake_word_model_is_served_with_its_state_carried(tmp_path):
    """A streaming-step spotter (data/models/jarvis_stream_crnn.onnx) behind the Wyoming
    server: the session's stream carries the GRU state from chunk to chunk
    (StatefulKeywordStream), and "jarvis" said by a held-out synthetic voice after a
    sentence is detected, the sentence alone is not."""
    from kws.edge import StatefulKeywordStream
    from kws.synth import Voice, available_engines, synthesize

    stream_kws = ROOT / "data" / "models" / "jarvis_stream_crnn.onnx"
    if "espeak" not in available_engines():
        pytest.skip("espeak-ng not installed")
    voice = Voice("espeak", "en-us+m3")  # a held-out family (kws.voices)
    sentence = read_audio(str(synthesize("the weather report says rain in the morning", voice, tmp_path)), 16000)
    word = read_audio(str(synthesize("jarvis", voice, tmp_path)), 16000)
    gap = np.zeros(8000, np.float32)
    srv = start_server(make_streaming_checkpoint(tmp_path / "model.pt"), kws_model=str(stream_kws), wyoming=True)
    try:
        async def detect(wave):
            async with client(srv) as c:
                await c.write_event(Detect(names=["jarvis"]).event())
                await send_audio(c, wave, 16000)
                return await read_until(c, NotDetected, Detection)
        assert isinstance(srv.service.kws_model.stream(), StatefulKeywordStream)
        hit = asyncio.run(detect(np.concatenate([gap, sentence, gap, word, gap])))[-1]
        assert Detection.is_type(hit.type) and Detection.from_event(hit).name == "jarvis"
        miss = asyncio.run(detect(np.concatenate([gap, sentence, gap])))[-1]
        assert NotDetected.is_type(miss.type)
    finally:
        srv.stop()
