"""recipes/english/piece_init.py: a character CTC model's weights become the start of a
SentencePiece CTC model, which the trainer then continues with the saved pieces."""
import pytest
import torch

from asr.checkpoint import read_checkpoint, save_checkpoint
from asr.model import ASRModel
from asr.text import CharTokenizer
from asr.train import Trainer
from recipes.english import piece_init


def test_char_model_starts_a_piece_model(tone_corpus, tmp_path):
    from test_train import tiny_config

    cfg = tiny_config(tone_corpus, epochs=1)
    char = CharTokenizer()
    model = ASRModel(cfg, char.vocab_size)
    src = save_checkpoint(tmp_path / "char" / "model.pt", cfg, char, model)
    out = tmp_path / "init.pt"
    summary = piece_init.main(["--model", str(src), "--train", str(tone_corpus), "--pieces", "12",
                               "--out", str(out)])
    assert summary["dropped"] == ["heads.ctc.proj.weight", "heads.ctc.proj.bias"]
    state = read_checkpoint(out)
    assert state["tokenizer"]["kind"] == "sentencepiece"

    cfg.tokenizer.kind = "sentencepiece"
    trainer = Trainer(cfg, tmp_path / "exp", init_from=str(out))
    assert trainer.tokenizer.to_dict() == state["tokenizer"]  # the saved pieces, not new ones
    trainer.fit()
    trained = read_checkpoint(tmp_path / "exp" / "model.pt")["model"]
    # the encoder started from the character model's weights (one epoch moves them a little)
    w = "encoder.rnn.weight_ih_l0" if "encoder.rnn.weight_ih_l0" in trained else next(
        k for k in trained if k.startswith("encoder.") and k.endswith("weight_ih_l0"))
    fresh = ASRModel(cfg, trainer.tokenizer.vocab_size).state_dict()[w]
    start = model.state_dict()[w]
    assert (trained[w] - start).abs().mean() < (trained[w] - fresh).abs().mean()
    assert trained["heads.ctc.proj.weight"].shape[0] == trainer.tokenizer.vocab_size


def test_a_checkpoint_without_ctc_head_is_refused(tone_corpus, tmp_path):
    from asr.config import HeadConfig
    from test_train import tiny_config

    cfg = tiny_config(tone_corpus, epochs=1)
    cfg.heads = {"transducer": HeadConfig(options={"pred_dim": 8, "joiner_dim": 8})}
    char = CharTokenizer()
    src = save_checkpoint(tmp_path / "m.pt", cfg, char, ASRModel(cfg, char.vocab_size))
    with pytest.raises(ValueError, match="no CTC output layer"):
        piece_init.main(["--model", str(src), "--train", str(tone_corpus), "--out", str(tmp_path / "o.pt")])
