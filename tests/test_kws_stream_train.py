"""The stream phase (kws.stream_train): targets around a word's end, segments that continue
one another sample for sample, and a model that learns from streams to fire at the word's
end and stay quiet elsewhere, with its state carried over a long stream."""
import dataclasses
import math
import random

import pytest
import torch

from kws.config import AugmentConfig, ConfigError, CRNNConfig, KWSConfig, KWSTrainConfig, kws_config_from_dict
from kws.data import Clip, NoiseBank
from kws.model import CRNNStream
from kws.stream_train import IGNORE, StreamMaker, frame_targets, stream_loss, train_on_streams
from kws.train import Spotter, load_checkpoint, train

SR = 16000


def _cfg(**train) -> KWSConfig:
    t = dict(stream_minutes=0.25, stream_segment_s=2.0, stream_lanes=16, stream_lr=1e-2, seed=0,
             num_threads=1, epochs=1, examples_per_epoch=64, batch_size=32, max_minutes=None)
    t.update(train)
    return KWSConfig(
        name="tiny_stream", task="wakeword", labels=["_background_", "keyword"], keyword="beep",
        model=CRNNConfig(conv_channels=8, gru_size=16, dense_size=16, gru_layers=1, bidirectional=False),
        augment=AugmentConfig(noise_prob=0.0, speed_factors=[1.0], time_shift_s=0.2, gain_db=[-3.0, 3.0],
                              specaugment=None),
        train=KWSTrainConfig(**t))


def _tone(seconds: float, freq: float = 1000.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * math.pi * freq * t)


def _clips(n: int = 24):
    g = torch.Generator().manual_seed(0)
    clips = []
    for i in range(n):  # the "word": a 0.3 s tone in 1 s of faint noise
        w = 0.01 * torch.randn(SR, generator=g)
        w[4000:8800] += _tone(0.3)
        clips.append(Clip(w, 1, "synthetic", focus=(4000, 8800)))
    for i in range(n):  # background: faint noise, some with a low hum
        w = 0.01 * torch.randn(3 * SR, generator=g)
        if i % 2:
            w += 0.05 * _tone(3.0, 200.0)
        clips.append(Clip(w, 0, "real"))
    return clips


def test_targets_are_the_word_end_with_the_word_and_its_tail_left_out():
    cfg = _cfg()
    centers = torch.tensor([int(s * SR) for s in (0.5, 1.2, 1.45, 1.55, 1.8, 1.95, 2.5)])
    out = frame_targets(centers, [(SR, int(1.5 * SR), 1)], 0, cfg, SR)
    # 0.5: before the word; 1.2: inside it (ignored); 1.45..1.8: end -0.1..+0.3 s (target);
    # 1.95: within 0.6 s after the end (ignored); 2.5: background again
    assert out.tolist() == [0, IGNORE, 1, 1, 1, IGNORE, 0]


def test_loss_weighs_word_and_background_steps_equally():
    logits = torch.zeros(1, 4, 2)
    logits[0, 0] = torch.tensor([0.0, 5.0])  # a word step, right
    targets = torch.tensor([[1, 0, 0, IGNORE]])
    ce = torch.nn.functional.cross_entropy(logits[0], torch.tensor([1, 0, 0, 0]), reduction="none")
    assert float(stream_loss(logits, targets, 0)) == pytest.approx(0.5 * (ce[0] + ce[1:3].mean()))


def test_streams_draw_real_and_synthetic_clips_with_the_window_phase_weights():
    """train.synthetic_weight holds in the streams as in kws.data.balanced_draws: 2 real
    and 20 synthetic word clips at weight 0.1 give the real ones half of the word slots
    (a uniform draw would give them 1 in 11)."""
    clips = _clips(20)
    for c in clips[:2]:
        c.source = "real"
    for weight, share in ((0.1, 0.5), (1.0, 2 / 22)):
        maker = StreamMaker(_cfg(synthetic_weight=weight), clips, NoiseBank(), background=0)
        rng = random.Random(0)
        draws = [maker.word_pools[0].draw(rng) for _ in range(4000)]
        real = sum(c.source == "real" for c in draws) / len(draws)
        assert abs(real - share) < 0.03, (weight, real)
        others = [maker.other_pool.draw(rng) for _ in range(200)]
        assert all(c.label == 0 for c in others)


