import librosa
import numpy as np
import pytest
import torch

from asr.features import FeatureConfig, FeatureExtractor, PCEN, mel_filters, pcen_smoothing_coef


def _tone_noise(n=16000, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin", [(16000, 512, 80, 20.0), (8000, 256, 40, 0.0)])
def test_mel_filters_match_librosa(sr, n_fft, n_mels, fmin):
    ours = mel_filters(sr, n_fft, n_mels, fmin).numpy().T
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_logmel_matches_librosa():
    x = _tone_noise()
    cfg = FeatureConfig(kind="logmel")
    feats, lens = FeatureExtractor(cfg)(torch.from_numpy(x)[None])
    ref = librosa.feature.melspectrogram(
        y=x, sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80, fmin=20.0,
        center=True, pad_mode="reflect", power=2.0)
    np.testing.assert_allclose(feats[0].numpy(), np.log(ref.T + 1e-6), atol=2e-3, rtol=1e-3)
    assert lens.tolist() == [ref.shape[1]]


def test_pcen_matches_librosa():
    x = _tone_noise(seed=1)
    cfg = FeatureConfig(kind="pcen", n_mels=40)
    ours, _ = FeatureExtractor(cfg)(torch.from_numpy(x)[None])
    mel = librosa.feature.melspectrogram(
        y=x, sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40, fmin=20.0, power=2.0,
        pad_mode="reflect")
    ref = librosa.pcen(np.sqrt(mel) * 2**31, sr=16000, hop_length=160)
    np.testing.assert_allclose(ours[0].numpy(), ref.T, rtol=2e-3, atol=2e-3)


def test_pcen_trainable_gets_gradients():
    pcen = PCEN(8, s=pcen_smoothing_coef(0.4, 16000, 160), trainable=True)
    energy = torch.rand(2, 50, 8) * 1e6
    pcen(energy).sum().backward()
    for name in ("log_s", "log_alpha", "log_delta", "log_r"):
        grad = getattr(pcen, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_feature_lengths_follow_wave_lengths():
    fe = FeatureExtractor(FeatureConfig())
    wave = torch.zeros(2, 16000)
    feats, lens = fe(wave, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 101, 80)
    assert lens.tolist() == [101, 51]


def test_cepstral_lifter_keeps_the_lowest_dct_components():
    # the liftered log-mel equals scipy's orthonormal DCT-II across the bands, truncated to
    # its K lowest coefficients and inverted: the envelope stays, the fine ripple goes
    from scipy.fft import dct, idct

    torch.manual_seed(0)
    wave = torch.randn(2, 8000)
    cfg = dict(n_mels=40, f_max=4000.0)
    full, _ = FeatureExtractor(FeatureConfig(**cfg))(wave)
    liftered, _ = FeatureExtractor(FeatureConfig(**cfg, cepstral_lifter=16))(wave)
    coeffs = dct(full.numpy().astype(np.float64), type=2, norm="ortho", axis=-1)
    coeffs[..., 16:] = 0.0
    expected = idct(coeffs, type=2, norm="ortho", axis=-1)
    np.testing.assert_allclose(liftered.numpy(), expected, atol=1e-4)
    assert (liftered - full).abs().mean() > 0.05  # it did remove something
    same, _ = FeatureExtractor(FeatureConfig(**cfg, cepstral_lifter=40))(wave)
    torch.testing.assert_close(same, full, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cepstral_lifter"):
        FeatureExtractor(FeatureConfig(**cfg, cepstral_lifter=41))


def test_remove_dc_ignores_a_recording_offset_and_keeps_the_rest():
    # a constant offset (as in some FSDD speakers' recordings) leaks through the Hann window
    # into the lowest mel band; removing each frame's mean makes the features blind to it
    # and leaves the bands above the window's leakage as they were
    wave = torch.from_numpy(_tone_noise(n=12000))[None]
    cfg = dict(n_mels=40, f_max=4000.0)
    plain = FeatureExtractor(FeatureConfig(**cfg))
    no_dc = FeatureExtractor(FeatureConfig(**cfg, remove_dc=True))
    offset = wave + 0.03
    assert (plain(offset)[0] - plain(wave)[0])[..., 0].abs().mean() > 1.0  # the leak is real
    ours, lens = no_dc(offset)
    torch.testing.assert_close(ours, no_dc(wave)[0], atol=1e-3, rtol=0)
    assert lens.tolist() == plain(wave)[1].tolist()
    torch.testing.assert_close(ours[..., 4:], plain(wave)[0][..., 4:], atol=0.05, rtol=0)


@pytest.mark.parametrize("options", [dict(kind="logmel"), dict(kind="pcen"),
                                     dict(kind="logmel", remove_dc=True),
                                     dict(kind="pcen", remove_dc=True, cepstral_lifter=12)])
def test_features_of_an_utterance_do_not_depend_on_its_batch(options):
    # a short utterance padded in a batch gets the frames it gets alone: its own end is
    # reflected, not the batch's zero padding (lengths off the hop grid, and one shorter
    # than the reflection pad, which is clamped alike alone and batched)
    fe = FeatureExtractor(FeatureConfig(n_mels=40, **options))
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([16000, 12345, 4007, 200])
    waves = torch.randn(4, 16000, generator=g) * 0.1 + 0.02  # an offset for remove_dc
    waves[torch.arange(16000)[None, :] >= lens[:, None]] = 0.0
    batched, batched_lens = fe(waves, lens)
    for b, n in enumerate(lens.tolist()):
        alone, alone_lens = fe(waves[b: b + 1, :n])
        T = int(alone_lens[0])
        assert int(batched_lens[b]) == T == alone.shape[1]
        torch.testing.assert_close(batched[b, :T], alone[0], atol=1e-5, rtol=1e-5)
