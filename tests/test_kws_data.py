"""Layouts, speaker splits, augmentation placement, class balancing, recipes' data plans."""
import random
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from kws.config import AugmentConfig
from kws.data import (Clip, NoiseBank, WindowMaker, balanced_draws, hash_split, load_clips,
                      manifest_entry, pitch_shift, scan_speech_commands, speaker_of, speech_region)
from recipes.wake_word.run import near_misses


def test_speaker_ids_follow_the_public_naming():
    assert speaker_of("yes/0a7c2a8d_nohash_1.flac") == "0a7c2a8d"
    assert speaker_of("_unknown_/backward_0c540988_nohash_0.flac") == "0c540988"
    assert speaker_of("_silence_/12.flac") == "12"


def test_hash_split_is_deterministic_and_proportional():
    keys = [f"{i:08x}" for i in range(4000)]
    splits = Counter(hash_split(k, 10, 20) for k in keys)
    assert abs(splits["test"] / 4000 - 0.2) < 0.03 and abs(splits["val"] / 4000 - 0.1) < 0.03
    assert [hash_split(k) for k in keys[:50]] == [hash_split(k) for k in keys[:50]]


def test_scan_names_the_missing_classes(tmp_path):
    (tmp_path / "yes").mkdir()
    sf.write(tmp_path / "yes" / "abc_nohash_0.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(FileNotFoundError, match="_silence_"):
        scan_speech_commands(tmp_path, ["_silence_", "yes"])
    (tmp_path / "cat").mkdir()  # full v0.02 layout: other words become _unknown_
    sf.write(tmp_path / "cat" / "def_nohash_0.wav", np.zeros(1600, np.float32), 16000)
    items = scan_speech_commands(tmp_path, ["_unknown_", "yes"])
    assert sorted(lab for _, lab, _ in items) == ["_unknown_", "yes"]
    # a full release has _background_noise_ and no _silence_: the error says what to do
    (tmp_path / "_background_noise_").mkdir()
    sf.write(tmp_path / "_background_noise_" / "pink.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(FileNotFoundError, match="full v0.02 release has none.*test_set_v0.02"):
        scan_speech_commands(tmp_path, ["_silence_", "_unknown_", "yes"])


def test_bad_audio_is_skipped_with_its_name(tmp_path, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, 0.1 * np.ones(16000, np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    entries = [manifest_entry(good, "yes"), {"audio": str(bad), "text": "yes"}]
    with caplog.at_level("WARNING"):
        clips = load_clips(entries, {"yes": 0})
    assert len(clips) == 1 and "bad.wav" in caplog.text
    with pytest.raises(ValueError, match="good.wav"):
        load_clips([manifest_entry(good, "maybe")], {"yes": 0})


def test_speech_region_finds_the_word():
    wave = torch.zeros(32000)
    wave[10000:18000] = 0.5 * torch.sin(torch.arange(8000) * 0.3)
    a, b = speech_region(wave + 1e-4 * torch.randn(32000))
    assert abs(a - 10000) <= 320 and abs(b - 18000) <= 320


def test_window_keeps_the_word_inside_and_shifts_it():
    cfg = AugmentConfig(noise_prob=0.0, speed_factors=[1.0], gain_db=[0.0, 0.0], time_shift_s=0.3)
    maker = WindowMaker(16000, cfg, NoiseBank([]))
    wave = torch.zeros(32000)
    wave[2000:9000] = 1.0  # the 'word' is near the start of a 2 s clip
    clip = Clip(wave, 1, focus=(2000, 9000))
    rng = random.Random(0)
    starts = set()
    for _ in range(50):
        w = maker(clip, rng)
        assert float(w.sum()) == pytest.approx(7000)  # always whole
        starts.add(int(torch.nonzero(w).flatten()[0]))
    assert len(starts) > 10  # and moved around
    # without augmentation: the centered crop evaluation uses, moved just enough
    w = maker(clip, rng, augment=False)
    assert float(w.sum()) == pytest.approx(7000)


def test_focus_of_speech_longer_than_the_window_is_what_the_window_holds():
    """The stream phase puts a word's target at its focus end: for speech longer than the
    window (context included) the focus must stop at the window's end, not past it in
    audio of the next slot that does not hold the word."""
    cfg = AugmentConfig(noise_prob=0.0, speed_factors=[1.0], gain_db=[0.0, 0.0], time_shift_s=0.3)
    ctx = 400
    maker = WindowMaker(16000, cfg, NoiseBank([]), context=ctx)
    wave = torch.zeros(40000)
    wave[4000:30000] = 1.0  # 1.6 s of 'speech' in a 2.5 s clip, 1 s window
    rng = random.Random(0)
    for augment in (True, False):
        w, (f0, f1) = maker(Clip(wave, 1, focus=(4000, 30000)), rng, augment=augment, return_focus=True)
        assert w.numel() == maker.n and 0 <= f0 < f1 <= maker.n
        assert float(w[f0:f1].min()) == 1.0  # the focus is speech the window holds


def test_noise_is_mixed_at_the_requested_snr():
    cfg = AugmentConfig(noise_prob=1.0, snr_db=[10.0], speed_factors=[1.0], gain_db=[0.0, 0.0],
                        time_shift_s=0.0)
    maker = WindowMaker(16000, cfg, NoiseBank([torch.randn(20000)], colored_prob=0.0))
    clean = 0.3 * torch.sin(torch.arange(16000) * 0.05)
    rng = random.Random(1)
    for _ in range(5):
        mix = maker(Clip(clean, 0), rng)
        snr = 10 * torch.log10(clean.square().mean() / (mix - clean).square().mean())
        assert 7.4 <= float(snr) <= 12.6  # 10 dB +- the 2.5 dB jitter


def test_class_balanced_draws():
    clips = [Clip(torch.zeros(1), 0)] * 90 + [Clip(torch.zeros(1), 1)] * 10
    rng = random.Random(0)
    counts = Counter(clips[i].label for i in balanced_draws(clips, 4000, 2, rng))
    assert abs(counts[1] / 4000 - 0.5) < 0.05
    counts = Counter(clips[i].label for i in balanced_draws(clips, 4000, 2, rng, class_balance=False))
    assert abs(counts[1] / 4000 - 0.1) < 0.03


def test_pitch_shift_moves_the_pitch_not_the_length():
    t = torch.arange(16000) / 16000
    y = pitch_shift(torch.sin(2 * torch.pi * 200 * t), 2.0)
    assert abs(y.numel() - 16000) < 400
    peak = float(torch.fft.rfft(y).abs().argmax()) * 16000 / y.numel()
    assert abs(peak - 224) < 6  # 200 Hz * 2^(2/12)


def test_near_misses_exclude_the_keyword(tmp_path):
    texts = tmp_path / "t.csv"
    texts.write_text("a|x|the computers compute a complete commuter and a computer outer\n")
    words = near_misses("computer", texts)
    assert "commuter" in words and "complete" in words
    assert not any("computer" in w.replace(" ", "") for w in words)
    assert near_misses("tablet", None, extra=["tablet", "tabloid"]) == ["tabloid"]


def test_noisy_copy_keeps_length_and_silence():
    import random

    import torch

    from kws.data import NoiseBank
    from kws.hard_negatives import noisy_copy

    x = torch.cat([0.1 * torch.randn(16000), torch.zeros(16000)])
    y = noisy_copy(x, NoiseBank([], colored_prob=1.0), [5.0], 16000, random.Random(0))
    assert y.shape == x.shape
    assert torch.equal(y[16000:], x[16000:])  # silent chunks stay silent
    ratio = float((y[:16000] - x[:16000]).square().mean() / x[:16000].square().mean())
    assert 0.2 < ratio < 0.45  # 5 dB: noise power ~0.32 of the signal's


def test_wake_word_training_negatives_are_disjoint_from_the_unused():
    from recipes.wake_word.run import training_negatives

    real = [{"audio": f"sc{i}", "meta": {"kind": "speech_commands"}} for i in range(10)]
    real += [{"audio": f"f{i}", "meta": {"kind": "fsdd"}} for i in range(6)]
    a = training_negatives(real, 4, 2)
    assert a == training_negatives(real, 4, 2)  # the same draw in prepare and train
    used = {e["audio"] for e in a["speech_commands"] + a["fsdd"]}
    unused = {e["audio"] for e in a["speech_commands_unused"] + a["fsdd_unused"]}
    assert len(used) == 6 and len(unused) == 10 and not used & unused


def test_pitch_variants_in_processes_match_the_sequential_ones():
    from kws.data import add_pitch_variants

    g = torch.Generator().manual_seed(0)
    a = [Clip(torch.randn(4000, generator=g) * 0.1, 0, src) for src in ("real", "synthetic", "real")]
    b = [Clip(c.wave.clone(), c.label, c.source) for c in a]
    add_pitch_variants(a, [-2.0, 0.0, 2.0], 16000)
    add_pitch_variants(b, [-2.0, 0.0, 2.0], 16000, jobs=2)
    for x, y in zip(a, b):
        assert len(x.variants) == len(y.variants) == (2 if x.source == "real" else 0)
        for u, v in zip(x.variants, y.variants):
            assert torch.allclose(u, v, atol=1e-6)


def test_a_manifest_write_that_fails_keeps_the_previous_manifest(tmp_path):
    """The recipes reuse a manifest they find (synth.jsonl), so it is never left half written."""
    from kws.data import read_manifest, write_manifest

    path = tmp_path / "synth.jsonl"
    old = [{"audio": f"/a/{i}.wav", "text": "yes"} for i in range(3)]
    assert write_manifest(old, path) == 3

    def dies_after_two():
        yield {"audio": "/b/0.wav", "text": "no"}
        yield {"audio": "/b/1.wav", "text": "no"}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_manifest(dies_after_two(), path)
    assert read_manifest(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["synth.jsonl"]
