"""A model with CTC and attention heads: `python -m asr evaluate --head attention` reaches
the attention searches, and the model wires joint CTC/attention decoding, N-best
rescoring and hotwords through its decode options."""
import json

import pytest
import torch

from asr.__main__ import main
from asr.checkpoint import save_checkpoint
from asr.config import HeadConfig
from asr.data import UtteranceDataset, collate, read_manifest
from asr.model import ASRModel
from asr.search.attention import attention_beam
from asr.search.rescore import rescore_nbest
from asr.text import build_tokenizer
from conftest import WORDS
from test_train import tiny_config


@pytest.fixture
def two_heads(tone_corpus):
    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    cfg.heads = {"ctc": HeadConfig(weight=0.3),
                 "attention": HeadConfig(options={"dim": 16, "attention_dim": 8, "location_kernel": 5,
                                                  "max_length_ratio": 0.5})}
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size).eval()
    with torch.no_grad():  # sharper outputs than at initialisation: labels get emitted
        model.heads["ctc"].proj.weight.mul_(8.0)
        model.heads["attention"].decoder.output.weight.mul_(4.0)
    return model, tok, cfg


def test_evaluate_cli_decodes_with_the_attention_head(tmp_path, tone_corpus, two_heads, capsys):
    model, tok, cfg = two_heads
    path = save_checkpoint(tmp_path / "model.pt", cfg, tok, model)
    common = ["evaluate", "--model", str(path), "--corpus", "manifest", "--data", str(tone_corpus),
              "--threads", "1"]
    runs = [(["--head", "attention"], {"method": "default"}),
            (["--head", "attention", "--search", "attention_beam", "--beam", "2"],
             {"method": "attention_beam", "beam": 2}),
            (["--head", "attention", "--search", "attention_beam", "--ctc-weight", "0.3"],
             {"method": "attention_beam", "ctc_weight": 0.3}),
            (["--head", "ctc", "--search", "ctc_prefix_beam", "--nbest", "3", "--rescore", "attention"],
             {"method": "ctc_prefix_beam", "nbest": 3, "rescore": "attention"}),
            (["--head", "ctc", "--search", "ctc_prefix_beam", "--hotwords", str(tone_corpus)],
             {"method": "ctc_prefix_beam", "hotwords": 4, "lm": True})]
    for flags, expected in runs:
        assert main(common + flags) == 0, flags
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["utterances"] == 8 and metrics["wer"] >= 0.0, flags
        assert {k: metrics["decoding"][k] for k in expected} == expected
    assert main(common + ["--head", "attention", "--search", "ctc_greedy"]) == 2
    assert "attention head decodes with" in capsys.readouterr().err
    assert main(common + ["--head", "attention", "--vocab", str(tone_corpus)]) == 2
    assert "no closed-vocabulary search" in capsys.readouterr().err


def test_model_wires_joint_decoding_and_rescoring(tone_corpus, two_heads):
    model, tok, cfg = two_heads
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(4)])
    enc, enc_lens = model.encode(batch.waves, batch.wave_lens)
    with torch.no_grad():
        ctc_lp = model.heads["ctc"](enc)
        joint = attention_beam(model.heads["attention"], enc, enc_lens, beam=3, ctc_log_probs=ctc_lp,
                               ctc_weight=0.4)
        first = model.heads["ctc"].decode(enc, enc_lens, "ctc_prefix_beam", beam=4, nbest=4)
        rescored = rescore_nbest(model.heads["attention"], enc, enc_lens, first, 0.7)
    got = model.decode(batch.waves, batch.wave_lens, head="attention", method="attention_beam",
                       beam=3, ctc_weight=0.4)
    assert [(r.best.tokens, r.best.score) for r in got] == [(r.best.tokens, r.best.score) for r in joint]
    assert joint != attention_beam(model.heads["attention"], enc, enc_lens, beam=3)  # CTC counted
    got = model.decode(batch.waves, batch.wave_lens, head="ctc", method="ctc_prefix_beam", beam=4,
                       nbest=4, rescore="attention", rescore_weight=0.7)
    assert got == rescored
    with pytest.raises(ValueError, match="attention head"):
        model.decode(batch.waves, batch.wave_lens, head="ctc", rescore="ctc")
    del model.heads["ctc"]
    with pytest.raises(ValueError, match="CTC head"):
        model.decode(batch.waves, batch.wave_lens, head="attention", method="attention_beam",
                     ctc_weight=0.4)


