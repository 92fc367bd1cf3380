"""Data for keyword spotting: corpus layouts, speaker splits, manifests, and the augmenting
window sampler (noise at chosen SNRs, speed and pitch perturbation, time shift, gain).

Manifests are JSON lines as elsewhere in the toolkit: ``id``, ``audio``, ``duration``,
``sample_rate``, ``text`` (the class label), ``speaker`` and ``meta`` (``source``: "real",
"synthetic" or "hard"; ``split``).
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from asr.audio import AudioError, audio_info, load_audio
# NoiseBank lives in asr.augment (the ASR trainer mixes real noise too); kws code imports it from here
from asr.augment import NoiseBank, add_noise, speed_perturb  # noqa: F401
from kws.config import AugmentConfig

log = logging.getLogger(__name__)

from kws.layout import (AUDIO_SUFFIXES, SPEECH_COMMANDS_LABELS, SPEECH_COMMANDS_WORDS,  # noqa: F401
                        hash_split, list_audio, scan_speech_commands, speaker_of)


def load_or_skip(path: str | Path, sample_rate: int, what: str = "") -> Optional[torch.Tensor]:
    """The file's wave (N,), or None after a warning naming it (a bad rendering or
    recording is left out, not fatal); ``what`` prefixes the file in the warning."""
    try:
        return load_audio(path, sample_rate)
    except AudioError as exc:
        log.warning("skipping %s%s", what, exc)
        return None


# ----------------------------------------------------------------------------- manifests
def manifest_entry(path: str | Path, label: str, speaker: str = "", source: str = "real",
                   split: str = "", **meta) -> dict:
    try:
        duration, sr = audio_info(path)
    except AudioError as exc:
        log.warning("skipping %s", exc)
        return {}
    return {"id": Path(path).stem, "audio": str(path), "duration": round(duration, 4),
            "sample_rate": sr, "text": label, "speaker": speaker,
            "meta": {"source": source, "split": split, **meta}}


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync, then rename over ``path``: a
    run killed mid-write leaves the previous file whole, never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed


def write_manifest(entries: Iterable[dict], path: str | Path) -> int:
    """Write the entries as JSON lines, atomically (a recipe reuses a manifest it finds);
    returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e) + "\n" for e in entries if e]
    write_atomically(path, lambda f: f.write("".join(lines).encode("utf-8")))
    return len(lines)


def read_manifest(path: str | Path) -> List[dict]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not a JSON line ({exc})") from None
    return out


# ----------------------------------------------------------------------------- clips
@dataclass
class Clip:
    """One example. wave: (N,) at the model's rate; focus: (start, end) samples of the
    speech inside it (placement keeps it in the window); label: class index."""

    wave: torch.Tensor
    label: int
    source: str = "real"
    path: str = ""
    speaker: str = ""
    focus: Optional[Tuple[int, int]] = None
    variants: List[torch.Tensor] = field(default_factory=list)  # precomputed pitch shifts


def speech_region(wave: torch.Tensor, sample_rate: int = 16000, floor_db: float = 30.0
                  ) -> Tuple[int, int]:
    """(start, end) samples of the part of ``wave`` (N,) within ``floor_db`` of its loudest
    20 ms frame: a rough word locator for clips that hold one word."""
    frame = sample_rate // 50
    n = wave.numel() // frame
    if n < 2:
        return 0, wave.numel()
    e = wave[: n * frame].reshape(n, frame).square().mean(dim=1)
    db = 10 * torch.log10(e + 1e-10)
    active = torch.nonzero(db >= db.max() - floor_db).flatten()
    return int(active[0]) * frame, min(wave.numel(), (int(active[-1]) + 1) * frame)


def load_clips(entries: Sequence[dict], label_index: Dict[str, int], sample_rate: int = 16000,
               locate: bool = True, desc: str = "loading") -> List[Clip]:
    """Manifest entries -> clips in memory. Bad audio is reported (with its path) and
    skipped; an unknown label is an error naming the entry."""
    clips = []
    for e in tqdm(entries, desc=desc, leave=False, mininterval=2.0):
        label = e["text"]
        if label not in label_index:
            raise ValueError(f"{e.get('audio')}: label {label!r} not in {sorted(label_index)}")
        if (wave := load_or_skip(e["audio"], sample_rate)) is None:
            continue
        meta = e.get("meta", {})
        focus = speech_region(wave, sample_rate) if locate else None
        clips.append(Clip(wave, label_index[label], meta.get("source", "real"), e["audio"],
                          e.get("speaker", ""), focus))
    return clips


