"""Typed configs for the CRNN keyword spotter, loaded from YAML.

Checking (unknown keys, wrong types) reuses :func:`asr.config.from_dict`, so a typo in a
recipe fails at start-up with the field's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from asr.augment import SpecAugmentConfig
from asr.config import ConfigError, apply_overrides, from_dict, to_dict
from asr.features import FeatureConfig

__all__ = [
    "CRNNConfig", "AugmentConfig", "KWSTrainConfig", "DetectorConfig", "KWSDataConfig",
    "KWSConfig", "load_kws_config", "save_kws_config", "kws_config_from_dict", "ConfigError",
    "WakeWordConfig", "WakeWordSynthConfig", "WakeWordDataConfig", "wakeword_kws_config",
    "wakeword_config_from_dict",
]


def _kws_features() -> FeatureConfig:
    return FeatureConfig(kind="logmel", n_mels=40, f_min=20.0, f_max=7600.0)


@dataclass
class CRNNConfig:
    """Arik et al. 2017: Conv2d over (time, mel) -> GRU layers -> dense -> classes."""

    conv_channels: int = 32
    conv_kernel: List[int] = field(default_factory=lambda: [20, 5])  # (time, freq) = (LT, LF)
    conv_stride: List[int] = field(default_factory=lambda: [8, 2])  # (ST, SF)
    conv_batchnorm: bool = True
    cmn: bool = False  # subtract each window's mean over time per mel channel (channel robustness)
    gru_layers: int = 2
    gru_size: int = 64
    bidirectional: bool = True
    pool: str = "last"  # "last" (final states) | "mean" (average over time)
    dense_size: int = 64
    dropout: float = 0.1


@dataclass
class AugmentConfig:
    noise_prob: float = 0.8
    snr_db: List[float] = field(default_factory=lambda: [-5.0, 5.0, 10.0, 20.0, 30.0])
    colored_noise_prob: float = 0.3  # share of noisy examples that get generated noise
    speed_factors: List[float] = field(default_factory=lambda: [0.85, 0.9, 1.0, 1.1, 1.15])
    pitch_semitones: List[float] = field(default_factory=lambda: [0.0])  # precomputed variants
    time_shift_s: float = 0.15  # random shift of a clip inside its window
    gain_db: List[float] = field(default_factory=lambda: [-20.0, 6.0])  # uniform range
    reverb_prob: float = 0.0  # share of examples convolved with a synthetic room (asr.reverb)
    rt60_s: List[float] = field(default_factory=lambda: [0.2, 0.9])  # uniform range
    drr_db: List[float] = field(default_factory=lambda: [-3.0, 12.0])  # direct-to-reverberant ratio
    specaugment: Optional[SpecAugmentConfig] = field(
        default_factory=lambda: SpecAugmentConfig(freq_masks=2, freq_width=6, time_masks=2,
                                                  time_width_ratio=0.1, time_width_max=10))


@dataclass
class KWSTrainConfig:
    epochs: int = 30
    examples_per_epoch: int = 4000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    class_balance: bool = True  # draw each class equally often
    class_weights: Dict[str, float] = field(default_factory=dict)  # e.g. {_unknown_: 1.5}
    synthetic_weight: float = 0.5  # sampling weight of a synthetic clip relative to a real one
    hard_negative_every: int = 0  # epochs between hard-negative mining rounds (0 = off)
    hard_negative_start: int = 3  # first epoch that mines
    hard_negative_max: int = 2000  # pool size
    hard_negative_threshold: float = 0.2  # keyword posterior above which a window is kept
    hard_negative_weight: float = 0.25  # share of negative draws taken from the pool
    hard_negative_scan_s: float = 0.0  # >0: each mining round scans a random this-many-seconds
    # part of the negative audio (60 s pieces) instead of all of it
    hard_negative_snr_db: List[float] = field(default_factory=list)  # non-empty: mining also scans a
    # noisy copy of the negative audio (training noise, an SNR from this list per 10 s)
    seed: int = 0
    num_threads: int = 1  # shared 2-core machines: >1 thread makes the GRU much slower
    device: str = "auto"  # "auto" (the GPU when CUDA is present, else the CPU) | "cpu" | "cuda"
    world_size: int = 1  # set by the trainer: the processes it ran with (torchrun), for the record
    max_minutes: Optional[float] = 10.0  # stop cleanly after this much training time
    grad_clip: float = 5.0
    mixup_alpha: float = 0.0  # >0: mixup of feature windows within a batch, lambda ~ Beta(a, a)
    ema_decay: float = 0.0  # >0: keep an exponential moving average of the weights (per step);
    # validation, checkpoints and export use the averaged weights
    # training on continuous streams (kws.stream_train; unidirectional models): after the window
    # training (train.max_minutes), this many more minutes on long audio with the GRU state carried
    # from segment to segment (truncated backpropagation), so the state a detector carries over
    # hours of audio is one the model was trained with; 0 = off
    stream_minutes: float = 0.0
    stream_segment_s: float = 2.0  # audio per segment (one optimizer step per segment)
    stream_lanes: int = 32  # streams trained side by side (the batch)
    stream_keyword_share: float = 0.2  # share of the 1 s slots of a stream that hold a target word
    stream_silence_share: float = 0.1  # share of slots left silent (noise only, when noise is mixed)
    stream_reset_prob: float = 0.05  # chance per segment that a lane starts a new stream (zero state)
    stream_lr: float = 1e-3  # peak learning rate of the stream phase (cosine to 1% of it)
    stream_target_s: List[float] = field(default_factory=lambda: [-0.1, 0.3])  # steps this range
    # around a word's end are its targets; from its start to there, and up to stream_ignore_after_s
    # after its end, steps are left out of the loss (the word is neither present nor absent yet)
    stream_ignore_after_s: float = 0.6


@dataclass
class DetectorConfig:
    """Post-processing of windowed posteriors (openWakeWord-style, outside the network)."""

    hop_s: float = 0.1  # the model runs once per hop on the last window of features
    smooth_hops: int = 2  # moving average over this many posteriors
    threshold: float = 0.5
    refractory_s: float = 1.0  # no second firing this soon after one


@dataclass
class KWSDataConfig:
    """Where the recipe found its data (free-form lists of paths, kept for the record)."""

    corpus_dir: str = ""
    prepared_dir: str = ""
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class KWSConfig:
    name: str = "kws"
    task: str = "commands"  # "commands" (N-way) | "wakeword" (background vs keyword)
    labels: List[str] = field(default_factory=list)
    keyword: str = ""  # wake-word text (task "wakeword")
    window_s: float = 1.0  # model input length
    features: FeatureConfig = field(default_factory=_kws_features)
    model: CRNNConfig = field(default_factory=CRNNConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: KWSTrainConfig = field(default_factory=KWSTrainConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: KWSDataConfig = field(default_factory=KWSDataConfig)

    @property
    def window_frames(self) -> int:
        """Feature frames in one window (centered STFT)."""
        return int(round(self.window_s * self.features.sample_rate)) // self.features.hop_length + 1

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.features.sample_rate))

    @property
    def context_samples(self) -> int:
        """Samples of audio on each side of a window that its edge frames read: a centered
        frame spans ``n_fft // 2`` samples either side of its center. Training windows carry
        them (``window_samples + 2 * context_samples`` samples, framed without padding), so
        a window's features equal those the stream computes for the same audio."""
        return self.features.n_fft // 2 if self.features.center else 0


