"""``python -m kws evaluate --split test``: the release's testing_list.txt when the folder has
it (the hash split ignored it and kept other speakers), else the speaker hash, and the JSON
says which rule chose the clips and how many of how many (a test set of new speakers keeps
about a fifth of its clips; none kept: an error that says why and names --split all)."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.layout import SPEECH_COMMANDS_LABELS, hash_split

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "models" / "speech_commands_crnn_int8.onnx"


def _speakers(split, n):
    out, i = [], 0
    while len(out) < n:
        spk = f"{i:08x}"
        if hash_split(spk) == split:
            out.append(spk)
        i += 1
    return out


def _clip(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.05 * rng.standard_normal(16000)).astype(np.float32), 16000)


def make_layout(root: Path, speakers) -> list:
    files = []
    for k, label in enumerate(SPEECH_COMMANDS_LABELS):
        for j, spk in enumerate(speakers):
            name = f"{j}.wav" if label == "_silence_" else f"{spk}_nohash_0.wav"
            _clip(root / label / name, 100 * k + j)
            files.append(f"{label}/{name}")
    return files


@pytest.fixture(scope="module")
def model():
    from kws.edge import KWSModel
    return KWSModel(str(MODEL))


def test_hash_split_is_reported_with_the_clips_it_kept(tmp_path, model):
    from kws.evaluate import evaluate_commands

    root = tmp_path / "sc test"
    make_layout(root, _speakers("test", 1) + _speakers("train", 3))
    rep = evaluate_commands(model, str(root), split="test")
    assert rep["clips_in_folder"] == 48 and rep["n"] < 48
    assert rep["split"] == "test" and "hash_split" in rep["split_rule"]
    assert evaluate_commands(model, str(root))["n"] == 48


def test_no_clip_in_the_split_says_why(tmp_path, model):
    from kws.evaluate import evaluate_commands

    root = tmp_path / "sc"
    make_layout(root, _speakers("train", 2))
    with pytest.raises(ValueError, match=r"none of its 24 clips is in split 'test' .*hash_split"
                                         r".*--split all"):
        evaluate_commands(model, str(root), split="test")


def test_the_releases_testing_list_chooses_the_test_clips(tmp_path, model):
    from kws.evaluate import evaluate_commands

    root = tmp_path / "speech_commands_v0.02"
    spk = _speakers("train", 2) + _speakers("test", 1)  # hashing disagrees with the lists
    files = make_layout(root, spk)
    listed = [f for f in files if f.split("/")[0] != "_silence_" and f"{spk[0]}_" in f]
    (root / "testing_list.txt").write_text("\n".join(listed) + "\n")
    (root / "validation_list.txt").write_text("")
    rep = evaluate_commands(model, str(root), split="test")
    assert rep["n"] == len(listed) == 11 and "testing_list.txt" in rep["split_rule"]
    assert rep["per_class_n"]["_silence_"] == 0 and rep["per_class_n"]["yes"] == 1
    train = evaluate_commands(model, str(root), split="train")
    assert train["n"] == len(files) - len(listed)
