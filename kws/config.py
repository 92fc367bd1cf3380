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
    reverb_prob: float = 0.0  # share of examples convolved with a synthetic room (kws.reverb)
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
    max_minutes: Optional[float] = 10.0  # stop cleanly after this much training time
    grad_clip: float = 5.0
    mixup_alpha: float = 0.0  # >0: mixup of feature windows within a batch, lambda ~ Beta(a, a)
    ema_decay: float = 0.0  # >0: keep an exponential moving average of the weights (per step);
    # validation, checkpoints and export use the averaged weights


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