def test_segments_continue_each_other_and_frame_like_the_whole_stream():
    cfg = _cfg(stream_lanes=2, stream_reset_prob=0.0)
    maker = StreamMaker(cfg, _clips(6), NoiseBank(), background=0)
    ctx, hop, seg = maker.context, maker.hop, maker.seg_samples
    segs = [maker.next_segment(random.Random(k)) for k in range(3)]
    overlap = 2 * ctx - hop  # samples that two consecutive segments both read
    for (a, _, _), (b, _, _) in zip(segs, segs[1:]):
        assert torch.equal(a[:, seg:], b[:, :overlap])
    whole = torch.cat([segs[0][0]] + [s[0][:, overlap:] for s in segs[1:]], dim=1)
    fe = Spotter(cfg).frontend
    frames = lambda w: fe.from_mel(fe.mel.from_padded(w))  # noqa: E731
    pieces = torch.cat([frames(s[0]) for s in segs], dim=1)
    assert torch.allclose(pieces, frames(whole), atol=1e-4)
    # a word's targets are where its end is
    labels = torch.cat([s[1] for s in segs], dim=1)
    assert (labels == 1).any() and (labels == IGNORE).any() and (labels == 0).any()


def test_config_refuses_a_stream_phase_for_a_model_that_cannot_stream():
    d = dataclasses.asdict(_cfg())
    d["model"]["bidirectional"] = True
    with pytest.raises(ConfigError, match="stream_minutes needs a streamable model"):
        kws_config_from_dict(d)


def test_config_refuses_a_stream_phase_whose_frames_targets_or_task_do_not_fit():
    """Uncentered frames: a 2 s segment gives 196 frames for its 200 targets (and loses 4
    frames at every segment boundary); a commands task has no _background_ class for the
    word-end targets: the refusals come before training, naming the field."""
    for change, match in ((("features", "center", False), "centered frames"),
                          (("train", "stream_target_s", [0.3]), "stream_target_s is a"),
                          (("task", None, "commands"), "needs task 'wakeword'")):
        d = dataclasses.asdict(_cfg())
        section, key, value = change
        if key is None:
            d[section] = value
        else:
            d[section][key] = value
        with pytest.raises(ConfigError, match=match):
            kws_config_from_dict(d)


def _stream_scores(spotter: Spotter, wave: torch.Tensor) -> torch.Tensor:
    """Keyword posterior at every convolution step of ``wave`` streamed in 0.1 s hops."""
    fe = spotter.frontend
    ctx = spotter.cfg.context_samples
    padded = torch.cat([torch.zeros(ctx), wave, torch.zeros(ctx)])
    feats = fe.from_mel(fe.mel.from_padded(padded[None]))[0]
    s = CRNNStream(spotter.crnn)
    out = [torch.softmax(s.accept(feats[i:i + 10]), -1)[:, 1] for i in range(0, feats.shape[0], 10)]
    return torch.cat(out)


