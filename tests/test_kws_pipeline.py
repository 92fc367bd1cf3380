"""End to end on tiny generated data in the public layouts: train -> export -> the CLI's
evaluate / evaluate-detection / detect, and the edge runtime without torch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kws.config import CRNNConfig, KWSConfig, KWSTrainConfig
from kws.data import NoiseBank, load_clips, manifest_entry, scan_speech_commands
from kws.edge import KWSModel
from kws.export import export_onnx, quantize_int8
from kws.train import load_checkpoint, train

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def _word(freq: float, rng, n=SR, start=None, dur=0.4):
    """A 'word': a tone burst with a little noise, at a random place in 1 s."""
    x = 0.003 * rng.standard_normal(n)
    m = int(dur * SR)
    s = rng.integers(1000, n - m - 1000) if start is None else start
    t = np.arange(m) / SR
    x[s:s + m] += 0.3 * np.sin(2 * np.pi * freq * (1 + rng.uniform(-0.03, 0.03)) * t) * np.hanning(m)
    return x.astype(np.float32)


def _write_layout(root: Path, rng, per_class=12):
    """Speech Commands test-set layout: <class>/<speaker>_nohash_<n>.wav."""
    spk = [f"{i:08x}" for i in range(6)]
    for label, freq in (("yes", 500.0), ("no", 1500.0)):
        for i in range(per_class):
            p = root / label / f"{spk[i % 6]}_nohash_{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _word(freq, rng), SR)
    for i in range(per_class):
        p = root / "_unknown_" / f"bed_{spk[i % 6]}_nohash_{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, _word(3500.0, rng), SR)
        p = root / "_silence_" / f"{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.003 * rng.standard_normal(SR)).astype(np.float32), SR)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kws")
    rng = np.random.default_rng(0)
    data = tmp / "sc"
    _write_layout(data, rng)
    labels = ["_silence_", "_unknown_", "yes", "no"]
    cfg = KWSConfig(name="tiny", labels=labels,
                    model=CRNNConfig(conv_channels=8, gru_size=16, dense_size=16, gru_layers=1),
                    train=KWSTrainConfig(epochs=8, examples_per_epoch=256, batch_size=32, lr=1e-2,
                                         max_minutes=None))
    cfg.augment.pitch_semitones = [0.0]
    entries = [manifest_entry(p, lab, spk) for p, lab, spk in scan_speech_commands(data, labels)]
    index = {n: i for i, n in enumerate(labels)}
    clips = load_clips(entries, index)
    torch.set_num_threads(1)
    summary = train(cfg, clips, clips[::3], tmp / "ckpt", NoiseBank([], colored_prob=1.0))
    spotter = load_checkpoint(tmp / "ckpt")
    fp32 = export_onnx(spotter.crnn, spotter.cfg, tmp / "tiny.onnx", frontend=spotter.frontend)
    int8 = quantize_int8(fp32, tmp / "tiny_int8.onnx")
    return {"tmp": tmp, "data": data, "summary": summary, "fp32": fp32, "int8": int8, "spotter": spotter}


def _cli(*args, stdin=None):
    r = subprocess.run([sys.executable, "-m", "kws", *map(str, args)], cwd=ROOT, input=stdin,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r.stdout.decode()


def test_checkpoint_has_config_history_and_plot(trained):
    ck = trained["tmp"] / "ckpt"
    for name in ("model.pt", "config.yaml", "history.json", "training.png"):
        assert (ck / name).is_file(), name
    assert "gru_size: 16" in (ck / "config.yaml").read_text()
    assert trained["summary"]["val_accuracy"] > 0.6  # 4 classes: chance is 0.25
    history = json.loads((ck / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]


def test_cli_evaluate_prints_one_json_line(trained):
    out = _cli("evaluate", "--model", trained["fp32"], "--corpus", "speech_commands", "--data", trained["data"])
    lines = out.strip().splitlines()
    assert len(lines) == 1
    rep = json.loads(lines[0])
    assert rep["n"] == 48 and set(rep["per_class_accuracy"]) == {"_silence_", "_unknown_", "yes", "no"}
    assert rep["accuracy"] > 0.6
    # the same clips through torch give the same predictions as onnxruntime
    edge = KWSModel(str(trained["fp32"]))
    waves = [edge.fit_window(sf.read(p, dtype="float32")[0]) for p, _, _ in
             scan_speech_commands(trained["data"], edge.labels)[:10]]
    with torch.no_grad():
        ref = torch.softmax(trained["spotter"](torch.from_numpy(np.stack(waves))), -1).numpy()
    np.testing.assert_allclose(edge.classify(waves), ref, atol=1e-4)


def test_cli_evaluate_names_a_bad_layout(trained, tmp_path):
    (tmp_path / "yes").mkdir()
    r = subprocess.run([sys.executable, "-m", "kws", "evaluate", "--model", str(trained["fp32"]),
                        "--data", str(tmp_path)], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 2 and str(tmp_path) in r.stderr.decode()


def test_cli_evaluate_detection_keys_and_counts(trained, tmp_path):
    rng = np.random.default_rng(5)
    pos, neg, noise = tmp_path / "pos", tmp_path / "neg" / "deeper", tmp_path / "noise"
    pos.mkdir(), neg.mkdir(parents=True), noise.mkdir()
    for i in range(6):
        sf.write(pos / f"p{i}.wav", np.concatenate([_word(500.0, rng), _word(500.0, rng, dur=0.01)]), SR)
    for i in range(4):  # 20 s of 'other words' and noise, in a subfolder (read recursively)
        sf.write(neg / f"n{i}.flac", np.concatenate([_word(3500.0, rng) for _ in range(5)]), SR)
    sf.write(neg / "silent.wav", np.zeros(SR, np.float32), SR)
    (neg / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(noise / "hum.wav", (0.05 * np.sin(np.arange(3 * SR) * 0.05)).astype(np.float32), SR)
    out = _cli("evaluate-detection", "--model", trained["fp32"], "--positives", pos,
               "--negatives", tmp_path / "neg", "--snr", "5", "--noise", noise, "--out", tmp_path / "eval")
    lines = out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    for key in ("frr_at_0.5_fa_per_hour", "frr_at_1_fa_per_hour", "negative_hours", "positives", "skipped"):
        assert key in res
    assert res["positives"] == 6 and res["negative_files"] == 4
    assert res["negative_hours"] == pytest.approx(20 / 3600, rel=1e-3)
    # 20 s cannot show a rate of 1 FA/h (the rule needs 3 h): null, and why
    assert res["frr_at_1_fa_per_hour"] is None and res["frr_at_0.5_fa_per_hour"] is None
    assert "needs >= 1.5 h" in res["frr_at_1_fa_per_hour_unreported"]
    assert sorted(Path(s["file"]).name for s in res["skipped"]) == ["corrupt.wav", "silent.wav"]
    assert "silent" in {Path(s["file"]).name: s["reason"] for s in res["skipped"]}["silent.wav"]
    assert set(res["conditions"]) == {"clean", "snr_5"}
    clean = res["conditions"]["clean"]
    # the model tells its "yes" (a 500 Hz burst) from the 3500 Hz "other words": at most one
    # of the six is missed at the 0.5 threshold, or at the threshold above every false alarm
    assert clean["detected_at_threshold"] >= 5 and clean["frr_at_zero_false_alarms"] <= 1 / 6
    assert len(clean["positive_scores"]) == 6
    assert (tmp_path / "eval" / "det.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "detection.json").read_text())["positives"] == 6
    # with the rule off (k = 0) the figures are given
    out = _cli("evaluate-detection", "--model", trained["fp32"], "--positives", pos,
               "--negatives", tmp_path / "neg", "--snr", "--min-hours-factor", "0")
    res0 = json.loads(out.strip().splitlines()[-1])
    assert list(res0["conditions"]) == ["clean"]
    assert res0["frr_at_1_fa_per_hour"] == pytest.approx(clean["frr_at_zero_false_alarms"], abs=1 / 6)


def test_evaluate_detection_noise_defaults_to_real_background_noise(trained, tmp_path, monkeypatch, capsys,
                                                                     caplog):
    """Without --noise the 5 dB condition mixes Speech Commands _background_noise_ from the
    shared corpora when found; with no real noise it uses generated noise and says so."""
    import kws.evaluate as ev
    from kws.__main__ import main
    from kws.layout import BACKGROUND_NOISE, SHARED_CORPORA

    rng = np.random.default_rng(8)
    roots = [tmp_path / "none", tmp_path / "corpora"]
    noise = tmp_path / "corpora" / BACKGROUND_NOISE
    noise.mkdir(parents=True)
    assert ev.default_noise_dirs(roots) == []  # a folder without audio is not noise
    sf.write(noise / "hum.wav", (0.05 * np.sin(np.arange(3 * SR) * 0.05)).astype(np.float32), SR)
    assert ev.default_noise_dirs(roots) == [str(noise.resolve())]
    shared = (ROOT / SHARED_CORPORA / BACKGROUND_NOISE).resolve()
    if shared.is_dir():  # by default: ../shared/corpora beside the repository
        assert ev.default_noise_dirs() == [str(shared)]
    pos, neg = tmp_path / "pos", tmp_path / "neg"
    pos.mkdir(), neg.mkdir()
    for i in range(2):
        sf.write(pos / f"p{i}.wav", _word(500.0, rng), SR)
        sf.write(neg / f"n{i}.wav", _word(3500.0, rng), SR)

    def run(*extra):
        args = ["evaluate-detection", "--model", str(trained["fp32"]), "--positives", str(pos),
                "--negatives", str(neg), "--snr", "5", *extra]
        assert main(args) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(ev, "default_noise_dirs", lambda roots=None: [str(noise)])
    assert run()["noise"] == [str(noise)]  # found: real noise, named
    assert run("--noise")["noise"] == "generated"  # '--noise' with no folder: generated, said so
    monkeypatch.setattr(ev, "default_noise_dirs", lambda roots=None: [])
    caplog.clear()
    res = run()
    assert res["noise"] == "generated" and "snr_5" in res["conditions"]
    assert "generated" in caplog.text


def test_train_negatives_stream_reports_and_skips_corrupt_and_silent_files(trained, tmp_path, monkeypatch,
                                                                           capsys, caplog):
    """kws train --negatives-stream reads the folders with kws.negatives.load_negatives: a
    silent or undecodable file is named in the log and the JSON and is not mined."""
    import kws.train
    from kws.__main__ import main
    from kws.config import save_kws_config

    rng = np.random.default_rng(9)
    neg = tmp_path / "neg"
    neg.mkdir()
    sf.write(neg / "speech.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    sf.write(neg / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    (neg / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    labels = ["_silence_", "_unknown_", "yes", "no"]
    cfg = KWSConfig(name="tiny", labels=labels,
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1))
    save_kws_config(cfg, tmp_path / "c.yaml")
    with open(tmp_path / "train.jsonl", "w") as f:
        for p, lab, spk in scan_speech_commands(trained["data"], labels)[:4]:
            f.write(json.dumps(manifest_entry(p, lab, spk)) + "\n")
    seen = {}

    def fake_train(cfg, train_clips, val_clips, out, noise, streams):
        seen["streams"] = streams
        return {"epochs_run": 0}

    monkeypatch.setattr(kws.train, "train", fake_train)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--train", str(tmp_path / "train.jsonl"),
                 "--out", str(tmp_path / "o"), "--negatives-stream", str(neg)]) == 0
    assert len(seen["streams"]) == 1 and seen["streams"][0].numel() == SR  # the speech file alone
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    skipped = res["skipped_negative_stream"]
    assert len(skipped) == 2
    assert any("silent.wav" in s and "silent" in s for s in skipped)
    assert any("corrupt.wav" in s for s in skipped)
    assert "silent.wav" in caplog.text and "corrupt.wav" in caplog.text


def test_evaluate_detection_takes_a_checkpoint(trained, tmp_path):
    """--model may be a checkpoint: exported to ONNX first (in-process here: the CLI's
    model loader, without a second torch start-up)."""
    from kws.__main__ import _load_edge_model
    from kws.evaluate import DetectionEvalConfig, detection_report

    rng = np.random.default_rng(6)
    (tmp_path / "pos").mkdir(), (tmp_path / "neg").mkdir()
    sf.write(tmp_path / "pos" / "p.wav", _word(500.0, rng), SR)
    sf.write(tmp_path / "neg" / "n.wav", _word(3500.0, rng), SR)
    model = _load_edge_model(str(trained["tmp"] / "ckpt"), 1, str(tmp_path / "o"))
    assert (tmp_path / "o" / "model.onnx").is_file()
    res = detection_report(model, [tmp_path / "pos"], [tmp_path / "neg"], DetectionEvalConfig(snrs=()))
    ref = detection_report(KWSModel(str(trained["fp32"])), [tmp_path / "pos"], [tmp_path / "neg"],
                           DetectionEvalConfig(snrs=()))
    assert res["positives"] == 1
    assert res["conditions"]["clean"]["positive_scores"] == pytest.approx(
        ref["conditions"]["clean"]["positive_scores"], abs=1e-3)
    with pytest.raises(ValueError, match="expected an .onnx model"):
        _load_edge_model(str(tmp_path / "pos" / "p.wav"), 1)


def test_noisy_validation_conditions_and_means(trained, tmp_path):
    from kws.evaluate import noisy_validation

    rng = np.random.default_rng(7)
    for sub in ("positives", "negatives/speech", "noise"):
        (tmp_path / sub).mkdir(parents=True)
    for i in range(4):  # the model's "yes" is a 500 Hz burst, "_unknown_" a 3500 Hz one
        sf.write(tmp_path / "positives" / f"p{i}.wav", _word(500.0, rng), SR)
        sf.write(tmp_path / "negatives" / "speech" / f"n{i}.wav", _word(3500.0, rng), SR)
        sf.write(tmp_path / "noise" / f"z{i}.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    res = noisy_validation(KWSModel(str(trained["fp32"])), tmp_path, snrs=(5.0, -20.0), seeds=(0, 1),
                           smooth_options=(1, 2))
    assert res["positives"] == 4 and res["negative_hours"] == pytest.approx(4 / 3600)
    assert list(res["conditions"]) == ["clean", "snr5_seed0", "snr5_seed1", "snr-20_seed0", "snr-20_seed1"]
    for name, row in res["conditions"].items():
        for h in ("1", "2"):
            assert 0 <= row[h]["missed_at_zero_fa"] <= 4
            if not name.startswith("snr-20"):  # clean and at 5 dB SNR every "yes" is found
                assert row[h]["missed_at_zero_fa"] == 0 and row[h]["frr_at_0.5_fa_per_hour"] == 0.0, name
                assert row[h]["mean_margin"] > 0.2, name
    noisy = [v for k, v in res["conditions"].items() if k != "clean"]
    assert res["mean_noisy"]["2"]["mean_margin"] == pytest.approx(np.mean([r["2"]["mean_margin"] for r in noisy]))
    # drowning the words in noise 20 dB louder than them costs margin against clean
    clean, drowned = res["conditions"]["clean"]["1"], res["conditions"]["snr-20_seed0"]["1"]
    assert drowned["mean_margin"] < clean["mean_margin"]
    with pytest.raises(FileNotFoundError, match="positives"):  # not a validation folder
        noisy_validation(KWSModel(str(trained["fp32"])), tmp_path / "noise")
    empty = tmp_path / "empty"
    (empty / "positives").mkdir(parents=True)
    (empty / "negatives").mkdir()
    with pytest.raises(ValueError, match="empty: needs audio"):
        noisy_validation(KWSModel(str(trained["fp32"])), empty)


def test_stream_is_chunk_invariant_and_finds_the_word(trained):
    edge = KWSModel(str(trained["fp32"]))
    rng = np.random.default_rng(1)
    audio = np.concatenate([_word(1500.0, rng, start=3000) for _ in range(3)] + [_word(3500.0, rng)])
    runs = []
    for chunk in (160, 1600, 7777, audio.size):
        s = edge.stream(record=True)
        dets = []
        for i in range(0, audio.size, chunk):
            dets += s.accept_waveform(audio[i:i + chunk])
        dets += s.flush()
        runs.append((np.stack(s.posteriors), [(d.label, round(d.time_s, 3)) for d in dets]))
    for post, dets in runs[1:]:
        np.testing.assert_allclose(post, runs[0][0], atol=1e-5)
        assert dets == runs[0][1]
    assert len(runs[0][0]) == (audio.size + int(0.3 * SR) - 256) // 160 // 10  # one window per 100 ms hop
    assert any(label == "no" for label, _ in runs[0][1])


def test_edge_detect_runs_without_torch(trained, tmp_path):
    rng = np.random.default_rng(2)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.concatenate([_word(500.0, rng, start=5000), _word(500.0, rng)]), SR)
    code = ("import sys, json; from kws.__main__ import main; "
            f"rc = main(['detect', {str(wav)!r}, '--model', {str(trained['int8'])!r}, '--threshold', '0.5']); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'rc': rc}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(line) for line in r.stdout.decode().strip().splitlines()]
    assert lines[-1] == {"torch": False, "rc": 0}
    assert any(d.get("label") == "yes" for d in lines[:-1])


def test_detect_reads_raw_pcm_from_stdin(trained):
    rng = np.random.default_rng(3)
    audio = np.concatenate([_word(1500.0, rng, start=4000), _word(3500.0, rng)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    out = _cli("detect", "-", "--model", trained["fp32"], "--threshold", "0.5", stdin=pcm)
    dets = [json.loads(line) for line in out.strip().splitlines()]
    assert dets and all(set(d) == {"time", "label", "score"} for d in dets)
    assert dets[0]["label"] == "no" and 0.2 < dets[0]["time"] < 1.4


def test_without_validation_the_last_epoch_is_kept(trained, tmp_path):
    """Final models (validation speakers trained on): the checkpoint is the last epoch, not
    the best augmented training accuracy."""
    labels = ["_silence_", "_unknown_", "yes", "no"]
    cfg = KWSConfig(name="tiny", labels=labels,
                    model=CRNNConfig(conv_channels=4, gru_size=8, dense_size=8, gru_layers=1),
                    train=KWSTrainConfig(epochs=3, examples_per_epoch=64, batch_size=32, lr=1e-2,
                                         max_minutes=None, mixup_alpha=0.3, ema_decay=0.9))
    cfg.augment.pitch_semitones = [0.0]
    entries = [manifest_entry(p, lab, spk) for p, lab, spk in scan_speech_commands(trained["data"], labels)]
    clips = load_clips(entries, {n: i for i, n in enumerate(labels)})
    summary = train(cfg, clips, [], tmp_path / "ckpt", NoiseBank([], colored_prob=1.0))
    assert summary["best_epoch"] == summary["epochs_run"] == 3
    assert summary["val_accuracy"] is None
