"""The spotter's checkpoint is replaced atomically: a save that fails half-way leaves the
previous checkpoint loadable and no temp file behind."""
import pytest
import torch

import kws.train
from kws.config import CRNNConfig, KWSConfig
from kws.train import Spotter, load_checkpoint, save_checkpoint


def _spotter(seed: int) -> Spotter:
    torch.manual_seed(seed)
    cfg = KWSConfig(name="tiny", labels=["_silence_", "_unknown_", "yes"],
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1))
    return Spotter(cfg)


def test_a_save_killed_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _spotter(0)
    save_checkpoint(first, tmp_path, extra={"epoch": 1})
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are on disk when the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(kws.train.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_spotter(1), tmp_path, extra={"epoch": 2})
    monkeypatch.undo()

    back = load_checkpoint(tmp_path)
    for name, value in first.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert torch.load(tmp_path / "model.pt", weights_only=False)["extra"] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.pt"]
    # and a save that completes does replace it
    second = _spotter(1)
    save_checkpoint(second, tmp_path, extra={"epoch": 2})
    back = load_checkpoint(tmp_path).state_dict()
    assert all(torch.equal(back[name], value) for name, value in second.state_dict().items())
    assert not all(torch.equal(back[name], value) for name, value in first.state_dict().items())