def test_the_stream_phase_learns_to_fire_at_the_word_end_over_a_long_stream(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(stream_minutes=0.4)
    spotter = Spotter(cfg)
    result = train_on_streams(spotter, cfg, _clips(), NoiseBank(), tmp_path, torch.device("cpu"))
    assert result["steps"] > 20 and (tmp_path / "stream_last.pt").is_file()
    # 20 s of background, the word, 20 s more: the state runs across all of it
    g = torch.Generator().manual_seed(1)
    wave = 0.01 * torch.randn(41 * SR, generator=g)
    wave[: 20 * SR] += 0.05 * _tone(20.0, 200.0)
    word_end = 20 * SR + 4800
    wave[20 * SR:word_end] += _tone(0.3)
    scores = _stream_scores(spotter.eval(), wave)
    lt, st = cfg.model.conv_kernel[0], cfg.model.conv_stride[0]
    end_t = (lt - 1 + st * torch.arange(scores.numel())) * cfg.features.hop_length  # each step's last frame
    near = (end_t >= word_end - 0.1 * SR) & (end_t <= word_end + 0.3 * SR)
    far = (end_t < 20 * SR - SR) | (end_t > word_end + SR)
    assert scores[near].max() > 0.8
    assert scores[far].max() < 0.2


def test_train_runs_the_stream_phase_after_the_window_phase_and_keeps_both(tmp_path):
    cfg = _cfg(stream_minutes=0.05)
    summary = train(cfg, _clips(8), [], tmp_path, NoiseBank())
    assert summary["stream_phase"]["steps"] > 0
    assert (tmp_path / "window_model.pt").is_file()
    ck = torch.load(tmp_path / "model.pt", weights_only=False)
    assert ck["extra"]["stream_phase"]["steps"] == summary["stream_phase"]["steps"]
    streamed, window = load_checkpoint(tmp_path), load_checkpoint(tmp_path / "window_model.pt")
    assert any(not torch.equal(a, b) for a, b in zip(streamed.state_dict().values(),
                                                     window.state_dict().values()))
    # run again: both phases are done, nothing trains, the streamed model stays
    again = train(cfg, _clips(8), [], tmp_path, NoiseBank())
    assert again["stream_phase"]["steps"] == summary["stream_phase"]["steps"]
    back = load_checkpoint(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), streamed.state_dict().values()))


def test_each_segment_starts_from_the_state_the_last_one_ended_in(tmp_path, monkeypatch):
    cfg = _cfg(stream_minutes=0.05, stream_reset_prob=0.3)
    spotter = Spotter(cfg)
    calls = []
    real_step = spotter.crnn.step

    def recording_step(feats, state=None):
        logits, h = real_step(feats, state)
        calls.append((state.detach().clone(), h.detach().clone()))
        return logits, h

    monkeypatch.setattr(spotter.crnn, "step", recording_step)
    restarts = []
    real_next = StreamMaker.next_segment

    def recording_next(self, rng):
        out = real_next(self, rng)
        restarts.append(out[2])
        return out

    monkeypatch.setattr(StreamMaker, "next_segment", recording_next)
    train_on_streams(spotter, cfg, _clips(6), NoiseBank(), tmp_path, torch.device("cpu"))
    assert len(calls) > 3 and any(any(r) for r in restarts[1:])
    assert not calls[0][0].any()  # the first segment starts every lane from zeros
    for (_, h_prev), (h_in, _), fresh in zip(calls, calls[1:], restarts[1:]):
        for lane, restarted in enumerate(fresh):
            expect = torch.zeros_like(h_prev[:, lane]) if restarted else h_prev[:, lane]
            assert torch.equal(h_in[:, lane], expect)


def test_a_killed_stream_phase_continues_from_its_last_save(tmp_path, monkeypatch):
    import kws.stream_train as st

    monkeypatch.setattr(st, "SAVE_EVERY_S", 0.0)  # save after every step
    cfg = _cfg(stream_minutes=0.2)
    real_next = StreamMaker.next_segment
    calls = {"n": 0}

    def dies_at_the_fifth(self, rng):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_next(self, rng)

    monkeypatch.setattr(StreamMaker, "next_segment", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_on_streams(Spotter(cfg), cfg, _clips(6), NoiseBank(), tmp_path, torch.device("cpu"))
    saved = torch.load(tmp_path / "stream_last.pt", weights_only=False)
    assert saved["steps"] == 4 and not saved["done"]
    monkeypatch.setattr(StreamMaker, "next_segment", real_next)
    fresh = Spotter(cfg)
    seen = {}
    real_step = fresh.crnn.step

    def first_weights(feats, state=None):
        seen.setdefault("w", {k: v.clone() for k, v in fresh.crnn.state_dict().items()})
        return real_step(feats, state)

    monkeypatch.setattr(fresh.crnn, "step", first_weights)
    result = train_on_streams(fresh, cfg, _clips(6), NoiseBank(), tmp_path, torch.device("cpu"))
    assert result["steps"] > 4  # counted on from the saved step
    assert all(torch.equal(seen["w"][k], v) for k, v in saved["model"].items())
    assert torch.load(tmp_path / "stream_last.pt", weights_only=False)["done"]
