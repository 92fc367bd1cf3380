"""`python -m asr transcribe` in a subprocess, with the shipped FSDD models on real clips."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "corpora" / "fsdd" / "recordings"
DIGITS = "zero one two three four five six seven eight nine".split()


def _transcribe(*args: str):
    out = subprocess.run([sys.executable, "-m", "asr", "transcribe", *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.strip().splitlines()]


@pytest.mark.parametrize("model,flags", [("fsdd_ctc.pt", []), ("fsdd_rnnt.pt", ["--plain"])])
def test_transcribe_says_the_spoken_digit(model, flags):
    if not FSDD.is_dir():
        pytest.skip("../shared/corpora/fsdd not present")
    clips = [FSDD / "7_theo_3.wav", FSDD / "2_nicolas_40.wav", FSDD / "0_jackson_45.wav"]
    lines = _transcribe("--model", str(ROOT / "data" / "models" / model), *flags, *map(str, clips))
    assert [l["file"] for l in lines] == [str(c) for c in clips]  # one line per file, in order
    for line, clip in zip(lines, clips):
        assert line["text"] == DIGITS[int(clip.name[0])], line
        assert "".join(line["tokens"]) == line["text"]
        assert line["score"] <= 0.0
        # seconds, one per token, in order, within the clip
        assert len(line["times"]) == len(line["tokens"])
        assert line["times"] == sorted(line["times"])
        assert 0.0 <= line["times"][-1] < sf.info(str(clip)).duration
