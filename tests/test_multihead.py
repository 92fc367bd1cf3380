"""One encoder, CTC and RNN-T heads trained together, decoded by either head by name."""
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
    result = trainer.fit()
    model, tok, _ = load_model(result.model_path)
    utts = read_manifest(tone_corpus)
    for head, method in [("ctc", "ctc_greedy"), ("ctc", "ctc_prefix_beam"),
                         ("transducer", "transducer_greedy"), ("transducer", "transducer_beam")]:
        m = evaluate_model(model, tok, utts, head=head, method=method)
        assert m["utterances"] == 8 and 0.0 <= m["wer"]
    with pytest.raises(ValueError, match="heads"):
        model.decode(batch.waves, batch.wave_lens, head="attention")
