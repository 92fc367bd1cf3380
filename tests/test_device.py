"""train.device / train.precision / train.num_workers and `evaluate --device`: auto picks
the CPU without a GPU, bf16 autocast trains on the CPU, fp16 scales its loss; the CUDA
paths run only where a GPU is."""
import json
import math

import pytest
import torch

from asr.__main__ import main
from asr.checkpoint import read_checkpoint
from asr.data import Batch
from asr.device import autocast, resolve_device
from asr.train import Trainer
from test_train_resume import plain_config

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False here"


def test_auto_picks_the_cpu_without_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_asking_for_cuda_without_a_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="torch.cuda.is_available.. is False"):
        resolve_device("cuda")


def test_a_batch_moves_to_the_device():
    batch = Batch(["a"], torch.zeros(1, 5), torch.tensor([5]), torch.ones(1, 2, dtype=torch.long),
                  torch.tensor([2]))
    moved = batch.to(torch.device("meta"))  # a stand-in device: no memory, same moves
    assert all(t.device.type == "meta" for t in (moved.waves, moved.wave_lens, moved.targets,
                                                  moved.target_lens))
    assert moved.ids == ["a"]


def _record_dtypes(trainer):
    """The dtypes of the encoder's input projection outputs during training."""
    seen = []
    trainer.model.encoder.input_proj.register_forward_hook(
        lambda m, i, out: seen.append(out.dtype) if m.training else None)
    return seen


def test_bf16_autocast_trains_on_the_cpu_with_worker_processes(tmp_path, tone_corpus):
    cfg = plain_config(tone_corpus, epochs=1, precision="bf16", device="cpu", num_workers=1)
    trainer = Trainer(cfg, tmp_path / "exp")
    dtypes = _record_dtypes(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    steps, real_step = [], trainer._train_step
    trainer._train_step = lambda group: steps.append(real_step(group)) or steps[-1]
    result = trainer.fit()
    assert result.steps == len(steps) > 0 and set(dtypes) == {torch.bfloat16}
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # the features are computed in fp32 under autocast too
    wave, lens = torch.randn(1, 8000), torch.tensor([8000])
    with autocast(torch.device("cpu"), "bf16"):
        feats, _ = trainer.model.normalized_features(wave, lens)
    torch.testing.assert_close(feats, trainer.model.normalized_features(wave, lens)[0])


def test_fp16_scales_the_loss_and_saves_the_scaler(tmp_path, tone_corpus):
    cfg = plain_config(tone_corpus, epochs=1, precision="fp16", device="cpu")
    trainer = Trainer(cfg, tmp_path / "exp")
    assert trainer.scaler.is_enabled()
    dtypes = _record_dtypes(trainer)
    trainer.fit()
    assert set(dtypes) == {torch.float16}
    assert read_checkpoint(tmp_path / "exp" / "last.pt")["scaler"]["scale"] > 1.0


def test_evaluate_on_the_device_asked_for(tmp_path, tone_corpus, capsys):
    result = Trainer(plain_config(tone_corpus, epochs=1), tmp_path / "exp").fit()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(result.model_path), "--corpus", "manifest",
                 "--data", str(tone_corpus), "--device", "cpu", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["utterances"] == 8
    if not torch.cuda.is_available():
        assert main(["evaluate", "--model", str(result.model_path), "--corpus", "manifest",
                     "--data", str(tone_corpus), "--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trains_and_evaluates_on_cuda(tmp_path, tone_corpus, precision, capsys):
    cfg = plain_config(tone_corpus, epochs=1, device="cuda", precision=precision, num_workers=1)
    trainer = Trainer(cfg, tmp_path / "exp")
    assert next(trainer.model.parameters()).is_cuda
    result = trainer.fit()
    assert result.steps > 0
    assert main(["evaluate", "--model", str(result.model_path), "--corpus", "manifest",
                 "--data", str(tone_corpus), "--device", "cuda"]) == 0


@pytest.mark.parametrize("loss", ["pruned", "torchaudio"])
def test_bf16_trains_a_transducer_head_with_an_fp32_loss(tmp_path, tone_corpus, loss):
    from asr.config import HeadConfig

    cfg = plain_config(tone_corpus, epochs=1, precision="bf16", device="cpu")
    cfg.heads = {"transducer": HeadConfig(options={"pred_dim": 16, "joiner_dim": 16,
                                                   "prune_range": 3, "loss": loss})}
    trainer = Trainer(cfg, tmp_path / "exp")
    dtypes = []
    head = trainer.model.heads["transducer"]
    real_loss = head.loss
    head.loss = lambda *a: dtypes.append((out := real_loss(*a)).dtype) or out
    steps, real_step = [], trainer._train_step
    trainer._train_step = lambda group: steps.append(real_step(group)) or steps[-1]
    trainer.fit()
    assert steps and all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)
    assert set(dtypes) == {torch.float32}
