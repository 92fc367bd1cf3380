"""A checkpoint's saved decoding defaults (beam, LM fusion with texts shipped beside it)
reach evaluate/transcribe through asr.decoding, each overridable, and a missing LM file is
named."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr.checkpoint import load_model
from asr.decoding import decoding_options
from asr.lm import NgramLM, WordLM

ROOT = Path(__file__).resolve().parents[1]
FSDD_CTC = ROOT / "data" / "models" / "fsdd_ctc.pt"
CLIP = ROOT.parent / "shared" / "corpora" / "fsdd" / "recordings" / "7_theo_3.wav"


def _with_lm_defaults(tmp_path: Path, **decoding) -> Path:
    """A copy of the shipped FSDD CTC model whose decoding defaults name an LM beside it."""
    state = torch.load(FSDD_CTC, map_location="cpu", weights_only=False)
    state["config"]["decoding"] = {"method": "ctc_prefix_beam", "vocabulary": [], "warps": [],
                                   "beam": 6, "lm_texts": "lm.txt", "lm_kind": "word",
                                   "lm_order": 2, "lm_weight": 0.7, "length_bonus": 0.5, **decoding}
    out = tmp_path / "model" / "m.pt"
    out.parent.mkdir()
    torch.save(state, out)
    (out.parent / "lm.txt").write_text("seven\nseven\neight\n")
    return out


def test_saved_lm_and_beam_are_used_and_overridable(tmp_path):
    path = _with_lm_defaults(tmp_path)
    model, tok, cfg = load_model(path)
    opts = decoding_options(model, tok, cfg, path)
    assert opts["method"] == "ctc_prefix_beam" and opts["beam"] == 6
    assert isinstance(opts["lm_score"], WordLM)
    assert opts["lm_weight"] == 0.7 and opts["length_bonus"] == 0.5
    # a word LM of "seven"/"eight" only lets those words be spelled
    assert opts["lm_score"]((), tok.encode("s")[0]) == 0.0
    assert opts["lm_score"]((), tok.encode("z")[0]) == float("-inf")
    over = decoding_options(model, tok, cfg, path, beam=2, lm_kind="char", lm_weight=0.1)
    assert over["beam"] == 2 and isinstance(over["lm_score"], NgramLM) and over["lm_weight"] == 0.1
    assert "lm_score" not in decoding_options(model, tok, cfg, path, no_lm=True)
    plain = decoding_options(model, tok, cfg, path, plain=True)
    assert "lm_score" not in plain and "beam" not in plain and plain["method"] is None


def test_saved_ctc_pruning_reaches_the_search_and_is_overridable(tmp_path):
    path = _with_lm_defaults(tmp_path, token_min_logp=-5.0, beam_prune_logp=10.0)
    model, tok, cfg = load_model(path)
    opts = decoding_options(model, tok, cfg, path)
    assert (opts["token_min_logp"], opts["beam_prune_logp"]) == (-5.0, 10.0)
    over = decoding_options(model, tok, cfg, path, token_min_logp=-3.0)
    assert (over["token_min_logp"], over["beam_prune_logp"]) == (-3.0, 10.0)
    plain = decoding_options(model, tok, cfg, path, plain=True)
    assert "token_min_logp" not in plain and "beam_prune_logp" not in plain


def test_missing_lm_file_is_named(tmp_path):
    path = _with_lm_defaults(tmp_path, lm_texts="gone.txt")
    model, tok, cfg = load_model(path)
    with pytest.raises(FileNotFoundError, match="gone.txt.*--no-lm"):
        decoding_options(model, tok, cfg, path)


@pytest.mark.skipif(not CLIP.is_file(), reason="../shared/corpora/fsdd not present")
def test_transcribe_uses_the_saved_lm(tmp_path):
    """With an LM that knows only "eight", the saved defaults spell "eight" for a clip of
    "seven" that the model alone gets right: the LM was really used."""
    path = _with_lm_defaults(tmp_path, lm_weight=5.0)
    (path.parent / "lm.txt").write_text("eight\n")

    def run(*extra):
        out = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(path),
                              *extra, str(CLIP)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])["text"]

    assert run("--no-lm") == "seven"
    assert run() == "eight"
