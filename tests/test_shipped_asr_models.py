"""The shipped FSDD models load, run through `python -m asr evaluate` with their saved
decoding defaults and without, and still decode FSDD digits (a regression check on clips of
the speakers they were trained on; the held-out-speaker figures are in recipes/fsdd/README.md)."""
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
    evaluate = lambda *flags: _evaluate(model, tmp_path, *flags)  # noqa: E731
    # by default the model decodes as saved in it: the ten digit words, test-time VTLN
    metrics, rows = evaluate()
    assert metrics["decoding"]["vocabulary"] == 10 and metrics["decoding"]["warps"] == 9, metrics
    assert metrics["utterances"] == 60 and metrics["accuracy"] >= 0.9, metrics
    digits = set((ROOT / "recipes" / "fsdd" / "digits.txt").read_text().split())
    assert all(r["hyp"] in digits for r in rows)
    # --plain: the head's own open search, no warps
    plain, _ = evaluate("--plain")
    assert plain["decoding"] == {"head": metrics["decoding"]["head"], "method": "default",
                                 "vocabulary": 0, "warps": 0}
    assert plain["utterances"] == 60 and plain["accuracy"] >= 0.9, plain
    # a named open search leaves the saved vocabulary out; --vocab brings one back
    greedy, _ = evaluate("--head", "ctc", "--search", "ctc_greedy", "--warps")
    assert greedy["decoding"] == {"head": "ctc", "method": "ctc_greedy", "vocabulary": 0, "warps": 0}
    vocab, _ = evaluate("--plain", "--vocab", str(ROOT / "recipes" / "fsdd" / "digits.txt"))
    assert vocab["decoding"]["vocabulary"] == 10 and vocab["decoding"]["warps"] == 0
    assert vocab["utterances"] == 60 and vocab["accuracy"] >= 0.9, vocab


def _evaluate(model: Path, data: Path, *flags: str):
    results = data / "results.jsonl"
    out = subprocess.run([sys.executable, "-m", "asr", "evaluate", "--model", str(model),
                          "--corpus", "fsdd", "--data", str(data), "--threads", "1",
                          "--results", str(results), *flags],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in open(results)]
    return json.loads(out.stdout.strip().splitlines()[-1]), rows


@pytest.mark.timeout(240)
@pytest.mark.skipif(not (ROOT.parent / "shared" / "corpora" / "an4").is_dir(),
                    reason="../shared/corpora/an4 not present")
def test_shipped_english_ctc_model_decodes_with_its_lm(tmp_path):
    """data/models/english_ctc.pt (the CTC model the streaming model and the active-learning
    recipe start from) finds the LM text shipped beside it and, with its default decoding
    (prefix beam 32 + char 8-gram), transcribes AN4 clips (a regression check: most of these
    speakers trained it)."""
    model = ROOT / "data" / "models" / "english_ctc.pt"
    assert model.stat().st_size < 10 * 2**20 and (model.parent / "english_lm.txt").is_file()
    metrics = _evaluate_an4(model, 12)
    assert metrics["decoding"]["lm"] is True and metrics["decoding"]["beam"] == 32, metrics
    assert metrics["utterances"] == 12 and metrics["wer"] < 0.4, metrics


def _evaluate_an4(model: Path, limit: int, *flags: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "asr", "evaluate", "--model", str(model), "--corpus", "an4",
         "--data", str(ROOT.parent / "shared" / "corpora" / "an4"), "--limit", str(limit),
         "--threads", "1", *flags], cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(280)
@pytest.mark.skipif(not (ROOT.parent / "shared" / "corpora" / "an4").is_dir(),
                    reason="../shared/corpora/an4 not present")
def test_shipped_english_streaming_model_streams_as_it_decodes_offline():
    """data/models/english_streaming.pt is streamable (latency-controlled GRUs, running
    CMVN) and `transcribe --streaming`, fed as a server would be, gives the offline text."""
    import torch

    model = ROOT / "data" / "models" / "english_streaming.pt"
    assert model.stat().st_size < 10 * 2**20
    cfg = torch.load(model, map_location="cpu", weights_only=False)["config"]
    assert cfg["encoder"]["name"] == "lc_bgru" and cfg["cmvn"] == "running", cfg["encoder"]
    clips = sorted((ROOT.parent / "shared" / "corpora" / "an4" / "wav").rglob("*.flac"))[:4]
    texts = {}
    for mode in ([], ["--streaming"]):
        out = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(model),
                              *mode, *map(str, clips)],
                             cwd=ROOT, capture_output=True, text=True, timeout=200)
        assert out.returncode == 0, out.stderr
        texts[bool(mode)] = [json.loads(line)["text"] for line in out.stdout.splitlines()]
    assert len(texts[True]) == 4 and all(texts[True]), texts
    assert texts[True] == texts[False]


