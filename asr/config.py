"""Typed experiment configs loaded from YAML.

Every section is a dataclass; unknown keys and wrong types are errors that name the
field, so a typo in a recipe fails at start-up rather than silently using a default.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from asr.augment import SpecAugmentConfig
from asr.features import FeatureConfig


@dataclass
class EncoderConfig:
    name: str = "conv_rnn"
    subsampling: int = 4  # 2, 4 or 8
    conv_channels: int = 32
    rnn_type: str = "gru"  # "gru" | "lstm"
    hidden_size: int = 256
    num_layers: int = 3
    bidirectional: bool = True
    lookahead: int = 0  # row-convolution lookahead frames, forward-only models
    dropout: float = 0.1
    # "lc_bgru" (latency-controlled bidirectional GRU): chunks of chunk_size frames, each
    # read with chunk_right_context more frames by the backward direction (output rate)
    chunk_size: int = 16
    chunk_right_context: int = 8
    # "conformer": hidden_size is the model dimension, num_layers the blocks
    attention_heads: int = 4
    ff_expansion: int = 4  # feed-forward width = ff_expansion * hidden_size
    conv_kernel: int = 15  # depthwise convolution (odd unless causal)
    # causal: attention sees its chunk of chunk_size frames and attention_left_chunks
    # chunks before it (-1: all), the depthwise conv only the past; streamable with a
    # bounded left context (attention_left_chunks >= 0)
    causal: bool = False
    attention_left_chunks: int = -1


@dataclass
class HeadConfig:
    """One head on the shared encoder. ``options`` go to the head's own config."""

    weight: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizerConfig:
    kind: str = "char"  # "char" | "sentencepiece"
    vocab_size: int = 256  # sentencepiece only


@dataclass
class DataConfig:
    train: str = ""  # manifest paths (JSON lines)
    # a folder of tar shards (`python -m asr shard`): training streams them (asr/shards.py)
    # instead of reading data.train; shuffle buffer of shard_buffer utterances and at most
    # shard_buffer_mb megabytes of audio
    train_shards: str = ""
    shard_buffer: int = 2000
    shard_buffer_mb: float = 256.0
    valid: str = ""
    test: str = ""
    max_duration: float = 20.0  # seconds; longer utterances are skipped (and reported)
    on_error: str = "skip"  # bad audio/transcripts: "skip" (reported) or "raise"
    # training refuses to start when validation rejects more than this share of a manifest
    # (and more than 20 utterances): a wrong folder or relative path otherwise drops a whole
    # source with one log line per file; 1.0 turns the check off
    max_rejected_share: float = 0.1
    cache_audio: bool = True  # keep decoded waveforms in memory after the first epoch
    speed_perturb: List[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]
    noise_prob: float = 0.0
    noise_snr_db: List[float] = field(default_factory=lambda: [10.0, 30.0])
    # real noise: audio files or folders of them (e.g. the Speech Commands
    # _background_noise_ recordings); a noisy example takes a random stretch of one with
    # probability 1 - colored_noise_prob, else generated white/pink/brown noise (all of it
    # generated when none are given)
    noise_dirs: List[str] = field(default_factory=list)
    colored_noise_prob: float = 0.3
    # room reverberation (asr.reverb): with probability reverb_prob the clip is convolved
    # with a synthetic impulse response, RT60 and direct-to-reverberant ratio drawn from these
    reverb_prob: float = 0.0
    rt60_s: List[float] = field(default_factory=lambda: [0.2, 0.9])
    drr_db: List[float] = field(default_factory=lambda: [-3.0, 12.0])
    band_limit_hz: Optional[int] = None  # resample down/up to mimic e.g. 8 kHz audio
    # with probability margin_prob, a training clip's silence around the speech is set to a
    # margin drawn from margin_s (seconds, each side): cut from the clip or padded with its
    # own noise floor (speech = frames within margin_threshold_db of the loudest)
    margin_prob: float = 0.0
    margin_s: List[float] = field(default_factory=lambda: [0.0, 0.15])
    margin_threshold_db: float = 35.0


@dataclass
class TrainConfig:
    epochs: int = 10
    max_batch_seconds: float = 200.0  # total padded audio per batch
    lr: float = 2e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 200
    schedule: str = "cosine"  # warm-up then "cosine" decay, or "constant"
    grad_clip: float = 5.0
    seed: int = 0
    num_threads: int = 2
    checkpoint_every: int = 200  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 2  # epoch-N.pt files kept (the newest), for `asr average`
    valid_max_utts: int = 200
    # time budget: the LR schedule anneals over min(epochs, budget) and training stops
    # when it is spent, so a run ends on time on any machine
    max_minutes: Optional[float] = None
    # step budget: the LR schedule anneals over min(epochs, max_steps optimiser steps) and
    # training stops after them (deterministic, unlike a time budget)
    max_steps: Optional[int] = None
    device: str = "auto"  # "auto" (the GPU when CUDA is present, else the CPU) | "cpu" | "cuda"
    # "fp32" | "bf16" (autocast) | "fp16" (autocast with gradient scaling); features and
    # losses stay in fp32
    precision: str = "fp32"
    num_workers: int = 0  # DataLoader worker processes reading and augmenting audio
    # batches per optimiser step and process: a step of W processes (torchrun) uses W *
    # accum_steps batches, with the loss per target token of all of them
    accum_steps: int = 1
    world_size: int = 1  # recorded by the trainer: the processes of the run (a set value is replaced)
    # parameters whose names start with one of these are not trained (e.g. [encoder, heads.ctc]:
    # new heads learn on a trained encoder, which keeps its dropout and SpecAugment input)
    freeze: List[str] = field(default_factory=list)