def kws_config_from_dict(data: Dict[str, Any], where: str = "kws config") -> KWSConfig:
    cfg = from_dict(KWSConfig, data, where=where)
    _check(cfg, where)
    return cfg


def _check(cfg: KWSConfig, where: str) -> None:
    if cfg.task not in ("commands", "wakeword"):
        raise ConfigError(f"{where}: task must be 'commands' or 'wakeword', got {cfg.task!r}")
    if len(cfg.model.conv_kernel) != 2 or len(cfg.model.conv_stride) != 2:
        raise ConfigError(f"{where}: model.conv_kernel and conv_stride are [time, freq] pairs")
    if cfg.model.pool not in ("last", "mean"):
        raise ConfigError(f"{where}: model.pool must be 'last' or 'mean'")
    if cfg.features.kind not in ("logmel", "pcen"):
        raise ConfigError(f"{where}: features.kind must be 'logmel' or 'pcen'")
    if cfg.train.stream_minutes > 0:
        if cfg.task != "wakeword":
            # its targets are a word's end against _background_; a commands task has no such
            # class (its _silence_ and _unknown_ would be taken for a word and for background)
            raise ConfigError(f"{where}: train.stream_minutes needs task 'wakeword', got {cfg.task!r}")
        if cfg.model.bidirectional or cfg.model.pool != "last" or cfg.model.cmn:
            raise ConfigError(f"{where}: train.stream_minutes needs a streamable model "
                              "(model.bidirectional false, model.pool 'last', model.cmn false)")
        if cfg.features.kind != "logmel":
            raise ConfigError(f"{where}: train.stream_minutes needs features.kind 'logmel'")
        if not cfg.features.center or cfg.features.n_fft % 2:
            # kws.stream_train frames each segment as the serving stream does: one frame per hop,
            # centered, n_fft // 2 samples either side; otherwise frames and targets part ways
            raise ConfigError(f"{where}: train.stream_minutes needs centered frames (features.center "
                              f"true, an even features.n_fft), got center={cfg.features.center}, "
                              f"n_fft={cfg.features.n_fft}")
        if len(cfg.train.stream_target_s) != 2:
            raise ConfigError(f"{where}: train.stream_target_s is a [lo, hi] pair of seconds, "
                              f"got {cfg.train.stream_target_s}")
        lo, hi = cfg.train.stream_target_s
        if not (lo < hi <= cfg.train.stream_ignore_after_s):
            raise ConfigError(f"{where}: train.stream_target_s [lo, hi] needs lo < hi <= "
                              f"stream_ignore_after_s, got {cfg.train.stream_target_s} and "
                              f"{cfg.train.stream_ignore_after_s}")
        if cfg.train.stream_segment_s < cfg.window_s:
            raise ConfigError(f"{where}: train.stream_segment_s ({cfg.train.stream_segment_s}) is "
                              f"shorter than one window ({cfg.window_s} s)")
    if cfg.task == "wakeword" and not cfg.keyword:
        raise ConfigError(f"{where}: task 'wakeword' needs a keyword")


