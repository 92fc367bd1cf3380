"""The shipped FSDD models load, run through `python -m asr evaluate`, and still decode
FSDD digits (a regression check on clips of the speakers they were trained on; the
held-out-speaker figures are in recipes/fsdd/README.md)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "corpora" / "fsdd"


@pytest.mark.parametrize("name", ["fsdd_ctc.pt", "fsdd_rnnt.pt"])
def test_shipped_fsdd_model(name, tmp_path):
    model = ROOT / "data" / "models" / name
    assert model.is_file(), f"{model} is not shipped"
    assert model.stat().st_size < 10 * 2**20
    if not FSDD.is_dir():
        pytest.skip("../shared/corpora/fsdd not present")
    data = tmp_path / "recordings"
    data.mkdir()
    for clip in sorted((FSDD / "recordings").glob("*_4[5-9].wav"))[:60]:
        (data / clip.name).symlink_to(clip)
    out = subprocess.run([sys.executable, "-m", "asr", "evaluate", "--model", str(model),
                          "--corpus", "fsdd", "--data", str(tmp_path), "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["utterances"] == 60
    assert metrics["accuracy"] >= 0.9, metrics
    # the closed-vocabulary search over the ten digit words runs on the shipped model too
    out = subprocess.run([sys.executable, "-m", "asr", "evaluate", "--model", str(model),
                          "--corpus", "fsdd", "--data", str(tmp_path), "--threads", "1",
                          "--vocab", str(ROOT / "recipes" / "fsdd" / "digits.txt")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    vocab = json.loads(out.stdout.strip().splitlines()[-1])
    assert vocab["utterances"] == 60 and vocab["accuracy"] >= 0.9, vocab