@dataclass
class DecodingConfig:
    """How ``python -m asr evaluate`` / ``transcribe`` decode the model unless told otherwise.

    Saved in the checkpoint with the rest of the config, so a model for a closed task (the
    ten FSDD digits) carries its vocabulary and test-time warps with it.
    """

    head: Optional[str] = None  # default: the model's first head
    method: Optional[str] = None  # default: the head's first search (or its *_vocab search)
    vocabulary: List[str] = field(default_factory=list)  # closed vocabulary; empty = open
    warps: List[float] = field(default_factory=list)  # test-time VTLN factors; empty = off
    beam: Optional[int] = None  # beam of the search (None: the search's default)
    # shallow fusion with an n-gram LM built from these texts (one sentence a line, or a
    # .jsonl manifest); a relative path is found beside the checkpoint. None: no LM.
    lm_texts: Optional[str] = None
    lm_kind: str = "char"  # "char": token n-gram (open vocabulary) | "word": word n-gram + lexicon
    lm_order: int = 6
    lm_weight: float = 0.5
    length_bonus: float = 1.0
    # CTC prefix beam pruning (None: exact within the beam): skip a frame's tokens below this
    # log-probability (its best kept), drop prefixes this far below the best (pyctcdecode's -5, 10)
    token_min_logp: Optional[float] = None
    beam_prune_logp: Optional[float] = None
    # re-rank the search's nbest hypotheses with this attention head, weight its share of
    # the score (None: no rescoring); ctc_weight: joint CTC/attention decoding (attention_beam)
    nbest: Optional[int] = None
    rescore: Optional[str] = None
    rescore_weight: Optional[float] = None
    ctc_weight: Optional[float] = None
    # attention_beam only: length normalisation exponent of the ended hypotheses' scores,
    # end detection's window (label lengths) and margin (log-score, <= 0); None: the
    # search's defaults (1.0, 3, -10.0)
    length_norm: Optional[float] = None
    end_window: Optional[int] = None
    end_margin: Optional[float] = None
    # how each other head decodes when asked for by name (``--head ctc`` of a model whose
    # default head is the transducer): the same fields, for that head (its ``head`` unused);
    # a head not named here starts from its own search's defaults
    other_heads: Dict[str, "DecodingConfig"] = field(default_factory=dict)


@dataclass
class EndpointConfig:
    """When a stream's segment ends, by trailing silence (sherpa-onnx's three rules), in
    seconds; silence is the time since the last decoded token. 0 turns a rule off."""

    silence_without_speech: float = 2.4  # nothing decoded yet in the segment
    silence_after_speech: float = 1.2  # after the segment's last decoded token
    max_segment: float = 20.0  # a segment this long ends anyway


@dataclass
class StreamingConfig:
    """How ``asr.streaming`` decodes: the feature frames given to the encoder per step
    (latency vs. batch efficiency) and the endpoint rules."""

    chunk_frames: int = 16
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class ExperimentConfig:
    name: str = "exp"
    sample_rate: int = 16000
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # "global": train-set statistics (streamable); "utterance": also subtract each
    # utterance's own mean, which removes microphone/channel colouring (few-speaker corpora);
    # "utterance_smooth": only that mean's cmvn_smooth_order lowest cosine components (level,
    # tilt, broad colouring), keeping the finer shape that tells short words apart
    # "running": subtract a causal running mean instead (the mean of the frames so far for
    # the first cmvn_running_frames frames, then an exponential average over about that
    # many), a per-utterance normalisation that streams
    cmvn: str = "global"
    cmvn_smooth_order: int = 4
    cmvn_running_frames: int = 300
    specaugment: Optional[SpecAugmentConfig] = field(default_factory=SpecAugmentConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: Dict[str, HeadConfig] = field(default_factory=lambda: {"ctc": HeadConfig()})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


class ConfigError(ValueError):
    pass


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
        fields = {k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**fields)
        except ConfigError:
            raise
        except ValueError as exc:  # the dataclass's own checks (__post_init__): say where
            raise ConfigError(f"{where}: {exc}") from None
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads "5e-4", an exponent without a dot, as text
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and
                                                not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: Dict[str, Any], where: str = "config"):
    """Build dataclass ``cls`` from plain data, checking names and types."""
    return _build(cls, data or {}, where)


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: Dict[str, Any], overrides: Optional[List[str]]) -> Dict[str, Any]:
    """Set ``section.key=value`` strings (values parsed as YAML) in nested config data."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: Optional[List[str]] = None) -> ExperimentConfig:
    """Read a YAML experiment config; ``overrides`` are ``section.key=value`` strings."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return from_dict(ExperimentConfig, apply_overrides(data, overrides), where=str(path))


def save_config(cfg: Any, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
