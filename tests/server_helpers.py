"""Shared pieces of the server tests: a tiny random streaming model saved as a checkpoint,
test audio, a server on free 127.0.0.1 ports, and the offline streaming reference."""
from __future__ import annotations

import contextlib
import io
import json
import math
import socket
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.checkpoint import save_checkpoint
from asr.config import EncoderConfig, EndpointConfig, ExperimentConfig, HeadConfig, StreamingConfig
from asr.features import FeatureConfig
from asr.model import ASRModel
from asr.server.config import ServerConfig
from asr.server.service import RunningServer, load_service
from asr.text import CharTokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_streaming_checkpoint(path: Path, max_segment: float = 1.0) -> Path:
    """A random conv_rnn (unidirectional, global cmvn) CTC model. Its head is scaled up so
    it emits tokens often: arbitrary but deterministic, non-empty text. Segments end every
    ``max_segment`` seconds (the only endpoint rule), so a file gives several finals."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer()
    cfg = ExperimentConfig(
        features=FeatureConfig(n_mels=16), specaugment=None, cmvn="global",
        encoder=EncoderConfig(name="conv_rnn", bidirectional=False, lookahead=2, hidden_size=16,
                              num_layers=1, conv_channels=4, dropout=0.0),
        heads={"ctc": HeadConfig()},
        streaming=StreamingConfig(chunk_frames=8, endpoint=EndpointConfig(0.0, 0.0, max_segment)))
    model = ASRModel(cfg, tokenizer.vocab_size).eval()
    with torch.no_grad():
        for p in model.heads["ctc"].parameters():
            p.mul_(4.0)
    return save_checkpoint(path, cfg, tokenizer, model)


def write_speechlike_wav(path: Path, seconds: float = 3.0, rate: int = 16000, seed: int = 0) -> Path:
    """Gliding tones and noise bursts: whatever the random model makes of it, but audio
    with structure (the random model is not fussy)."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * math.pi * (200 + 150 * np.sin(2 * math.pi * 0.7 * t)) * t)
    wave *= (np.sin(2 * math.pi * 1.3 * t) > -0.3)
    wave += 0.03 * g.standard_normal(t.size)
    sf.write(str(path), wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def offline_streaming_text(model_path: Path, wav: Path) -> dict:
    """The Recognizer's own result: ``python -m asr transcribe --streaming``."""
    from asr.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["transcribe", "--model", str(model_path), "--plain", "--streaming",
                     str(wav)]) == 0
    return json.loads(out.getvalue().splitlines()[-1])


def start_server(model_path: Path, kws_model: str | None = None, wyoming: bool = False,
                 **limits) -> RunningServer:
    config = ServerConfig(host="127.0.0.1", port=free_port(),
                          wyoming_port=free_port() if wyoming else None, **limits)
    return RunningServer(load_service(str(model_path), config, kws_model_path=kws_model))
