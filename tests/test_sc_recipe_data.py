"""The Speech Commands recipe's extra real data, on tiny generated corpora: ``_unknown_``
windows of other corpora's speech and ``_silence_`` crops of background noise."""
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from kws.negatives import corpus_files, split_held_out
from recipes.speech_commands.run import UNKNOWN_SPEECH_CORPORA, background_silence, speech_unknown

SR = 16000
WINDOW = SR  # 1 s


def _utterance(rng, start_s: float, end_s: float, total_s: float = 3.0) -> np.ndarray:
    """Quiet noise with a loud tone burst (the 'speech') over [start_s, end_s)."""
    t = np.arange(int(total_s * SR)) / SR
    wave = 0.001 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t) * ((t >= start_s) & (t < end_s))
    return wave.astype(np.float32)


def _corpora(root, rng):
    """speechocean762 (Kaldi), AN4 and LJSpeech layouts: 8 speakers x 3 utterances each in
    the first two, 12 LJSpeech files; every fourth transcript holds a command word."""
    texts = lambda i: "TURN LEFT NOW" if i % 4 == 0 else "MAKE A GOOD CHOICE"  # noqa: E731
    so = root / "speechocean762"
    (so / "train").mkdir(parents=True)
    scp, spk, txt = [], [], []
    an4 = root / "an4"
    (an4 / "etc").mkdir(parents=True)
    ids, trans = [], []
    i = 0
    for s in range(8):
        for u in range(3):
            utt = f"{s:04d}{u:04d}"
            p = so / "WAVE" / f"SPEAKER{s:04d}" / f"{utt}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _utterance(rng, 1.0, 1.5), SR)
            scp.append(f"{utt} WAVE/SPEAKER{s:04d}/{utt}.wav")
            spk.append(f"{utt} {s:04d}")
            txt.append(f"{utt} {texts(i)}")
            fid = f"an4_clstk/sp{s}/u{u}"
            p = an4 / "wav" / f"{fid}.flac"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, _utterance(rng, 0.5, 2.5), SR)  # longer than the window
            ids.append(fid)
            trans.append(f"<s> {texts(i + 1)} </s> (u{u})")
            i += 1
    for name, lines in (("wav.scp", scp), ("utt2spk", spk), ("text", txt)):
        (so / "train" / name).write_text("\n".join(lines) + "\n")
    (an4 / "etc" / "an4_train.fileids").write_text("\n".join(ids) + "\n")
    (an4 / "etc" / "an4_train.transcription").write_text("\n".join(trans) + "\n")
    lj = root / "ljspeech"
    (lj / "wavs").mkdir(parents=True)
    meta = []
    for k in range(12):
        sf.write(lj / "wavs" / f"LJ001-{k:04d}.wav", _utterance(rng, 2.0, 2.4), SR)
        meta.append(f"LJ001-{k:04d}|x|{texts(k + 2).lower()}")
    (lj / "metadata.csv").write_text("\n".join(meta) + "\n")