def test_saved_decoding_defaults_belong_to_the_saved_head(tmp_path, tone_corpus, two_heads):
    """A checkpoint whose defaults decode its attention head (beam 3, an LM) gives them to
    `--head attention` and to no --head; `--head ctc` starts from the CTC search's own
    defaults instead of an attention search and an LM meant for another head."""
    import dataclasses

    from asr.decoding import decoding_options

    model, tok, cfg = two_heads
    texts = tmp_path / "lm.txt"
    texts.write_text("\n".join(WORDS) + "\n")
    cfg = dataclasses.replace(cfg, decoding=dataclasses.replace(
        cfg.decoding, head="attention", method="attention_beam", beam=3, lm_texts=str(texts)))
    path = tmp_path / "model.pt"
    for head in (None, "attention"):
        opts = decoding_options(model, tok, cfg, path, head=head)
        assert (opts["head"], opts["method"], opts["beam"]) == ("attention", "attention_beam", 3)
        assert "lm_score" in opts
    opts = decoding_options(model, tok, cfg, path, head="ctc")
    assert opts["head"] == "ctc" and opts["method"] is None
    assert "beam" not in opts and "lm_score" not in opts
    opts = decoding_options(model, tok, cfg, path, head="ctc", method="ctc_prefix_beam", beam=4)
    assert (opts["method"], opts["beam"]) == ("ctc_prefix_beam", 4)