def pitch_shift(wave: torch.Tensor, semitones: float, sample_rate: int = 16000) -> torch.Tensor:
    """Shift pitch, keeping the duration: phase-vocoder time stretch, then resampling.

    The factor is rounded to 2 decimals so that the resampling ratio stays small
    (torchaudio's own ``pitch_shift`` builds a huge kernel for 16 kHz audio).
    wave: (N,) -> (~N,).
    """
    import torchaudio.functional as AF

    factor = round(2.0 ** (semitones / 12.0), 2)
    if factor == 1.0:
        return wave
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, torch.pi * hop, spec.shape[0])[:, None]
    stretched = AF.phase_vocoder(spec, 1.0 / factor, advance)
    longer = torch.istft(stretched, n_fft, hop, window=window)
    return speed_perturb(longer, factor, sample_rate)


def _pitch_variants(job: Tuple[List[torch.Tensor], List[float], int]) -> List[List[torch.Tensor]]:
    waves, steps, sample_rate = job
    with torch.no_grad():
        return [[pitch_shift(w, s, sample_rate) for s in steps] for w in waves]


def add_pitch_variants(clips: Sequence[Clip], semitones: Sequence[float], sample_rate: int = 16000,
                       sources: Sequence[str] = ("real",), jobs: int = 1) -> None:
    """Precompute pitch-shifted copies of the chosen clips (``Clip.variants``), in ``jobs``
    processes when more than one."""
    steps = [s for s in semitones if s != 0]
    chosen = [c for c in clips if c.source in sources]
    if not steps or not chosen:
        return
    if jobs <= 1:
        for c in tqdm(chosen, desc="pitch variants", leave=False, mininterval=2.0):
            c.variants = _pitch_variants(([c.wave], steps, sample_rate))[0]
        return
    import multiprocessing as mp

    size = len(chosen) // (jobs * 4) + 1
    parts = [chosen[i:i + size] for i in range(0, len(chosen), size)]
    # spawn, not fork: a fork while another thread (torch's, tqdm's) holds a lock leaves
    # the child waiting on it forever
    with mp.get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        results = pool.map(_pitch_variants, [([c.wave for c in p], steps, sample_rate) for p in parts])
    for part, variants in zip(parts, results):
        for c, v in zip(part, variants):
            c.variants = v


