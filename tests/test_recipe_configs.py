"""Every ASR recipe config loads into the typed config and builds its model, and the
fine-tuning configs have the shapes of the models they start from."""
from pathlib import Path

import pytest
import yaml

from asr.config import load_config
from asr.model import ASRModel
from asr.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
ASR_CONFIGS = sorted(p for p in ROOT.glob("recipes/*/*.yaml")
                     if "encoder" in (yaml.safe_load(p.read_text()) or {}))


def test_there_are_ctc_and_rnnt_configs_for_synth_fsdd_and_ljspeech():
    names = {f"{p.parent.name}/{p.name}" for p in ASR_CONFIGS}
    for corpus in ("synth", "fsdd", "ljspeech"):
        assert {f"{corpus}/ctc.yaml", f"{corpus}/rnnt.yaml"} <= names


@pytest.mark.parametrize("path", ASR_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_config_builds_a_model(path):
    cfg = load_config(path)
    model = ASRModel(cfg, CharTokenizer().vocab_size)
    assert set(model.heads) == set(cfg.heads)
    if path.name == "rnnt.yaml":
        assert "transducer" in model.heads


@pytest.mark.parametrize("corpus", ["ljspeech"])
@pytest.mark.parametrize("kind", ["ctc", "rnnt"])
def test_fine_tuning_configs_match_the_synthetic_models_they_start_from(corpus, kind):
    synth = ASRModel(load_config(ROOT / "recipes" / "synth" / f"{kind}.yaml"), CharTokenizer().vocab_size)
    tuned = ASRModel(load_config(ROOT / "recipes" / corpus / f"{kind}.yaml"), CharTokenizer().vocab_size)
    tuned.load_state_dict(synth.state_dict())  # raises on any missing key or shape mismatch


def test_active_learning_recipe_loads_and_its_model_takes_the_seed_init_weights(monkeypatch):
    from active_learning.loop import load_loop_config
    from asr.checkpoint import read_checkpoint

    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the project root
    loop = load_loop_config("recipes/active_learning/loop.yaml")
    assert loop.seed_init and set(loop.strategies) >= {"egl", "random", "confidence"} and len(loop.seeds) >= 3
    model = ASRModel(load_config(loop.model), CharTokenizer().vocab_size)
    model.load_state_dict(read_checkpoint(loop.seed_init)["model"])  # raises on a shape mismatch


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """PyYAML reads ``5e-4`` (YAML 1.1: no dot) as a string; a float field takes it as the
    number a user meant, in a config file and in a --set override; other text is refused."""
    from asr.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-3, epochs: 2}\n")
    assert load_config(path).train.lr == 1e-3
    assert load_config(path, ["train.lr=5e-4"]).train.lr == 5e-4
    assert load_config(path, ["train.lr=-2.5E+2"]).train.lr == -250.0
    with pytest.raises(ConfigError, match=r"train\.lr: expected float, got 'fast'"):
        load_config(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_config(path, ["train.epochs=1e3"])
