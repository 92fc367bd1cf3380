"""Training a streamable spotter on continuous streams, the GRU state carried across segments.

A unidirectional CRNN trained on 1 s windows always starts its GRU from zeros; in serving
(:class:`kws.edge.StatefulKeywordStream`) the state runs on over hours of audio, into
states the model never saw in training. This phase trains it the way it serves:
``stream_lanes`` streams side by side, each an unbroken sequence of 1 s slots (running
speech, near misses, silence and, in ``stream_keyword_share`` of them, a target word;
clips drawn with the window phase's weights: ``synthetic_weight``, ``class_balance``),
cut into segments of ``stream_segment_s``. Each optimizer step takes one segment of every
lane through :meth:`kws.model.CRNN.step` starting from that lane's state after its
previous segment (detached: truncated backpropagation through time), and every
convolution step is a training target:

- the steps whose last frame lies within ``stream_target_s`` of a word's end: that word's
  class;
- from the word's start up to there, and up to ``stream_ignore_after_s`` after its end:
  left out of the loss (the word is half said, or just over);
- every other step: ``_background_``.

A lane starts a new stream (zero state, a new loudness and noise) with probability
``stream_reset_prob`` per segment, so the model also learns the first second of a stream,
which is what the evaluation streams before each positive. Features are computed once per
sample with the audio on both sides, as the serving stream frames them.

The loss weighs target steps and background steps equally (each averaged on its own), as
the window phase draws its classes equally often.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from asr.config import to_dict
from kws.config import KWSConfig
from kws.data import Clip, NoiseBank, WindowMaker, draw_weight, write_atomically

log = logging.getLogger(__name__)

IGNORE = -100  # F.cross_entropy's ignore_index
SAVE_EVERY_S = 60.0  # how often the phase writes stream_last.pt (and a history row)


@dataclass
class Lane:
    """One continuous training stream.

    audio (S,): the samples from ``start - context`` on that the next segment reads (its frames
    and their context); start: absolute sample of the next segment's first frame center;
    words: (start, end, label) of the target words in absolute samples, not yet passed."""

    audio: torch.Tensor
    start: int = 0
    gain: float = 1.0
    noise_rms: Optional[float] = None  # set at the lane's first speech slot (None: no noise yet)
    noisy: bool = False
    snr_db: float = 20.0
    words: List[Tuple[int, int, int]] = field(default_factory=list)
    appended: int = 0  # absolute sample just past the audio appended so far


class _WeightedPool:
    """Clips drawn with a synthetic clip weighing ``synthetic_weight`` against a real one."""

    def __init__(self, clips: Sequence[Clip], synthetic_weight: float) -> None:
        self.clips = list(clips)
        self.cum = list(itertools.accumulate(draw_weight(c, synthetic_weight) for c in self.clips))

    def draw(self, rng: random.Random) -> Clip:
        return rng.choices(self.clips, cum_weights=self.cum, k=1)[0]


class StreamMaker:
    """Builds the segments of ``train.stream_lanes`` continuous streams from training clips
    (:meth:`next_segment`): target words from the clips not labelled ``background``, the
    rest from the others."""

    def __init__(self, cfg: KWSConfig, clips: Sequence[Clip], noise: NoiseBank, background: int) -> None:
        tc, sr = cfg.train, cfg.features.sample_rate
        self.cfg, self.noise, self.background, self.sr = cfg, noise, background, sr
        self.hop = cfg.features.hop_length
        self.context = cfg.features.n_fft // 2 if cfg.features.center else 0
        self.seg_frames = max(1, int(round(tc.stream_segment_s * sr / self.hop)))
        self.seg_samples = self.seg_frames * self.hop
        # slots: the window phase's augmentation without its noise and with only +-3 dB of
        # gain (loudness and noise belong to the stream: the lane's)
        slot_aug = dataclasses.replace(cfg.augment, noise_prob=0.0, gain_db=[-3.0, 3.0])
        self.slots = WindowMaker(cfg.window_samples, slot_aug, noise, sr, context=0)
        self.words = [c for c in clips if c.label != background]
        self.others = [c for c in clips if c.label == background]
        if not self.words or not self.others:
            raise ValueError(f"stream training needs target-word and background clips "
                             f"(got {len(self.words)} and {len(self.others)})")
        # the window phase's draw weights (kws.data.balanced_draws): target words class by
        # class when train.class_balance, and a synthetic clip weighing train.synthetic_weight
        # against a real one, so real recordings keep their share in the streams too
        by_label: dict = {}
        for c in self.words:
            by_label.setdefault(c.label, []).append(c)
        groups = list(by_label.values()) if tc.class_balance else [self.words]
        self.word_pools = [_WeightedPool(g, tc.synthetic_weight) for g in groups]
        self.other_pool = _WeightedPool(self.others, tc.synthetic_weight)
        self.lanes: List[Lane] = [self._new_lane(random.Random(f"{tc.seed}:lane:{i}"))
                                  for i in range(tc.stream_lanes)]

    def _new_lane(self, rng: random.Random, start: int = 0) -> Lane:
        a = self.cfg.augment
        lo, hi = a.gain_db
        return Lane(audio=torch.zeros(self.context), start=start, appended=start,
                    gain=10 ** (rng.uniform(lo, hi) / 20), noisy=rng.random() < a.noise_prob,
                    snr_db=rng.choice(a.snr_db) + rng.uniform(-2.5, 2.5))

    def _append_slot(self, lane: Lane, rng: random.Random) -> None:
        tc = self.cfg.train
        u = rng.random()
        if u < tc.stream_silence_share:
            wave, focus, label = torch.zeros(self.slots.n), None, None
        elif u < tc.stream_silence_share + tc.stream_keyword_share:
            clip = rng.choice(self.word_pools).draw(rng)
            wave, focus = self.slots(clip, rng, return_focus=True)
            label = clip.label
        else:
            wave, focus, label = self.slots(self.other_pool.draw(rng), rng), None, None
        wave = wave * lane.gain
        if lane.noisy:
            if lane.noise_rms is None and wave.abs().max() > 1e-4:
                speech_power = float(wave.square().mean())
                lane.noise_rms = math.sqrt(speech_power / 10 ** (lane.snr_db / 10))
            if lane.noise_rms is not None:
                n = self.noise.sample(wave.numel(), rng)
                n = n / n.square().mean().sqrt().clamp(min=1e-8)
                wave = wave + n * lane.noise_rms
        if label is not None and focus is not None:
            lane.words.append((lane.appended + focus[0], lane.appended + focus[1], label))
        lane.audio = torch.cat([lane.audio, wave.clamp(-1.0, 1.0)])
        lane.appended += wave.numel()

    def next_segment(self, rng: random.Random) -> Tuple[torch.Tensor, torch.Tensor, List[bool]]:
        """The next segment of every lane.

        Returns:
            waves (B, M): each lane's audio from ``context`` samples before its first frame
                center to ``context`` after its last (M = (T - 1) * hop + 2 * context,
                framed without padding into T = ``seg_frames`` frames);
            labels (B, T): per frame, the target of a convolution step ending there
                (:func:`frame_targets`);
            restarted: (B,) whether each lane starts a new stream here (state to zero).
        """
        need = (self.seg_frames - 1) * self.hop + 2 * self.context
        waves, labels, restarted = [], [], []
        for i, lane in enumerate(self.lanes):
            fresh = rng.random() < self.cfg.train.stream_reset_prob
            if fresh:
                lane = self.lanes[i] = self._new_lane(rng, lane.start)
            restarted.append(fresh)
            while lane.audio.numel() < need:
                self._append_slot(lane, rng)
            waves.append(lane.audio[:need])
            centers = lane.start + self.hop * torch.arange(self.seg_frames)
            labels.append(frame_targets(centers, lane.words, self.background, self.cfg, self.sr))
            lane.audio = lane.audio[self.seg_samples:]
            lane.start += self.seg_samples
            horizon = lane.start - int(self.cfg.train.stream_ignore_after_s * self.sr)
            lane.words = [w for w in lane.words if w[1] >= horizon]
        return torch.stack(waves), torch.stack(labels), restarted


def frame_targets(centers: torch.Tensor, words: Sequence[Tuple[int, int, int]], background: int,
                  cfg: KWSConfig, sample_rate: int) -> torch.Tensor:
    """centers (T,) absolute frame-center samples -> targets (T,): the class of a word whose
    end lies within ``stream_target_s`` before/after the frame, IGNORE between a word's
    start and that range and up to ``stream_ignore_after_s`` after its end, else background."""
    tc = cfg.train
    lo, hi = (int(s * sample_rate) for s in tc.stream_target_s)
    after = int(tc.stream_ignore_after_s * sample_rate)
    out = torch.full(centers.shape, background, dtype=torch.long)
    for w0, w1, label in words:
        out[(centers >= w0) & (centers <= w1 + after)] = IGNORE
    for w0, w1, label in words:
        out[(centers >= w1 + lo) & (centers <= w1 + hi)] = label
    return out


def stream_loss(logits: torch.Tensor, targets: torch.Tensor, background: int) -> torch.Tensor:
    """logits (B, K, C), targets (B, K) -> mean cross-entropy of the target-word steps plus
    that of the background steps, halved (the background's alone when no word is present)."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=IGNORE, reduction="none")
    t = targets.reshape(-1)
    word, bg = (t != IGNORE) & (t != background), t == background
    parts = [ce[m].mean() for m in (word, bg) if m.any()]
    return sum(parts) / len(parts) if parts else logits.sum() * 0.0


def train_on_streams(spotter: nn.Module, cfg: KWSConfig, clips: Sequence[Clip], noise: NoiseBank,
                     out_dir: str | Path, device: torch.device) -> dict:
    """The stream phase (module docstring) for ``cfg.train.stream_minutes``, on ``spotter``
    (a :class:`kws.train.Spotter` holding the window phase's weights), resumable from
    ``out_dir/stream_last.pt`` (written every ~minute; a resumed run starts its lanes
    afresh). Returns the phase's summary; the trained weights are left in ``spotter``."""
    from kws.train import _comparable

    tc = cfg.train
    out_dir = Path(out_dir)
    background = cfg.labels.index("_background_") if "_background_" in cfg.labels else 0
    crnn = spotter.crnn
    lt, st = cfg.model.conv_kernel[0], cfg.model.conv_stride[0]
    maker = StreamMaker(cfg, clips, noise, background)
    params = [p for p in crnn.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.stream_lr, weight_decay=tc.weight_decay)
    resume_path = out_dir / "stream_last.pt"
    state = {"steps": 0, "minutes": 0.0, "history": [], "done": False}
    if resume_path.is_file():
        try:
            saved = torch.load(resume_path, map_location="cpu", weights_only=False)
            if _comparable(saved["config"]) == _comparable(to_dict(cfg)):  # as the window phase's rule
                state = saved
                crnn.load_state_dict(saved["model"])
                opt.load_state_dict(saved["optimizer"])
                log.info("continuing the stream phase after %d steps", saved["steps"])
        except Exception as exc:  # a truncated file: start the phase again
            log.warning("%s: unreadable (%s); stream phase from the start", resume_path, exc)
    t0, prior = time.time(), state["minutes"] * 60.0
    budget_s = tc.stream_minutes * 60.0
    B = tc.stream_lanes
    hidden = torch.zeros(crnn.state_shape[0], B, crnn.state_shape[1], device=device)
    carry = torch.zeros(B, 0, cfg.features.n_mels, device=device)  # frames the convolution has not consumed
    steps, history = state["steps"], state["history"]
    totals = [0.0, 0, 0, 0]  # loss sum, segments, word steps, word steps above 0.5
    last_save = time.time()
    bar = tqdm(total=round(budget_s / 60.0, 1), desc="stream phase (min)", leave=False, mininterval=5.0,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min")
    crnn.train()
    while not state["done"]:
        elapsed = prior + time.time() - t0
        if elapsed >= budget_s:
            break
        rng = random.Random(f"{tc.seed}:stream:{steps}")
        waves, frame_labels, restarted = maker.next_segment(rng)
        fe = spotter.frontend
        if any(restarted):  # a new stream: zero state, and silence before it
            fresh = torch.tensor(restarted, device=device)
            hidden = hidden.masked_fill(fresh[None, :, None], 0.0)
            silence = fe.from_mel(torch.zeros(1, 1, cfg.features.n_mels, device=device))
            carry = torch.where(fresh[:, None, None], silence, carry)
        with torch.no_grad():
            feats = fe.from_mel(fe.mel.from_padded(waves.to(device)))  # (B, T, F)
        buf = torch.cat([carry, feats], dim=1)
        labels = torch.cat([torch.full((B, carry.shape[1]), IGNORE, dtype=torch.long), frame_labels], dim=1)
        if buf.shape[1] < lt:
            carry = buf
            continue
        k = (buf.shape[1] - lt) // st + 1
        logits, h = crnn.step(buf[:, : lt + (k - 1) * st], hidden)
        # step j's last frame is buf frame j * ST + LT - 1: its target is that frame's
        targets = labels[:, lt - 1 + st * torch.arange(k)].to(device)
        loss = stream_loss(logits, targets, background)
        p = min(1.0, elapsed / budget_s)
        lr = max(tc.stream_lr * 0.5 * (1 + math.cos(math.pi * p)), tc.stream_lr * 0.01)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        hidden = h.detach()
        carry = buf[:, k * st:].detach()
        steps += 1
        word = (targets != IGNORE) & (targets != background)
        totals[0] += float(loss.detach())
        totals[1] += 1
        totals[2] += int(word.sum())
        totals[3] += int((torch.softmax(logits.detach(), -1)[..., background] < 0.5)[word].sum())
        bar.update(round((prior + time.time() - t0) / 60.0, 1) - bar.n)
        if time.time() - last_save >= SAVE_EVERY_S:
            row = {"steps": steps, "minutes": round((prior + time.time() - t0) / 60.0, 2),
                   "loss": round(totals[0] / max(1, totals[1]), 4),
                   "word_step_recall": round(totals[3] / max(1, totals[2]), 4), "lr": lr}
            history.append(row)
            log.info("stream phase %s", json.dumps(row))
            totals = [0.0, 0, 0, 0]
            _save(resume_path, crnn, opt, steps, prior + time.time() - t0, history, False, cfg)
            last_save = time.time()
    bar.close()
    minutes = (prior + time.time() - t0) / 60.0
    _save(resume_path, crnn, opt, steps, minutes * 60.0, history, True, cfg)
    crnn.eval()
    return {"steps": steps, "minutes": round(minutes, 2), "lanes": B,
            "segment_s": maker.seg_samples / maker.sr,
            "audio_hours": round(steps * B * maker.seg_samples / maker.sr / 3600.0, 2), "history": history}


def _save(path: Path, crnn: nn.Module, opt, steps: int, seconds: float, history: list, done: bool,
          cfg: KWSConfig) -> None:
    state = {"steps": steps, "minutes": seconds / 60.0, "history": history, "done": done,
             "model": crnn.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg)}
    write_atomically(path, lambda f: torch.save(state, f))
