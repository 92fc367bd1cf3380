"""One encoder, CTC and RNN-T heads trained together, decoded by either head by name."""
import copy

import pytest
import torch

from asr.checkpoint import load_model
from asr.config import HeadConfig
from asr.data import read_manifest
from asr.evaluate import evaluate_model
from asr.train import Trainer
from test_train import tiny_config


def test_ctc_and_transducer_heads_share_an_encoder(tmp_path, tone_corpus):
    cfg = tiny_config(tone_corpus, epochs=2)
    cfg.data.speed_perturb, cfg.data.noise_prob = [], 0.0
    cfg.heads = {"ctc": HeadConfig(weight=0.3),
                 "transducer": HeadConfig(weight=1.0, options={"pred_dim": 16, "joiner_dim": 16,
                                                                "prune_range": 3})}
    trainer = Trainer(cfg, tmp_path / "exp")
    batch = next(iter(torch.utils.data.DataLoader(
        trainer.train_set, batch_size=3, collate_fn=__import__("asr.data").data.collate)))
    losses = trainer.model(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
    assert set(losses) == {"ctc", "transducer", "total"}
    assert losses["ctc"].shape == losses["transducer"].shape == (3,)
    torch.testing.assert_close(losses["total"], 0.3 * losses["ctc"] + losses["transducer"])
    initial = copy.deepcopy(trainer.model.state_dict())
    result = trainer.fit()
    model, tok, _ = load_model(result.model_path)
    # the initial weights with the CMVN statistics that fit() gathered: only training differs
    start = copy.deepcopy(model)
    start.load_state_dict({k: v for k, v in initial.items() if not k.startswith("cmvn.")},
                          strict=False)
    with torch.no_grad():  # both heads learnt (in two epochs CTC, weighted 0.3, falls ~4%)
        before = start.eval()(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
        after = model.eval()(batch.waves, batch.wave_lens, batch.targets, batch.target_lens)
    for name in ("ctc", "transducer"):
        assert after[name].sum() < 0.98 * before[name].sum(), (name, before[name], after[name])
    utts = read_manifest(tone_corpus)
    for head, method in [("ctc", "ctc_greedy"), ("ctc", "ctc_prefix_beam"),
                         ("transducer", "transducer_greedy"), ("transducer", "transducer_beam")]:
        m = evaluate_model(model, tok, utts, head=head, method=method)
        assert m["utterances"] == 8 and 0.0 <= m["wer"]
    with pytest.raises(ValueError, match="heads"):
        model.decode(batch.waves, batch.wave_lens, head="attention")


@pytest.mark.parametrize("cmvn,features", [("global", {}), ("utterance", {"kind": "pcen"}),
                                           ("utterance_smooth", {"remove_dc": True})])
def test_batched_decoding_equals_one_at_a_time(tone_corpus, cmvn, features):
    # an utterance decodes to the same text, score and times whether it is alone or padded
    # in a batch with longer ones, for every search of both heads
    from dataclasses import replace

    from asr.data import UtteranceDataset, collate
    from asr.model import ASRModel
    from asr.text import build_tokenizer
    from conftest import WORDS

    torch.manual_seed(0)
    cfg = tiny_config(tone_corpus)
    cfg.cmvn, cfg.features = cmvn, replace(cfg.features, **features)
    cfg.heads = {"ctc": HeadConfig(), "transducer": HeadConfig(options={"pred_dim": 16, "joiner_dim": 16})}
    tok = build_tokenizer("char", WORDS)
    model = ASRModel(cfg, tok.vocab_size).eval()
    with torch.no_grad():  # sharper outputs than at initialisation: labels get emitted
        model.heads["ctc"].proj.weight.mul_(8.0)
        model.heads["transducer"].output.weight.mul_(8.0)
    ds = UtteranceDataset(read_manifest(tone_corpus), tok.encode, cfg.sample_rate)
    batch = collate([ds[i] for i in range(len(ds))])
    assert len(set(batch.wave_lens.tolist())) == len(ds)  # every clip padded but the longest
    vocabulary = [tok.encode(w) for w in WORDS]
    emitted = 0
    for head, method, options in [("ctc", "ctc_greedy", {}), ("ctc", "ctc_prefix_beam", {"beam": 4}),
                                  ("ctc", "ctc_vocab", {"vocabulary": vocabulary}),
                                  ("transducer", "transducer_greedy", {}),
                                  ("transducer", "transducer_beam", {"beam": 3}),
                                  ("transducer", "transducer_vocab", {"vocabulary": vocabulary})]:
        together = model.decode(batch.waves, batch.wave_lens, head=head, method=method, **options)
        for b, n in enumerate(batch.wave_lens.tolist()):
            alone = model.decode(batch.waves[b: b + 1, :n], batch.wave_lens[b: b + 1], head=head,
                                 method=method, **options)[0].best
            got = together[b].best
            assert (got.tokens, got.times) == (alone.tokens, alone.times), (method, b)
            assert got.score == pytest.approx(alone.score, abs=1e-4), (method, b)
            emitted += 0 if method.endswith("_vocab") else len(got.tokens)
    assert emitted > 0  # the open searches said something


def test_decode_builds_no_autograd_graph():
    """ASRModel.decode runs under no_grad whoever calls it (transcribe, the server, the
    benches): the encoder sees grad mode off, so no graph is kept for hours of audio."""
    from pathlib import Path

    model, _, _ = load_model(Path(__file__).resolve().parents[1] / "data/models/fsdd_ctc.pt")
    seen = []
    model.encoder.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    assert torch.is_grad_enabled()
    model.decode(torch.randn(1, 8000), torch.tensor([8000]))
    assert seen == [False]