@pytest.mark.timeout(200)
@pytest.mark.skipif(not (ROOT.parent / "shared" / "corpora" / "an4").is_dir(),
                    reason="../shared/corpora/an4 not present")
def test_shipped_english_streaming_onnx_export_transcribes_as_torch():
    """data/models/english_streaming_onnx (python -m export asr of english_streaming.pt)
    runs without torch's model code and, fed in 20 ms pieces, writes the torch model's text
    (greedy CTC; fp32, and int8 within a character or two)."""
    import jiwer
    import soundfile as sf

    from asr.checkpoint import load_model
    from asr.streaming import Recognizer as TorchRecognizer
    from export.asr_runtime import Recognizer

    onnx_dir = ROOT / "data" / "models" / "english_streaming_onnx"
    model, tokenizer, cfg = load_model(ROOT / "data" / "models" / "english_streaming.pt")
    ref_rec = TorchRecognizer(model, tokenizer, cfg.streaming, method="ctc_greedy")
    clips = sorted((ROOT.parent / "shared" / "corpora" / "an4" / "wav").rglob("*.flac"))[:4]
    waves = [sf.read(str(c), dtype="float32")[0] for c in clips]
    texts = {}
    for name, rec in [("torch", ref_rec), ("onnx", Recognizer(onnx_dir, method="ctc_greedy")),
                      ("int8", Recognizer(onnx_dir, int8=True, method="ctc_greedy"))]:
        texts[name] = []
        for wave in waves:
            s = rec.create_stream()
            for i in range(0, len(wave), 320):
                s.accept_waveform(16000, wave[i:i + 320])
            s.input_finished()
            rec.decode_stream(s)
            texts[name].append(s.result().text)
    assert all(texts["torch"]) and texts["onnx"] == texts["torch"], texts
    assert jiwer.cer(texts["torch"], texts["int8"]) < 0.05, texts
    pruned = Recognizer(onnx_dir, method="ctc_prefix_beam", token_min_logp=-5.0, beam_prune_logp=10.0)
    assert (pruned.new_search().token_min_logp, pruned.new_search().beam_prune_logp) == (-5.0, 10.0)


@pytest.mark.timeout(400)
@pytest.mark.skipif(not (ROOT.parent / "shared" / "corpora" / "an4").is_dir(),
                    reason="../shared/corpora/an4 not present")
def test_shipped_english_model_decodes_with_each_head():
    """data/models/english.pt: english_ctc.pt's architecture (the same shapes; since the
    joint fine-tune of all three heads, not the same weights) with RNN-T and attention heads.
    Plain `evaluate` decodes with its saved default (RNN-T, beam 16, no LM, the 16-best
    re-ranked by the attention head), `--head ctc` with
    the CTC head's saved decoding (prefix beam 32 + the LM shipped beside it), `--head
    attention` with beam 8, and joint CTC/attention with --ctc-weight (a regression check on
    AN4 clips: most of these speakers trained it)."""
    import torch

    model = ROOT / "data" / "models" / "english.pt"
    assert model.stat().st_size < 20 * 2**20
    three = torch.load(model, map_location="cpu", weights_only=False)["model"]
    one = torch.load(ROOT / "data" / "models" / "english_ctc.pt", map_location="cpu",
                     weights_only=False)["model"]
    assert set(one) < set(three) and all(one[k].shape == three[k].shape for k in one)
    assert {k.split(".")[1] for k in three if k.startswith("heads.")} == {"ctc", "transducer", "attention"}
    runs = [([], {"head": "transducer", "method": "transducer_beam", "beam": 16, "nbest": 16,
                  "rescore": "attention"}, 0.3),
            (["--head", "ctc"], {"head": "ctc", "method": "ctc_prefix_beam", "beam": 32, "lm": True}, 0.4),
            (["--head", "attention"], {"head": "attention", "method": "attention_beam", "beam": 8}, 0.4),
            (["--head", "attention", "--ctc-weight", "0.3"], {"ctc_weight": 0.3}, 0.4)]
    for flags, decoding, wer in runs:
        metrics = _evaluate_an4(model, 8, *flags)
        assert {k: metrics["decoding"].get(k) for k in decoding} == decoding, metrics
        assert "lm" in decoding or "lm" not in metrics["decoding"], metrics
        assert metrics["utterances"] == 8 and metrics["wer"] < wer, (flags, metrics)