# ----------------------------------------------------------------------------- sampler
class WindowMaker:
    """Turns a clip into one training window with augmentation: (context + window_samples
    + context,) samples, the clip's own audio (or zeros) around the window on each side
    (``context``: :attr:`kws.config.KWSConfig.context_samples`; 0 gives bare windows)."""

    def __init__(self, window_samples: int, cfg: AugmentConfig, noise: NoiseBank,
                 sample_rate: int = 16000, context: int = 0) -> None:
        self.window = window_samples
        self.context = context
        self.n = window_samples + 2 * context  # samples returned
        self.cfg = cfg
        self.noise = noise
        self.sr = sample_rate

    def place(self, wave: torch.Tensor, focus: Optional[Tuple[int, int]], rng: random.Random,
              jitter: bool) -> torch.Tensor:
        """Crop or zero-pad ``wave`` (N,) to the window with its context (n,), at
        :meth:`placement`."""
        return self._cut(wave, self.placement(wave.numel(), focus, rng, jitter))

    def _cut(self, wave: torch.Tensor, start: int) -> torch.Tensor:
        """wave[start:start + n] (n,), zeros where it runs past either end."""
        n, N = self.n, wave.numel()
        out = torch.zeros(n)
        a, b = max(start, 0), min(start + n, N)
        if b > a:
            out[a - start:b - start] = wave[a:b]
        return out

    def placement(self, N: int, focus: Optional[Tuple[int, int]], rng: random.Random,
                  jitter: bool) -> int:
        """Sample of a clip of ``N`` samples where its window (context included) starts.

        The natural placement is the one evaluation uses (a centered crop or centered
        padding, :meth:`kws.edge.KWSModel.fit_window`); training shifts it by up to
        ``time_shift_s``. A ``focus`` (the speech) is kept whole inside the window when it
        fits; in a clip longer than the window it may sit anywhere. Long clips without a
        focus (running speech) are cropped anywhere.
        """
        n = self.window
        start = (N - n) // 2
        shift = int(self.cfg.time_shift_s * self.sr)
        if jitter:
            start += rng.randint(-shift, shift)
        if focus is None:
            if jitter and N > n:
                start = rng.randint(0, N - n)
        else:
            f0, f1 = focus
            if f1 - f0 >= n:  # speech longer than the window: center on it
                start = f0 + (f1 - f0 - n) // 2
            elif jitter and N > n:  # a word in a long clip: anywhere it fits whole
                start = rng.randint(f1 - n, f0)
            else:  # starts that keep [f0, f1) inside: [f1 - n, f0]
                start = min(max(start, f1 - n), f0)
        return start - self.context  # the window's context on both sides comes with it

    def __call__(self, clip: Clip, rng: random.Random, augment: bool = True,
                 return_focus: bool = False):
        """clip.wave (N,) -> window with context (n,): pitch variant, speed, reverberation,
        placement, gain and noise when ``augment``; the evaluation placement alone otherwise.
        With ``return_focus``: (window, focus) where focus is the (start, end) samples of
        the clip's speech in the window (after speed perturbation; within [0, n]), or None."""
        c = self.cfg
        wave, focus = clip.wave, clip.focus
        if augment and clip.variants and rng.random() < 0.5:
            wave = rng.choice(clip.variants)
        if augment and focus is None and wave.numel() > 2 * self.n:
            # running speech is cropped anywhere anyway: crop first (with room for the
            # slowest speed factor), so speed and reverberation work on 1.25 windows, not minutes
            m = int(1.25 * self.n)
            s = rng.randint(0, wave.numel() - m)
            wave = wave[s:s + m]
        if augment and c.speed_factors:
            factor = rng.choice(c.speed_factors)
            if factor != 1.0:
                wave = speed_perturb(wave, factor, self.sr)
                if focus is not None:
                    focus = (int(focus[0] / factor), min(wave.numel(), int(focus[1] / factor)))
        if augment and c.reverb_prob > 0 and rng.random() < c.reverb_prob:
            from asr.reverb import reverberate, synthetic_rir

            # the tail follows the speech: the focus (speech start and end) stays where it was
            wave = reverberate(wave, synthetic_rir(rng, self.sr, c.rt60_s, c.drr_db))
        start = self.placement(wave.numel(), focus, rng, jitter=augment)
        out = self._finish(self._cut(wave, start), rng, augment)
        if return_focus:
            # speech longer than the window is cut by it: the focus says what the window holds
            return out, None if focus is None else (max(0, focus[0] - start), min(self.n, focus[1] - start))
        return out

    def _finish(self, out: torch.Tensor, rng: random.Random, augment: bool) -> torch.Tensor:
        """Gain and noise (when ``augment``) on a placed window (n,)."""
        c = self.cfg
        if not augment:
            return out
        lo, hi = c.gain_db
        out = out * 10 ** (rng.uniform(lo, hi) / 20)
        if rng.random() < c.noise_prob:
            noise = self.noise.sample(self.n, rng)
            if out.abs().max() < 1e-4:  # silence: noise at a random level instead of an SNR
                out = out + noise * 10 ** (rng.uniform(-70, -15) / 20)
            else:
                snr = rng.choice(c.snr_db) + rng.uniform(-2.5, 2.5)
                out = add_noise(out, noise, snr)
        return out.clamp(-1.0, 1.0)


def draw_weight(clip: Clip, synthetic_weight: float) -> float:
    """How often a clip is drawn against the others of its class: a synthetic one
    ``synthetic_weight``, a real one 1."""
    return synthetic_weight if clip.source == "synthetic" else 1.0


def balanced_draws(clips: Sequence[Clip], num: int, num_classes: int, rng: random.Random,
                   class_balance: bool = True, synthetic_weight: float = 0.5,
                   class_weights: Optional[Dict[int, float]] = None) -> List[int]:
    """Indices of ``num`` draws: every class equally often (when ``class_balance``; a
    class in ``class_weights`` is drawn that many times as often), and within a class a
    synthetic clip weighs ``synthetic_weight`` against a real one."""
    by_class: Dict[int, List[int]] = {}
    for i, c in enumerate(clips):
        by_class.setdefault(c.label, []).append(i)
    weights = [draw_weight(c, synthetic_weight) for c in clips]
    if not class_balance:
        return rng.choices(range(len(clips)), weights=weights, k=num)
    classes = sorted(by_class)
    out = []
    per_class_w = {k: [weights[i] for i in by_class[k]] for k in classes}
    cw = [float((class_weights or {}).get(k, 1.0)) for k in classes]
    for _ in range(num):
        k = rng.choices(classes, weights=cw)[0]
        out.append(rng.choices(by_class[k], weights=per_class_w[k], k=1)[0])
    return out
