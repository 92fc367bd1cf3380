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
