"""kws train.device: the spotter trains where it is asked to, and a missing GPU is an error."""
import numpy as np
import pytest
import torch

from kws.config import CRNNConfig, KWSConfig, KWSTrainConfig
from kws.data import NoiseBank, load_clips, manifest_entry, scan_speech_commands
from kws.train import load_checkpoint, train
from test_kws_pipeline import _write_layout

LABELS = ["_silence_", "_unknown_", "yes", "no"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    data = tmp_path_factory.mktemp("sc")
    _write_layout(data, np.random.default_rng(0), per_class=4)
    entries = [manifest_entry(p, lab, spk) for p, lab, spk in scan_speech_commands(data, LABELS)]
    return load_clips(entries, {n: i for i, n in enumerate(LABELS)})


def tiny(device):
    cfg = KWSConfig(name="tiny", labels=LABELS,
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1),
                    train=KWSTrainConfig(epochs=1, examples_per_epoch=32, batch_size=16,
                                         max_minutes=None, mixup_alpha=0.3, device=device))
    cfg.augment.pitch_semitones = [0.0]
    return cfg


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_trains_on_the_device_asked_for(clips, tmp_path, device, monkeypatch):
    import kws.train

    seen = []
    real = kws.train.Spotter.features
    monkeypatch.setattr(kws.train.Spotter, "features",
                        lambda self, wave: seen.append(wave.device.type) or real(self, wave))
    summary = train(tiny(device), clips, clips[::2], tmp_path / "ckpt", NoiseBank([], colored_prob=1.0))
    assert summary["epochs_run"] == 1
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    assert set(seen) == {expected}
    assert next(load_checkpoint(tmp_path / "ckpt").parameters()).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_an_error(clips, tmp_path):
    with pytest.raises(RuntimeError, match="torch.cuda.is_available.. is False"):
        train(tiny("cuda"), clips, [], tmp_path / "ckpt", NoiseBank([], colored_prob=1.0))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
def test_trains_on_cuda(clips, tmp_path):
    summary = train(tiny("cuda"), clips, clips[::2], tmp_path / "ckpt", NoiseBank([], colored_prob=1.0))
    assert summary["epochs_run"] == 1 and summary["val_accuracy"] is not None