def load_kws_config(path: str | Path, overrides: Optional[List[str]] = None) -> KWSConfig:
    """Read a YAML KWS config; ``overrides`` are ``section.key=value`` strings."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return kws_config_from_dict(apply_overrides(data, overrides), where=str(path))


def save_kws_config(cfg: KWSConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


# ----------------------------------------------------------------------------- custom wake words
def wakeword_kws_config() -> KWSConfig:
    """The CRNN of Arik et al. 2017 as the "computer" recipe trains it (recipes/wake_word/
    conf/crnn.yaml), with reverberation on and hard-negative mining of a slice of the
    negative audio per round; ``keyword`` and ``window_s`` are set per phrase."""
    return KWSConfig(
        name="wake_word_crnn", task="wakeword", labels=["_background_", "keyword"], keyword="keyword",
        model=CRNNConfig(conv_channels=32, conv_kernel=[20, 5], conv_stride=[8, 2], gru_layers=2,
                         gru_size=48, bidirectional=True, pool="last", dense_size=64, dropout=0.1),
        augment=AugmentConfig(noise_prob=0.8, snr_db=[0.0, 5.0, 10.0, 20.0, 30.0], colored_noise_prob=0.3,
                              speed_factors=[0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15],
                              pitch_semitones=[-2.0, 2.0],  # precomputed for real positives only
                              time_shift_s=0.3, gain_db=[-15.0, 6.0], reverb_prob=0.5),
        train=KWSTrainConfig(epochs=200, examples_per_epoch=3000, batch_size=64, lr=3e-3,
                             label_smoothing=0.0, synthetic_weight=1.0, hard_negative_every=4,
                             hard_negative_start=4, hard_negative_max=1500, hard_negative_threshold=0.2,
                             hard_negative_weight=0.3, hard_negative_scan_s=600.0, num_threads=1,
                             max_minutes=30.0),
        detector=DetectorConfig(hop_s=0.1, smooth_hops=2, threshold=0.8, refractory_s=1.5))


@dataclass
class WakeWordSynthConfig:
    """How many renderings of each kind (each a voice, rate and pitch drawn at random)."""

    positives: int = 600  # the phrase, training voices
    heldout_positives: int = 150  # the phrase, held-out voices (evaluation only)
    near_misses: int = 30  # near-miss phrases (kws.phrases.near_miss_phrases)
    near_miss_renderings: int = 5  # renderings of each near miss
    sentences: int = 150  # sentences of the text corpus, one rendering each
    rate_range: List[float] = field(default_factory=lambda: [0.75, 1.35])
    pitch_range: List[int] = field(default_factory=lambda: [15, 85])
    engine_shares: Dict[str, float] = field(default_factory=lambda: {"espeak": 0.7, "flite": 0.22,
                                                                     "festival": 0.08})
    # (festival starts slowly: a few percent keeps its voices in without dominating the time)
    jobs: int = 3  # synthesizer processes at a time
    cache_dir: str = ""  # "" = <out>/synth_cache


@dataclass
class WakeWordDataConfig:
    corpora: str = "../shared/corpora"  # "" = no shared corpora
    corpus_names: List[str] = field(default_factory=lambda: ["speechocean762", "an4", "ljspeech",
                                                             "speech_commands", "mycroft_precise"])
    folders: List[str] = field(default_factory=list)  # more negative audio folders
    texts: str = ""  # id|raw|normalized sentences; "" = <corpora>/texts/ljspeech_metadata.csv
    held_out_percent: float = 80.0  # of the negative speakers, for the evaluation: 3.23 h of the 4.39 h
    # of the shared corpora, over the 3 h that 0.5 FA/h needs (kws.evaluate.hours_needed); 1.15 h
    # of other speakers stays for training
    max_train_hours: float = 1.0  # real negative audio loaded for training (a random part)
    max_heldout_hours: float = 4.0  # held-out negative audio evaluated (a random part; at least 3 h
    # observes 0.5 false alarms per hour, so this caps the evaluation time, not the rate's observability)
    real_positives: List[str] = field(default_factory=list)  # folders of real recordings of the
    # phrase: SHA-1 of each file name splits them like recipes/wake_word (40% held out, 10% unused)
    real_positive_test_percent: float = 40.0
    real_positive_val_percent: float = 10.0  # (no validation here: left out of training, as the recipe's
    # validation clips are, so the training share equals the recipe's)
    heldout_noise_percent: float = 25.0  # the last part of each noise recording, written under
    # <out>/heldout/noise for noisy evaluation and never mixed into training (0 = train on all)


@dataclass
class WakeWordConfig:
    """``python -m kws train-wakeword``: everything that decides the model and its report."""

    phrase: str = ""
    minutes: float = 45.0  # the whole run (synthesis, loading, training, export, evaluation)
    eval_reserve_minutes: float = 12.0  # kept from training for export and evaluation
    voices: List[str] = field(default_factory=list)  # [] = every installed voice
    hold_out_voices: List[str] = field(default_factory=list)  # [] = kws.voices.DEFAULT_HOLD_OUT
    target_fa_per_hour: float = 0.5
    eval_snrs: List[float] = field(default_factory=lambda: [5.0])  # noisy evaluation conditions (dB)
    # beside clean, with the held-out noise (<out>/heldout/noise; generated when there is none)
    evaluate_fp32: bool = False  # also evaluate model.onnx (the int8 model is always evaluated)
    seed: int = 0
    synth: WakeWordSynthConfig = field(default_factory=WakeWordSynthConfig)
    data: WakeWordDataConfig = field(default_factory=WakeWordDataConfig)
    kws: KWSConfig = field(default_factory=wakeword_kws_config)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wakeword_config_from_dict(data: Dict[str, Any], where: str = "wake-word config") -> WakeWordConfig:
    """``data`` over the defaults (nested sections merge key by key, so ``{"kws":
    {"train": {"lr": 1e-3}}}`` keeps the rest of the wake-word CRNN config)."""
    cfg = from_dict(WakeWordConfig, _merge(to_dict(WakeWordConfig()), data), where=where)
    if not cfg.phrase.strip():
        raise ConfigError(f"{where}: phrase is empty")
    if cfg.minutes <= cfg.eval_reserve_minutes:
        raise ConfigError(f"{where}: minutes ({cfg.minutes}) must exceed eval_reserve_minutes "
                          f"({cfg.eval_reserve_minutes})")
    _check(cfg.kws, f"{where}.kws")
    return cfg