def test_set_decoding_saves_each_heads_defaults(tmp_path, tone_corpus, two_heads, capsys):
    """`python -m asr set-decoding` writes a copy whose saved decoding for one head is the
    options given: the default head's, another head's (`other_heads`, used by `--head`), or
    a new default head whose former default keeps its decoding. Its LM text beside the
    checkpoint is saved by name; unknown heads, wrong searches, missing LM files are refused."""
    from asr.checkpoint import load_model
    from asr.decoding import decoding_options

    model, tok, cfg = two_heads
    src = save_checkpoint(tmp_path / "src" / "model.pt", cfg, tok, model)
    out = tmp_path / "ship" / "model.pt"
    out.parent.mkdir()
    lm = out.parent / "lm.txt"
    lm.write_text("\n".join(WORDS) + "\n")
    assert main(["set-decoding", "--model", str(src), "--out", str(out), "--head", "ctc",
                 "--search", "ctc_prefix_beam", "--beam", "5", "--lm-texts", str(lm),
                 "--lm-order", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["decoding"]["lm_texts"] == "lm.txt"  # travels with the checkpoint
    assert main(["set-decoding", "--model", str(out), "--out", str(out), "--head", "attention",
                 "--search", "attention_beam", "--beam", "3"]) == 0
    _, _, saved = load_model(out)
    assert saved.decoding.head is None and saved.decoding.other_heads["attention"].beam == 3
    opts = decoding_options(model, tok, saved, out)  # the default head, ctc
    assert (opts["head"], opts["method"], opts["beam"]) == (None, "ctc_prefix_beam", 5)
    assert "lm_score" in opts
    opts = decoding_options(model, tok, saved, out, head="attention")
    assert (opts["method"], opts["beam"]) == ("attention_beam", 3) and "lm_score" not in opts

    # attention becomes the default head; the CTC decoding moves to other_heads
    assert main(["set-decoding", "--model", str(out), "--out", str(out), "--head", "attention",
                 "--search", "attention_beam", "--beam", "2", "--default"]) == 0
    _, _, saved = load_model(out)
    assert saved.decoding.head == "attention" and set(saved.decoding.other_heads) == {"ctc"}
    opts = decoding_options(model, tok, saved, out)
    assert (opts["head"], opts["method"], opts["beam"]) == ("attention", "attention_beam", 2)
    opts = decoding_options(model, tok, saved, out, head="ctc")
    assert (opts["method"], opts["beam"]) == ("ctc_prefix_beam", 5) and "lm_score" in opts
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--corpus", "manifest", "--data",
                 str(tone_corpus), "--threads", "1", "--head", "ctc"]) == 0
    decoding = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decoding"]
    assert (decoding["method"], decoding["beam"], decoding["lm"]) == ("ctc_prefix_beam", 5, True)

    # N-best rescoring saved with the default head; --rescore-weight 0 undoes it for a run
    assert main(["set-decoding", "--model", str(out), "--out", str(out), "--search", "attention_beam",
                 "--beam", "3", "--nbest", "3", "--head", "attention", "--ctc-weight", "0.2"]) == 0
    assert main(["set-decoding", "--model", str(out), "--out", str(out), "--head", "ctc", "--default",
                 "--search", "ctc_prefix_beam", "--beam", "4", "--nbest", "4", "--rescore",
                 "attention", "--rescore-weight", "0.7"]) == 0
    _, _, saved = load_model(out)
    opts = decoding_options(model, tok, saved, out)
    assert (opts["head"], opts["nbest"], opts["rescore"], opts["rescore_weight"]) == ("ctc", 4, "attention", 0.7)
    assert decoding_options(model, tok, saved, out, rescore_weight=0.0)["rescore_weight"] == 0.0
    opts = decoding_options(model, tok, saved, out, head="attention")
    assert (opts["ctc_weight"], opts["nbest"]) == (0.2, 3) and "rescore" not in opts
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--corpus", "manifest", "--data",
                 str(tone_corpus), "--threads", "1"]) == 0
    decoding = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decoding"]
    assert (decoding["rescore"], decoding["nbest"]) == ("attention", 4)

    for flags, message in ((["--head", "rnnt"], "head 'rnnt'"),
                           (["--rescore", "ctc"], "rescore 'ctc'"),
                           (["--head", "ctc", "--search", "attention_beam"], "search 'attention_beam'"),
                           (["--lm-texts", str(tmp_path / "none.txt")], "none.txt")):
        assert main(["set-decoding", "--model", str(out), "--out", str(tmp_path / "x.pt")] + flags) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_rescoring_head_without_an_nbest_list_is_refused(tmp_path, tone_corpus, two_heads, capsys):
    """`--rescore HEAD` with nbest < 2 would re-rank a one-hypothesis list (nothing) yet be
    reported as used: refused, like --rescore-lm, whether given, saved or being saved."""
    import dataclasses

    from asr.decoding import decoding_options

    model, tok, cfg = two_heads
    path = save_checkpoint(tmp_path / "model.pt", cfg, tok, model)
    for nbest in (None, 1):
        with pytest.raises(ValueError, match=rf"rescoring with the head 'attention' \(--rescore\) "
                                             rf"needs an N-best list: give nbest > 1 \(--nbest\), not {nbest}"):
            decoding_options(model, tok, cfg, path, head="ctc", rescore="attention", nbest=nbest)
    opts = decoding_options(model, tok, cfg, path, head="ctc", rescore="attention", nbest=2)
    assert (opts["rescore"], opts["nbest"]) == ("attention", 2)
    saved = dataclasses.replace(cfg, decoding=dataclasses.replace(cfg.decoding, rescore="attention",
                                                                    nbest=4))
    assert decoding_options(model, tok, saved, path)["nbest"] == 4
    with pytest.raises(ValueError, match="--rescore"):  # the saved rescoring, nbest given as 1
        decoding_options(model, tok, saved, path, nbest=1)
    common = ["--model", str(path), "--head", "ctc", "--search", "ctc_prefix_beam", "--rescore",
              "attention"]
    assert main(["evaluate", "--corpus", "manifest", "--data", str(tone_corpus), "--threads", "1"]
                + common) == 2
    assert "needs an N-best list" in capsys.readouterr().err
    assert main(["set-decoding", "--out", str(tmp_path / "x.pt")] + common + ["--nbest", "1"]) == 2
    assert "needs an N-best list" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_ctc_weight_is_refused_for_searches_other_than_attention_beam(tmp_path, tone_corpus,
                                                                       two_heads, capsys):
    """Every search swallows unknown options, so ctc_weight with another search than
    attention_beam (the attention head's default greedy one, a CTC search) was dropped
    unread; it is refused, naming the option and the search, when decoding, when resolving
    the CLI's options and when saving them."""
    from asr.decoding import decoding_options

    model, tok, cfg = two_heads
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(2)])
    for head, method, search in (("attention", None, "attention_greedy"),
                                 ("attention", "attention_greedy", "attention_greedy"),
                                 ("ctc", "ctc_prefix_beam", "ctc_prefix_beam")):
        message = rf"ctc_weight \(--ctc-weight\): only the attention_beam search uses it, not '{search}'"
        with pytest.raises(ValueError, match=message):
            model.decode(batch.waves, batch.wave_lens, head=head, method=method, ctc_weight=0.4)
        with pytest.raises(ValueError, match=message):
            decoding_options(model, tok, cfg, tmp_path / "m.pt", head=head, method=method,
                             ctc_weight=0.4)
    assert model.decode(batch.waves, batch.wave_lens, head="attention", method="attention_beam",
                        ctc_weight=0.4)
    path = save_checkpoint(tmp_path / "model.pt", cfg, tok, model)
    assert main(["evaluate", "--model", str(path), "--corpus", "manifest", "--data",
                 str(tone_corpus), "--threads", "1", "--head", "attention", "--ctc-weight", "0.3"]) == 2
    assert "not 'attention_greedy'" in capsys.readouterr().err
    assert main(["set-decoding", "--model", str(path), "--out", str(tmp_path / "x.pt"), "--head",
                 "attention", "--ctc-weight", "0.3"]) == 2
    assert "only the attention_beam search uses it" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_attention_beam_length_norm_and_end_detection_options(tmp_path, tone_corpus, two_heads,
                                                              capsys):
    """attention_beam's length_norm, end_window and end_margin: None in the saved decoding
    (the search's own defaults, so older checkpoints decode as before), given on the CLI or
    saved with set-decoding they reach the search; refused with another search, and bad
    values are refused naming the option."""
    from asr.checkpoint import load_model
    from asr.config import DecodingConfig
    from asr.decoding import decoding_options

    assert (DecodingConfig().length_norm, DecodingConfig().end_window, DecodingConfig().end_margin) == (None,) * 3
    model, tok, cfg = two_heads
    path = save_checkpoint(tmp_path / "model.pt", cfg, tok, model)
    new = {"length_norm": 0.0, "end_window": 5, "end_margin": -4.0}
    opts = decoding_options(model, tok, cfg, path, head="attention", method="attention_beam", beam=3)
    assert not set(new) & set(opts)  # not given, not saved: the search's defaults
    opts = decoding_options(model, tok, cfg, path, head="attention", method="attention_beam", beam=3,
                            **new)
    assert {k: opts[k] for k in new} == new
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(4)])
    enc, enc_lens = model.encode(batch.waves, batch.wave_lens)
    direct = attention_beam(model.heads["attention"], enc, enc_lens, beam=3, **new)
    assert model.decode(batch.waves, batch.wave_lens, **opts) == direct
    assert direct != attention_beam(model.heads["attention"], enc, enc_lens, beam=3)  # normalised

    common = ["--model", str(path), "--head", "attention", "--search", "attention_beam", "--beam", "3"]
    flags = ["--length-norm", "0", "--end-window", "5", "--end-margin", "-4"]
    assert main(["evaluate", "--corpus", "manifest", "--data", str(tone_corpus), "--threads", "1"]
                + common + flags) == 0
    decoding = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decoding"]
    assert {k: decoding[k] for k in new} == new
    out = tmp_path / "saved.pt"
    assert main(["set-decoding", "--out", str(out)] + common + flags) == 0
    capsys.readouterr()
    _, _, saved = load_model(out)
    opts = decoding_options(model, tok, saved, out, head="attention")
    assert {k: opts[k] for k in new} == new
    assert decoding_options(model, tok, saved, out, head="attention", end_window=2)["end_window"] == 2

    for option, flag, value in (("length_norm", "--length-norm", "0.5"),
                                ("end_window", "--end-window", "2"),
                                ("end_margin", "--end-margin", "-5")):
        for cmd in (["evaluate", "--corpus", "manifest", "--data", str(tone_corpus)],
                    ["set-decoding", "--out", str(tmp_path / "x.pt")]):
            assert main(cmd + ["--model", str(path), "--head", "ctc", "--search", "ctc_prefix_beam",
                               flag, value]) == 2
            assert f"{option} ({flag}): only the attention_beam search uses it" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    for flag, value, message in (("--length-norm", "-1", "length_norm must be >= 0"),
                                 ("--end-window", "0", "end_window must be >= 1"),
                                 ("--end-margin", "2", "end_margin must be <= 0")):
        assert main(["transcribe"] + common + [flag, value, str(read_manifest(tone_corpus)[0].audio)]) == 2
        assert message in capsys.readouterr().err
