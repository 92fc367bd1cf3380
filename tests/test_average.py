"""`python -m asr average`: the mean of a run's last epoch checkpoints."""
import pytest
import torch

from asr.__main__ import main
from asr.average import average_checkpoints, epoch_checkpoints
from asr.checkpoint import FORMAT, load_model, read_checkpoint
from asr.train import Trainer
from test_train_resume import plain_config


def test_average_of_the_last_three_epochs_is_their_mean(tmp_path, tone_corpus, capsys):
    cfg = plain_config(tone_corpus, epochs=4, keep_checkpoints=3)
    Trainer(cfg, tmp_path / "exp").fit()
    kept = epoch_checkpoints(tmp_path / "exp")
    assert [p.name for p in kept] == ["epoch-2.pt", "epoch-3.pt", "epoch-4.pt"]

    out = tmp_path / "avg.pt"
    assert main(["average", "--exp", str(tmp_path / "exp"), "--last", "3", "--out", str(out)]) == 0
    states = [read_checkpoint(p) for p in kept]
    averaged = read_checkpoint(out)
    for name, tensor in averaged["model"].items():
        mean = (states[0]["model"][name] + states[1]["model"][name] + states[2]["model"][name]) / 3
        torch.testing.assert_close(tensor, mean, rtol=1e-6, atol=1e-7, msg=name)
    assert averaged["config"] == states[-1]["config"]
    assert averaged["tokenizer"] == states[-1]["tokenizer"]
    assert averaged["step"] == states[-1]["step"]
    assert not out.with_name("avg.pt.tmp").exists()
    load_model(out)  # a model like any other

    capsys.readouterr()
    assert main(["average", "--exp", str(tmp_path / "exp"), "--last", "4", "--out", str(out)]) == 2
    assert "asked for the last 4 epoch checkpoints, found 3" in capsys.readouterr().err


def test_integer_buffers_come_from_the_newest():
    def state(step, weight, count):
        return {"format": FORMAT, "config": {"encoder": {"hidden_size": 8}}, "tokenizer": None,
                "step": step, "model": {"w": torch.tensor([weight]), "n": torch.tensor(count)}}

    import asr.average
    states = {"a.pt": state(30, 3.0, 7), "b.pt": state(10, 1.0, 5), "c.pt": state(20, 2.0, 6)}
    real = asr.average.read_checkpoint
    asr.average.read_checkpoint = lambda p: states[str(p)]
    try:
        avg = average_checkpoints(["a.pt", "b.pt", "c.pt"])
    finally:
        asr.average.read_checkpoint = real
    assert avg["model"]["w"].item() == pytest.approx(2.0)
    assert avg["model"]["n"].item() == 7 and avg["model"]["n"].dtype == torch.int64
    assert avg["step"] == 30


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path, tone_corpus, capsys):
    Trainer(plain_config(tone_corpus, epochs=2), tmp_path / "exp").fit()
    first, second = epoch_checkpoints(tmp_path / "exp")
    state = read_checkpoint(first)
    state["config"]["encoder"]["hidden_size"] = 32  # another model, same file layout
    torch.save(state, tmp_path / "other.pt")
    code = main(["average", "--out", str(tmp_path / "avg.pt"), str(tmp_path / "other.pt"),
                 str(second)])
    assert code == 2
    err = capsys.readouterr().err
    assert "other.pt: its model config differs" in err and "['encoder']" in err
    assert not (tmp_path / "avg.pt").exists()
