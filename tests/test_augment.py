import torch

from asr.augment import SpecAugment, SpecAugmentConfig, add_noise, colored_noise, speed_perturb


def test_add_noise_hits_requested_snr():
    g = torch.Generator().manual_seed(0)
    wave = torch.sin(torch.arange(16000) * 0.05)
    noise = colored_noise(5000, "pink", generator=g)
    for snr in (0.0, 5.0, 20.0):
        mix = add_noise(wave, noise, snr, generator=g)
        added = mix - wave
        measured = 10 * torch.log10(wave.square().mean() / added.square().mean())
        assert abs(float(measured) - snr) < 0.01


def test_speed_perturb_changes_length():
    wave = torch.randn(16000)
    assert abs(speed_perturb(wave, 1.1).numel() - 16000 / 1.1) < 2
    assert abs(speed_perturb(wave, 0.9).numel() - 16000 / 0.9) < 2
    assert speed_perturb(wave, 1.0) is wave


def test_specaugment_masks_only_in_training():
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2))
    feats = torch.randn(2, 200, 40)
    lens = torch.tensor([200, 150])
    aug.train()
    out = aug(feats, lens)
    assert out.shape == feats.shape and not torch.equal(out, feats)
    aug.eval()
    assert torch.equal(aug(feats, lens), feats)


def test_set_margins_cuts_or_pads_to_the_requested_silence():
    from asr.augment import set_margins, speech_span

    sr = 8000
    g = torch.Generator().manual_seed(0)
    floor = 1e-3 * torch.randn(sr, generator=g)
    speech = torch.sin(torch.arange(2000) * 0.3)
    wave = torch.cat([floor[:1600], speech, floor[1600:3200]])  # 0.2 s, 0.25 s, 0.2 s
    assert speech_span(wave, sr) == (1600, 3600)
    # cut: 0.05 s lead, no trail, taken from the clip itself
    cut = set_margins(wave, sr, 0.05, 0.0)
    assert cut.numel() == 400 + 2000 and torch.equal(cut, wave[1200:3600])
    # pad: a clip trimmed to its speech gets 0.1 s each side of noise at its quietest frame's level
    tight = wave[1600:3600]
    padded = set_margins(tight, sr, 0.1, 0.1, generator=g)
    assert padded.numel() == 800 + 2000 + 800
    assert torch.equal(padded[800:2800], tight)
    quietest = tight[:2000].reshape(-1, 80).square().mean(1).min().sqrt()
    assert 0.5 * quietest < padded[:800].std() < 2 * quietest
    # a DC offset (some FSDD recordings have 3% of their peak) is neither speech nor noise:
    # the span is found about the clip's mean, and the padding sits on the same offset
    shifted = wave + 0.05
    assert speech_span(shifted, sr) == (1600, 3600)
    padded = set_margins(shifted[1600:3600], sr, 0.1, 0.1, generator=g)
    assert abs(float(padded[:800].mean() - shifted[1600:3600].mean())) < 1e-3
    assert 0.5 * quietest < padded[:800].std() < 2 * quietest


def test_margin_augmentation_is_validated_and_reproducible():
    import pytest

    from asr.config import DataConfig
    from asr.train import Augmenter

    with pytest.raises(ValueError, match="margin_s"):
        Augmenter(DataConfig(margin_prob=0.5, margin_s=[0.2, 0.1]), 16000, 0)
    aug = Augmenter(DataConfig(margin_prob=1.0, margin_s=[0.0, 0.3]), 16000, 0)
    wave = torch.cat([torch.zeros(4000), torch.sin(torch.arange(4000) * 0.2), torch.zeros(4000)])
    lengths = {aug(wave, i).numel() for i in range(8)}
    assert len(lengths) > 1 and all(4000 <= n <= 4000 + 2 * 4800 for n in lengths)
    assert torch.equal(aug(wave, 3), aug(wave, 3))


def _tone(freq: float, n: int = 16000, sr: int = 16000) -> torch.Tensor:
    return torch.sin(2 * torch.pi * freq * torch.arange(n) / sr)


def _power_at(wave: torch.Tensor, freq: float, sr: int = 16000) -> float:
    spec = torch.fft.rfft(wave).abs().square()
    k = round(freq * wave.numel() / sr)
    return float(spec[k - 2:k + 3].sum() / spec.sum())


def test_training_noise_comes_from_the_given_recordings(tmp_path):
    """data.noise_dirs: a noisy example mixes a stretch of a real recording (here a 3 kHz
    tone, which generated noise has almost none of) at the requested SNR."""
    import pytest
    import soundfile as sf

    from asr.config import DataConfig
    from asr.train import Augmenter

    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "hum.wav", 0.1 * _tone(3000.0, 48000).numpy(), 16000)
    (tmp_path / "noise" / "broken.wav").write_bytes(b"RIFF not audio")  # skipped with a warning
    speech = _tone(300.0)
    real = Augmenter(DataConfig(noise_prob=1.0, noise_snr_db=[0.0, 0.0], noise_dirs=[str(tmp_path / "noise")],
                                colored_noise_prob=0.0), 16000, 0)
    generated = Augmenter(DataConfig(noise_prob=1.0, noise_snr_db=[0.0, 0.0]), 16000, 0)
    assert len(real.noise.waves) == 1
    for i in range(4):
        assert _power_at(real(speech, i) - speech, 3000.0) > 0.9
        assert _power_at(generated(speech, i) - speech, 3000.0) < 0.05
    assert torch.equal(real(speech, 2), real(speech, 2))  # seeded per (epoch, utterance)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Augmenter(DataConfig(noise_prob=1.0, noise_dirs=[str(tmp_path / "nowhere")]), 16000, 0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of the 1 audio files"):
        Augmenter(DataConfig(noise_prob=1.0, noise_dirs=[str(tmp_path / "bad")]), 16000, 0)


def test_training_reverberation_keeps_the_length_and_smears_the_clip():
    """data.reverb_prob: a click becomes a decaying tail within the clip's own length."""
    import pytest

    from asr.config import DataConfig
    from asr.train import Augmenter

    click = torch.zeros(16000)
    click[1000] = 1.0
    aug = Augmenter(DataConfig(reverb_prob=1.0, rt60_s=[0.5, 0.5], drr_db=[0.0, 0.0]), 16000, 0)
    out = aug(click, 0)
    assert out.numel() == click.numel()
    tail = out[1100:1000 + 4000]  # 6-190 ms after the click: the room's energy, still well above zero
    assert tail.square().sum() > 0.05 * out.square().sum()
    assert torch.equal(aug(click, 0), out) and not torch.equal(aug(click, 1), out)
    dry = Augmenter(DataConfig(), 16000, 0)
    assert torch.equal(dry(click, 0), click)
    with pytest.raises(ValueError, match="rt60_s"):
        Augmenter(DataConfig(reverb_prob=0.5, rt60_s=[0.9, 0.2]), 16000, 0)
