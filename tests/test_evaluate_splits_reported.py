"""``python -m asr evaluate`` on a folder with several splits reads every one (the readers'
rule), says so on stderr when a test split is among them, and names the split(s) scored in
its JSON line; ``--split test`` scores the test part alone."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _tone(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), SR)


def make_an4(root: Path) -> Path:
    """A whole public AN4 release in miniature: two training clips beside one test clip."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "an4_train.transcription").write_text(
        "<s> YES </s> (an251-fash-b)\n<s> TWO </s> (an253-fash-b)\n")
    (root / "etc" / "an4_test.transcription").write_text("<s> SIX </s> (an406-fcaw-b)\n")
    _tone(root / "wav/an4_clstk/fash/an251-fash-b.wav")
    _tone(root / "wav/an4_clstk/fash/an253-fash-b.wav")
    _tone(root / "wav/an4test_clstk/fcaw/an406-fcaw-b.wav")
    return root


def _evaluate(root, *extra):
    return subprocess.run(
        [sys.executable, "-m", "asr", "evaluate", "--model", str(ROOT / "data/models/fsdd_ctc.pt"),
         "--plain", "--corpus", "an4", "--data", str(root), "--threads", "1", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=110)


@pytest.mark.timeout(240)
def test_evaluate_names_the_splits_it_scored_and_warns_when_test_is_mixed_in(tmp_path):
    root = make_an4(tmp_path / "an 4")
    out = _evaluate(root)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    metrics = json.loads(line)
    assert metrics["utterances"] == 3 and metrics["split"] == "test+train"
    assert "scoring every split present (test, train); --split test" in out.stderr
    out = _evaluate(root, "--split", "test")
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics["utterances"] == 1 and metrics["split"] == "test"
    assert "every split present" not in out.stderr
