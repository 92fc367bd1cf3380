import pytest
import torch

from asr.config import ExperimentConfig
from asr.features import FeatureConfig, FeatureExtractor
from asr.model import ASRModel
from asr.streaming.features import StreamingFeatures, streaming_front_end


def _stream(extractor, wave, chunk, normalize=None):
    sf = StreamingFeatures(extractor, normalize)
    parts = [sf.accept(wave[i:i + chunk]) for i in range(0, wave.numel(), chunk)]
    return torch.cat(parts + [sf.flush()])


@pytest.mark.parametrize("remove_dc", [False, True])
@pytest.mark.parametrize("n,chunk", [(4000, 1), (4000, 160), (4003, 160), (4003, 333), (4003, 5000),
                                     (200, 7), (37, 5)])
@pytest.mark.parametrize("n_fft", [512, 256])  # 256: half a window is less than a hop
def test_chunked_frames_equal_offline(n, chunk, remove_dc, n_fft):
    if chunk == 1 and (remove_dc or n_fft == 256):
        pytest.skip("one case of sample-by-sample is enough")
    extractor = FeatureExtractor(FeatureConfig(n_mels=20, remove_dc=remove_dc, n_fft=n_fft,
                                               win_length=min(400, n_fft)))
    wave = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    offline, lens = extractor(wave[None])
    streamed = _stream(extractor, wave, chunk)
    assert streamed.shape[0] == int(lens[0])
    torch.testing.assert_close(streamed, offline[0, : lens[0]], atol=1e-4, rtol=1e-5)


def test_frames_are_released_as_soon_as_their_window_is_complete():
    extractor = FeatureExtractor(FeatureConfig(n_mels=10))  # n_fft 512, hop 160
    sf = StreamingFeatures(extractor)
    assert sf.accept(torch.randn(256)).shape[0] == 0  # the start's reflection needs 257
    assert sf.accept(torch.randn(1)).shape[0] == 1  # frame 0 reads samples -256..255
    assert sf.accept(torch.randn(158)).shape[0] == 0
    assert sf.accept(torch.randn(1)).shape[0] == 1  # frame 1 needs up to sample 415


def test_global_cmvn_per_frame_and_utterance_cmvn_refused():
    cfg = ExperimentConfig(features=FeatureConfig(n_mels=12), specaugment=None)
    model = ASRModel(cfg, vocab_size=5).eval()
    model.cmvn.set_stats(torch.randn(12), torch.rand(12) + 0.5)
    wave = torch.randn(3000) * 0.1
    offline, lens = model.normalized_features(wave[None], torch.tensor([3000]))
    sf = streaming_front_end(model)
    streamed = torch.cat([sf.accept(wave[:1234]), sf.accept(wave[1234:]), sf.flush()])
    torch.testing.assert_close(streamed, offline[0, : lens[0]], atol=1e-4, rtol=1e-5)
    model.cfg.cmvn = "utterance"
    with pytest.raises(ValueError, match="streaming needs cmvn: global or running"):
        streaming_front_end(model)


@pytest.mark.parametrize("orig", [8000, 44100, 48000])
@pytest.mark.parametrize("chunk", [1, 97, 6000])
def test_streaming_resampler_equals_offline(orig, chunk):
    from asr.audio import resample
    from asr.streaming.resample import StreamingResampler

    x = torch.randn(5003, generator=torch.Generator().manual_seed(orig))
    r = StreamingResampler(orig, 16000)
    y = torch.cat([r.accept(x[i:i + chunk]) for i in range(0, x.numel(), chunk)] + [r.flush()])
    ref = resample(x, orig, 16000)
    assert y.shape == ref.shape
    assert (y - ref).abs().max() < 1e-5


def test_running_mean_cmvn_streams_and_follows_a_level_change():
    cfg = ExperimentConfig(features=FeatureConfig(n_mels=12), specaugment=None, cmvn="running",
                           cmvn_running_frames=20)
    model = ASRModel(cfg, vocab_size=5).eval()
    model.cmvn.set_stats(torch.randn(12), torch.rand(12) + 0.5)
    wave = torch.randn(8000) * 0.1
    wave[4000:] *= 10.0  # 20 dB louder half way
    offline, lens = model.normalized_features(wave[None], torch.tensor([8000]))
    sf = streaming_front_end(model)
    streamed = torch.cat([sf.accept(wave[i:i + 1111]) for i in range(0, 8000, 1111)] + [sf.flush()])
    torch.testing.assert_close(streamed, offline[0, : lens[0]], atol=1e-4, rtol=1e-5)
    # the mean is causal: the first frames do not know of the louder second half
    quiet = model.normalized_features(wave[None, :3000], torch.tensor([3000]))[0]
    torch.testing.assert_close(offline[0, :10], quiet[0, :10])


def test_running_mean_is_the_plain_mean_then_an_exponential_average():
    from asr.model import running_mean_step

    x = torch.cat([torch.arange(5.0), torch.zeros(25), torch.ones(60)])[None, :, None]
    out, _, _ = running_mean_step(x, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 20)
    for t in range(5):  # first frames: minus the mean of the frames so far
        assert out[0, t, 0] == pytest.approx(t - t / 2)
    # after frame 20 the mean forgets by 1 - 1/20 per frame: a step decays geometrically
    m29 = 0.5 * (19 / 20) ** 10  # mean of frames 0..19 (0.5) decayed over 20..29
    for k in (0, 10, 40):
        assert out[0, 30 + k, 0] == pytest.approx((1 - m29) * (19 / 20) ** (k + 1), rel=1e-4)
