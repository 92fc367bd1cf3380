"""``python -m asr client``: stream audio files to a server's /ws (all files at once, each
at ``speed`` times real time; 0: as fast as the server takes them) and print its
messages, one JSON line each, tagged with the file."""
from __future__ import annotations

import asyncio
import json
import sys
from typing import List, Sequence, TextIO

import numpy as np


def read_pcm16(path: str):
    """(bytes of mono pcm_s16le, sample rate) at the file's own rate."""
    import soundfile as sf

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = np.clip(data.mean(axis=1), -1.0, 1.0)
    return (wave * 32767.0).astype("<i2").tobytes(), int(rate)


async def stream_file(url: str, path: str, speed: float = 1.0, chunk_ms: int = 100,
                      out: TextIO = sys.stdout) -> List[dict]:
    """Send one file; returns the server's messages (and prints them)."""
    import websockets

    pcm, rate = read_pcm16(path)
    step = max(2, int(rate * chunk_ms / 1000) * 2)
    messages: List[dict] = []
    async with websockets.connect(url, max_size=2 ** 20) as ws:
        await ws.send(json.dumps({"type": "start", "version": 1, "sample_rate": rate,
                                  "format": "pcm_s16le"}))

        async def send_audio() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(0, len(pcm), step):
                await ws.send(pcm[i:i + step])
                if speed > 0:  # pace to the audio's clock
                    due = t0 + (i + step) / 2 / rate / speed
                    await asyncio.sleep(max(0.0, due - loop.time()))
            await ws.send(json.dumps({"type": "end"}))

        sender = None
        try:
            async for raw in ws:
                msg = json.loads(raw)
                messages.append(msg)
                print(json.dumps({"file": path, **msg}), file=out, flush=True)
                if msg["type"] == "ready" and sender is None:
                    sender = asyncio.create_task(send_audio())
                if msg["type"] in ("done", "error"):
                    break
        finally:
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    return messages


async def stream_files(url: str, paths: Sequence[str], speed: float = 1.0,
                       chunk_ms: int = 100) -> int:
    results = await asyncio.gather(*(stream_file(url, p, speed, chunk_ms) for p in paths),
                                   return_exceptions=True)
    status = 0
    for path, res in zip(paths, results):
        if isinstance(res, BaseException):
            print(f"error: {path}: {res}", file=sys.stderr)
            status = 1
        elif not res or res[-1]["type"] != "done":
            status = 1
    return status