def test_speech_unknown_windows_are_centred_on_speech_and_skip_commands_and_held_out(tmp_path):
    rng = np.random.default_rng(0)
    _corpora(tmp_path, rng)
    clips = speech_unknown(tmp_path, 1000, label=1, window_samples=WINDOW, sample_rate=SR)
    files = corpus_files(tmp_path, UNKNOWN_SPEECH_CORPORA)
    train_files, held_files = split_held_out(files, 50.0)
    assert train_files and held_files
    commands = {f.path for f in files if "LEFT" in f.text.upper()}
    eligible = [f for f in train_files if f.path not in commands]
    # every training-side file without a command word, once; none other
    used = [c.path.split("#")[0] for c in clips]
    assert sorted(used) == sorted(f.path for f in eligible)
    assert not set(used) & ({f.path for f in held_files} | commands)
    length = WINDOW + 2 * (WINDOW // 4)
    for c in clips:
        assert c.label == 1 and c.source == "real" and c.wave.shape == (length,)
        f0, f1 = c.focus
        assert 0 <= f0 < f1 <= length
        # the burst is in the middle of the clip, and the focus is the burst
        loud = np.flatnonzero(np.abs(c.wave.numpy()) > 0.1)
        assert abs((loud[0] + loud[-1]) / 2 - length / 2) < 0.03 * SR
        assert abs(f0 - loud[0]) < 0.03 * SR and abs(f1 - loud[-1]) < 0.03 * SR
    # the corpora are taken in turn: a small n draws from all three equally
    few = speech_unknown(tmp_path, 6, label=1, window_samples=WINDOW, sample_rate=SR)
    assert Counter(c.speaker.split("/")[0] for c in few) == {"speechocean762": 2, "an4": 2, "ljspeech": 2}


def test_background_silence_crops_real_noise(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for k, seconds in enumerate((3.0, 2.0)):
        p = tmp_path / f"noise{k}.flac"
        sf.write(p, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, subtype="PCM_16")
        paths.append(p)
    sources = [sf.read(p, dtype="float32")[0] for p in paths]
    clips = background_silence(paths, 6, label=0, window_samples=WINDOW, sample_rate=SR)
    assert len(clips) == 6
    length = WINDOW + 2 * (WINDOW // 4)
    starts = []
    for k, c in enumerate(clips):
        assert c.label == 0 and c.focus is None and c.wave.shape == (length,)
        path, _, at = c.path.partition("#")
        assert path == str(paths[k % 2])  # the recordings in turn
        near = round(float(at.rstrip("s")) * SR)  # the name gives the place to 10 ms
        source = sources[k % 2]
        found = [s for s in range(max(0, near - 100), min(near + 100, source.size - length) + 1)
                 if np.allclose(c.wave.numpy(), source[s:s + length], atol=1e-6)]
        assert found  # a crop of the recording itself
        starts.append(found[0])
    assert len(set(starts)) == 6  # random places, not one crop repeated
    sf.write(tmp_path / "short.flac", np.zeros(SR, np.float32), SR)
    with pytest.raises(ValueError, match="short.flac"):
        background_silence([tmp_path / "short.flac"], 1, label=0, window_samples=WINDOW, sample_rate=SR)


def test_training_data_adds_both_when_asked(tmp_path):
    """The recipe's training data: the options add their clips to their classes, and the
    background recordings join the noise bank; without them nothing changes."""
    from kws.config import load_kws_config
    from kws.data import manifest_entry, write_manifest
    from recipes.speech_commands.run import HERE, training_data

    rng = np.random.default_rng(2)
    shared = tmp_path / "corpora"
    _corpora(shared, rng)
    noise_dir = shared / "speech_commands" / "_background_noise_"
    noise_dir.mkdir(parents=True)
    sf.write(noise_dir / "hum.wav", (0.05 * rng.standard_normal(3 * SR)).astype(np.float32), SR)
    out = tmp_path / "prepared"
    entries = []
    for k, label in enumerate(["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off",
                               "stop", "go"]):
        p = tmp_path / "sc" / label / f"{k:08x}_nohash_0.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, _utterance(rng, 0.4, 0.6, total_s=1.0), SR)
        entries.append(manifest_entry(p, label, f"{k:08x}"))
    write_manifest(entries, out / "train.jsonl")
    write_manifest(entries[:2], out / "val.jsonl")
    write_manifest([], out / "extra_unknown.jsonl")
    (out / "noise_files.txt").write_text(entries[0]["audio"] + "\n")
    cfg = load_kws_config(HERE / "conf" / "crnn.yaml")
    plain, _, plain_noise = training_data(cfg, out, shared)
    clips, val, noise = training_data(cfg, out, shared, unknown_speech=5, background_noise=4)
    assert len(plain) == 12 and len(plain_noise.waves) == 1 and len(val) == 2
    added = Counter(cfg.labels[c.label] for c in clips[12:])
    assert added == {"_unknown_": 5, "_silence_": 4}
    assert len(noise.waves) == 2  # the recording joined the training speakers' silence
