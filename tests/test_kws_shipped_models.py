"""The models shipped in data/models: size limits, metadata, int8 vs fp32, and (where the
shared corpora are present) their held-out results."""
import json
from pathlib import Path

import numpy as np
import pytest

from kws.edge import KWSModel
from kws.export import read_metadata

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "data" / "models"
SHARED = ROOT.parent / "shared" / "corpora"
NAMES = {"speech_commands_crnn": ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right",
                                  "on", "off", "stop", "go"],
         "computer_crnn": ["_background_", "computer"],
         "jarvis_crnn": ["_background_", "jarvis"],  # train-wakeword models (recipes/wake_word)
         "jarvis_stream_crnn": ["_background_", "jarvis"],  # the same, streaming (state carried)
         "alexa_crnn": ["_background_", "alexa"]}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not built (run its recipe)")
    return path


@pytest.mark.parametrize("name", sorted(NAMES))
def test_shipped_model_limits_and_metadata(name):
    fp32, int8 = _need(MODELS / f"{name}.onnx"), _need(MODELS / f"{name}_int8.onnx")
    assert int8.stat().st_size <= 300 * 1024
    for path in (fp32, int8):
        meta = read_metadata(path)
        assert int(meta["num_params"]) <= 250_000
        assert json.loads(meta["labels"]) == NAMES[name]
        feats = json.loads(meta["feature_config"])
        assert feats["n_mels"] == 40 and feats["kind"] in ("logmel", "pcen")
        cfg = json.loads(meta["config"])  # the resolved training config travels inside
        assert cfg["model"]["gru_layers"] >= 1 and cfg["labels"] == NAMES[name]
    rng = np.random.default_rng(0)
    a, b = KWSModel(str(fp32)), KWSModel(str(int8))
    x = rng.standard_normal((32, a.window_frames, 40)).astype(np.float32) * 2 - 6
    pa, pb = a.predict(x), b.predict(x)
    assert (pa.argmax(1) == pb.argmax(1)).mean() >= 0.9
    assert np.abs(pa - pb).max() < 0.2


def test_speech_commands_model_on_held_out_speakers():
    """12-class accuracy on the speakers the recipe held out (SHA-1 split, 20% test)."""
    from kws.evaluate import evaluate_commands

    data = _need(SHARED / "speech_commands")
    fp32 = KWSModel(str(_need(MODELS / "speech_commands_crnn.onnx")))
    int8 = KWSModel(str(_need(MODELS / "speech_commands_crnn_int8.onnx")))
    a = evaluate_commands(fp32, str(data), split="test")
    b = evaluate_commands(int8, str(data), split="test")
    assert a["n"] >= 250
    assert b["accuracy"] >= a["accuracy"] - 0.01  # int8 costs at most 1 point
    assert a["accuracy"] >= 0.90  # the target; the recipe README reports the exact figure (0.903)


def test_computer_model_fires_on_held_out_recordings():
    from kws.data import hash_split
    from kws.edge import read_audio

    pos = _need(SHARED / "mycroft_precise" / "computer" / "en")
    model = KWSModel(str(_need(MODELS / "computer_crnn_int8.onnx")))
    held = [p for p in sorted(pos.glob("*.flac")) if hash_split(p.stem, 10.0, 40.0) == "test"]
    assert held
    hits = 0
    for p in held:
        s = model.stream()
        dets = s.accept_waveform(read_audio(str(p), 16000)) + s.flush()
        hits += any(d.label == "computer" for d in dets)
    assert hits / len(held) >= 0.8


def test_streaming_jarvis_model_fires_for_held_out_voices_only_on_the_word(tmp_path):
    """The streaming-step jarvis model, run as it serves (state carried from hop to hop,
    "auto" mode), fires on "jarvis" said by synthetic voices that train-wakeword holds out
    (kws.voices' default held-out families), each after a sentence of the same voice in
    one stream, and not during the sentences themselves."""
    from kws.edge import read_audio
    from kws.synth import Voice, available_engines, synthesize

    model = KWSModel(str(_need(MODELS / "jarvis_stream_crnn_int8.onnx")))
    assert model.streaming and model.stream_mode() == "streaming"
    if "espeak" not in available_engines():
        pytest.skip("espeak-ng not installed")
    voices = [Voice("espeak", v) for v in ("en-us+m3", "en-gb+f2", "en-029+klatt2", "en-gb-x-rp+Annie")]
    sentence = "the weather report says it will rain in the morning and clear by noon"
    hits, sentence_alarms = 0, 0
    for v in voices:
        a = read_audio(str(synthesize(sentence, v, tmp_path)), 16000)
        w = read_audio(str(synthesize("jarvis", v, tmp_path)), 16000)
        gap = np.zeros(8000, np.float32)
        s = model.stream()
        dets = s.accept_waveform(np.concatenate([gap, a, gap, w, gap])) + s.flush()
        word_at = (len(gap) * 2 + len(a)) / 16000
        hits += any(d.label == "jarvis" and d.time_s >= word_at for d in dets)
        sentence_alarms += sum(d.time_s < word_at for d in dets)
    assert hits >= 3
    assert sentence_alarms == 0
