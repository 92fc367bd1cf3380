import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

WORDS = ["yes", "no", "up", "down"]


def make_tone_corpus(root: Path, n: int = 8, sr: int = 16000, seed: int = 0):
    """Tiny manifest of tones whose pitch depends on the word: learnable, instant to make."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        dur = float(rng.uniform(0.4, 0.8))
        t = np.arange(int(dur * sr)) / sr
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(word)) * t)
        wave += 0.01 * rng.standard_normal(t.size)
        path = root / f"utt{i}.wav"
        sf.write(path, wave.astype(np.float32), sr)
        lines.append({"id": f"utt{i}", "audio": str(path), "duration": dur,
                      "sample_rate": sr, "text": word, "speaker": f"s{i % 2}"})
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return manifest


@pytest.fixture
def tone_corpus(tmp_path):
    return make_tone_corpus(tmp_path / "tones")
