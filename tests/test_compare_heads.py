"""The head-comparison driver (recipes/compare_heads) end to end on the tone corpus with
budgets of seconds: every cell of the table gets a measured WER, and a second run skips
what the first finished."""
import json
import math
import re

import pytest

from recipes.compare_heads import run as driver

TINY = """
model:
  features: {n_mels: 20}
  encoder: {subsampling: 4, conv_channels: 4, hidden_size: 16, num_layers: 1}
  heads:
    ctc: {weight: 1.0}
    transducer: {weight: 1.0, options: {pred_dim: 16, joiner_dim: 16, prune_range: 3}}
    attention: {weight: 0.5, options: {dim: 16, attention_dim: 8, location_channels: 2,
                                        location_kernel: 5}}
  train: {epochs: 2, max_batch_seconds: 1.7, lr: 3.0e-3, warmup_steps: 2, checkpoint_every: 2,
          num_threads: 1, max_minutes: 0.03}
variants:
  bi_x4: {bidirectional: true}
  fwd_x4: {bidirectional: false, lookahead: 2}
  bi_x2: {subsampling: 2}
  bi_x8: {subsampling: 8}
decode: {beam: 2, lm_order: 3, max_utts: 5}
"""


def _run(tmp_path, corpus, *extra):
    return driver.main(["--corpus", "manifest", "--config", str(tmp_path / "tiny.yaml"),
                        "--train", str(corpus), "--valid", str(corpus),
                        "--eval", f"tones={corpus}",
                        "--out", str(tmp_path / "out"), *extra])


@pytest.mark.timeout(900)  # three driver runs of four tiny trainings and 24 decodes
def test_every_cell_is_measured_and_a_rerun_skips_finished_work(tmp_path, tone_corpus, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(TINY)
    results = _run(tmp_path, tone_corpus)
    out = tmp_path / "out"
    # 4 variants x 3 heads x 2 LM conditions, each decoded and scored
    cells = results["cells"]
    keys = {(c["variant"], c["head"], c["lm"], c["set"]) for c in cells}
    assert len(cells) == len(keys) == 4 * 3 * 2
    assert {c["head"] for c in cells} == set(driver.HEADS)
    for c in cells:
        assert isinstance(c["wer"], float) and math.isfinite(c["wer"]) and c["wer"] >= 0, c
        assert c["utterances"] == 5
        rows = (out / c["variant"] / "decodes" / f"{c['set']}.{c['head']}.{'lm' if c['lm'] else 'no_lm'}.jsonl")
        assert len(rows.read_text().splitlines()) == 5
    # the fused decodes really used the LM: their cells record it, the plain ones do not
    assert all(("lm_weight" in c) == c["lm"] for c in cells)
    # the variants are the encoders they claim to be
    for v, enc in [("bi_x2", {"subsampling": 2}), ("fwd_x4", {"bidirectional": False})]:
        saved = (out / v / "config.yaml").read_text()
        for k, val in enc.items():
            assert re.search(rf"\b{k}: {str(val).lower()}\b", saved), (v, k)
    # the table: a number in every WER cell, one row per variant x head per set
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| bi_") or line.startswith("| fwd_")]
    assert len(rows) == 4 * 3
    for line in rows:
        no_lm, lm = line.split("|")[3:5]
        assert re.fullmatch(r" \d+\.\d% ", no_lm) and re.fullmatch(r" \d+\.\d% ", lm), line
    assert json.loads((out / "results.json").read_text())["cells"] == cells
    assert (out / "results.png").stat().st_size > 0

    # a second run trains and decodes nothing: every model and cell is finished
    import asr.train

    def no_training(*a, **k):
        raise AssertionError("a finished variant was trained again")

    def no_decoding(*a, **k):
        raise AssertionError("a finished cell was decoded again")

    monkeypatch.setattr(asr.train.Trainer, "fit", no_training)
    monkeypatch.setattr(driver, "evaluate_model", no_decoding)
    again = _run(tmp_path, tone_corpus)
    assert sorted(map(json.dumps, again["cells"])) == sorted(map(json.dumps, cells))

    # a lost cell: --report decodes nothing and says so; a plain run decodes that one only
    lost = out / "bi_x8" / "cells" / "tones.attention.lm.json"
    lost.unlink()
    partial = _run(tmp_path, tone_corpus, "--report")
    assert len(partial["cells"]) == len(cells) - 1
    assert (out / "results.md").read_text().count("not decoded yet") == 1
    decoded = []
    from asr.evaluate import evaluate_model

    def count(model, tok, utts, head=None, method=None, **kw):
        decoded.append((head, "lm_score" in kw))
        return evaluate_model(model, tok, utts, head=head, method=method, **kw)

    monkeypatch.setattr(driver, "evaluate_model", count)
    third = _run(tmp_path, tone_corpus)
    assert decoded == [("attention", True)]
    assert lost.is_file() and len(third["cells"]) == len(cells)


def test_config_errors_name_the_problem(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY.replace("    ctc: {weight: 1.0}\n", ""))
    with pytest.raises(ValueError, match="lacks"):
        driver.load_compare_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text(TINY.replace("bi_x2: {subsampling: 2}", "bi_x2: {stride: 2}"))
    with pytest.raises(ValueError, match="stride"):
        driver.load_compare_config(tmp_path / "d.yaml")
