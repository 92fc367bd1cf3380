"""recipes/english/synthetic.py: which sentences are rendered, and the manifest it writes."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data import Utterance, read_manifest, write_manifest
from recipes.english import synthetic


def _texts(path: Path) -> Path:
    path.write_text("LJ1|Dr. Smith's 2 cats.|Doctor Smith's two cats.\n"
                    "LJ2|x|the dev sentence\n"
                    "LJ3|x|Doctor Smith's two cats.\n"  # a duplicate once normalised
                    "LJ4|x|one two three four five six\n"
                    "LJ5|x|a short one\n")
    return path


def test_sentences_are_normalised_deduplicated_and_never_dev_text(tmp_path):
    texts = _texts(tmp_path / "t.csv")
    got = synthetic.sentences(texts, exclude={"the dev sentence"}, max_words=5)
    assert got == ["doctor smith's two cats", "a short one"]
    (tmp_path / "bad.csv").write_text("LJ1|two columns: the raw text stands in\nLJ2 no text at all\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        synthetic.sentences(tmp_path / "bad.csv", set(), 25)


def test_main_writes_a_manifest_of_the_rendered_clips(tmp_path, monkeypatch):
    import kws.synth
    import kws.voices

    def fake_render(items, out_dir, jobs=2, desc=""):
        out = []
        for i, (text, voice) in enumerate(items):
            if "short" in text:  # an engine failure: left out, counted
                continue
            path = Path(out_dir) / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(8000, np.float32), 16000)
            out.append((text, voice, path))
        return out

    monkeypatch.setattr(kws.synth, "synthesize_many", fake_render)
    monkeypatch.setattr(kws.voices, "voice_inventory", lambda: ["espeak:en-us", "flite:slt"])
    dev = write_manifest([Utterance("d1", "x.wav", 1.0, "THE DEV SENTENCE")], tmp_path / "dev.jsonl")
    summary = synthetic.main(["--texts", str(_texts(tmp_path / "t.csv")), "--out", str(tmp_path / "out"),
                              "--exclude", str(dev), "--count", "10"])
    utts = read_manifest(tmp_path / "out" / "synthetic.jsonl")
    assert sorted(u.text for u in utts) == ["doctor smith's two cats", "one two three four five six"]
    assert all(u.duration == 0.5 and u.meta["corpus"] == "synthetic" for u in utts)
    assert {u.speaker for u in utts} <= {"espeak:en-us", "flite:slt"}
    assert summary["sentences"] == 3 and summary["rendered"] == 2 and summary["failed"] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["excluded_transcripts"] == 1
