"""The ASR model: features -> shared encoder -> a dict of heads with loss weights."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

import asr.heads.attention  # noqa: F401  (registers the heads)
import asr.heads.ctc  # noqa: F401
import asr.heads.transducer  # noqa: F401
from asr.augment import SpecAugment, warp_features
from asr.config import ExperimentConfig, HeadConfig
from asr.encoders import build_encoder
from asr.features import FeatureExtractor, dct_basis
from asr.heads.ctc import CTCHead
from asr.registry import HEADS
from asr.search.attention import refuse_beam_only_options
from asr.search.rescore import rescore_nbest, rescore_nbest_lm
from asr.search.types import Hypothesis, SearchResult


class GlobalCMVN(nn.Module):
    """Feature normalisation with statistics gathered from training data (streamable,
    unlike per-utterance normalisation). forward(x (B, T, D)) -> (B, T, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.inv_std.copy_(1.0 / std.clamp(min=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


CMVN_KINDS = ("global", "utterance", "utterance_smooth", "running")


def running_mean_step(feats: torch.Tensor, mean: torch.Tensor, count: torch.Tensor,
                      frames: int):
    """Subtract a causal running mean, carried across chunks.

    m_t = m_{t-1} + (x_t - m_{t-1}) / min(n_t, frames), n_t the frames read including
    x_t: the plain mean of the first ``frames`` frames, then an exponential average.
    feats: (B, T, D); mean: (B, D) and count: (B,) int64 before these frames (zeros at
    the start) -> (feats - m (B, T, D), mean, count) after all T frames.
    """
    out = torch.empty_like(feats)
    for t in range(feats.shape[1]):
        count = count + 1
        rate = 1.0 / count.clamp(max=frames).to(feats.dtype)
        mean = mean + (feats[:, t] - mean) * rate[:, None]
        out[:, t] = feats[:, t] - mean
    return out, mean, count


class RunningMeanNormalization:
    """The streaming form of cmvn "running" for one utterance: ``(T, D) -> (T, D)``."""

    def __init__(self, dim: int, frames: int) -> None:
        self.frames = frames
        self.mean = torch.zeros(1, dim)
        self.count = torch.zeros(1, dtype=torch.long)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        out, self.mean, self.count = running_mean_step(feats[None], self.mean, self.count,
                                                       self.frames)
        return out[0]


def subtract_utterance_mean(feats: torch.Tensor, lens: torch.Tensor,
                            smooth_order: Optional[int] = None) -> torch.Tensor:
    """feats (B, T, D) minus each utterance's mean over its valid frames (lens (B,)).

    ``smooth_order``: subtract only the mean's ``smooth_order`` lowest cosine (DCT-II)
    components along D, its smooth part: level, tilt and broad colouring, which is what a
    microphone or channel adds, while the finer shape (formants, a fricative's band) stays.
    On short isolated words the whole mean is much of the word itself.
    """
    mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lens[:, None]).unsqueeze(-1)
    mean = (feats * mask).sum(1, keepdim=True) / lens.clamp(min=1)[:, None, None]  # (B, 1, D)
    if smooth_order is not None:
        basis = dct_basis(feats.shape[-1], smooth_order, feats.device, feats.dtype)  # (K, D)
        mean = (mean @ basis.T) @ basis  # projection onto the K smooth components
    return (feats - mean) * mask


def build_head(name: str, enc_dim: int, vocab_size: int, head_cfg: HeadConfig) -> nn.Module:
    cls = HEADS.get(name)
    if hasattr(cls, "from_options"):
        return cls.from_options(enc_dim, vocab_size, head_cfg.options)
    if head_cfg.options:
        raise ValueError(f"head {name!r} takes no options, got {sorted(head_cfg.options)}")
    return cls(enc_dim, vocab_size)


class ASRModel(nn.Module):
    """One encoder, several heads.

    ``forward`` returns a dict of per-utterance losses (each (B,)) plus ``"total"``, the
    weighted sum; reducing over the batch is the trainer's job, so active learning can
    take per-utterance gradients.
    """

    def __init__(self, cfg: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = FeatureExtractor(cfg.features)
        self.cmvn = GlobalCMVN(self.features.dim)
        if cfg.cmvn not in CMVN_KINDS:
            raise ValueError(f"cmvn must be one of {CMVN_KINDS}, got {cfg.cmvn!r}")
        self.specaug = SpecAugment(cfg.specaugment) if cfg.specaugment else None
        self.encoder = build_encoder(self.features.dim, cfg.encoder)
        if not cfg.heads:
            raise ValueError("config.heads is empty: give at least one head (e.g. ctc)")
        self.heads = nn.ModuleDict({
            name: build_head(name, self.encoder.output_dim, vocab_size, hc)
            for name, hc in cfg.heads.items()
        })
        self.loss_weights = {name: hc.weight for name, hc in cfg.heads.items()}

    @property
    def frame_seconds(self) -> float:
        """Seconds per encoder output frame (the unit of token times)."""
        return (self.cfg.features.hop_length * self.encoder.subsampling_factor
                / self.cfg.features.sample_rate)

    def normalized_features(self, waves: torch.Tensor, wave_lens: torch.Tensor):
        """waves: (B, N), wave_lens: (B,) -> (feats (B, T', F), feat_lens (B,)), the
        encoder's input before augmentation."""
        # fp32 even under autocast: the log of small mel energies loses too much in 16 bits
        with torch.autocast(waves.device.type, enabled=False):
            feats, feat_lens = self.features(waves.float(), wave_lens)
            return self.cmvn(self.per_utterance_normalization(feats, feat_lens)), feat_lens

    def per_utterance_normalization(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """What ``cmvn`` takes from each utterance before the global statistics."""
        if self.cfg.cmvn == "utterance":
            return subtract_utterance_mean(feats, feat_lens)
        if self.cfg.cmvn == "utterance_smooth":
            return subtract_utterance_mean(feats, feat_lens, self.cfg.cmvn_smooth_order)
        if self.cfg.cmvn == "running":
            B, _, D = feats.shape
            out, _, _ = running_mean_step(feats, feats.new_zeros(B, D),
                                          torch.zeros(B, dtype=torch.long, device=feats.device),
                                          self.cfg.cmvn_running_frames)
            mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lens[:, None]
            return out * mask.unsqueeze(-1)
        return feats

    def encode(self, waves: torch.Tensor, wave_lens: torch.Tensor):
        """waves: (B, N), wave_lens: (B,) -> (enc (B, T, D), enc_lens (B,))."""
        feats, feat_lens = self.normalized_features(waves, wave_lens)
        if self.specaug is not None and self.training:
            feats = self.specaug(feats, feat_lens)
        return self.encoder(feats, feat_lens)

    def forward(self, waves: torch.Tensor, wave_lens: torch.Tensor, targets: torch.Tensor,
                target_lens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """waves (B, N), wave_lens (B,), targets (B, U), target_lens (B,) -> {head: (B,)}."""
        enc, enc_lens = self.encode(waves, wave_lens)
        # a head of weight 0 adds nothing to the total, so it is not computed: frozen, it
        # rides along while the others train (e.g. more epochs for one head of three)
        losses = {name: head.loss(enc, enc_lens, targets, target_lens)
                  for name, head in self.heads.items() if self.loss_weights[name] != 0}
        if not losses:
            raise ValueError("every head has loss weight 0: nothing to train")
        losses["total"] = sum(self.loss_weights[n] * loss for n, loss in losses.items())
        return losses

    def rescoring_head(self, name: str) -> nn.Module:
        """The head named ``name`` if it can re-rank an N-best list (an attention head,
        with ``sequence_log_probs``); else a ValueError naming it."""
        head = self.heads[name] if name in self.heads else None
        if not hasattr(head, "sequence_log_probs"):
            raise ValueError(f"rescore {name!r}: needs an attention head among {list(self.heads)}")
        return head

    def search_method(self, head: Optional[str] = None, method: Optional[str] = None) -> str:
        """The search :meth:`decode` runs for ``head`` (default: the first): ``method``, else
        the head's first search; a ValueError names an unknown head."""
        name = head or next(iter(self.heads))
        if name not in self.heads:
            raise ValueError(f"model has heads {list(self.heads)}, not {name!r}")
        return method or self.heads[name].search_methods[0]

    @torch.no_grad()
    def decode(self, waves: torch.Tensor, wave_lens: torch.Tensor, head: Optional[str] = None,
               method: Optional[str] = None, warps: Optional[Sequence[float]] = None,
               rescore: Optional[str] = None, rescore_weight: float = 0.5,
               rescore_lm: Optional[nn.Module] = None, rescore_lm_weight: float = 0.5,
               **options) -> List[SearchResult]:
        """Decode with one head (default: the first) and a search method by name.

        ``rescore``: the name of an attention head that re-ranks the search's N-best list
        (:func:`asr.search.rescore.rescore_nbest` with ``rescore_weight``; ask the search
        for ``nbest`` > 1). ``rescore_lm``: a token LM (``asr.neural_lm.LSTMLM``) that
        then re-ranks it by first-pass score + ``rescore_lm_weight`` * LM log-prob
        (:func:`asr.search.rescore.rescore_nbest_lm`; both divide their log-prob by the
        first pass's length normalisation, ``Hypothesis.norm``, as ``attention_beam``'s
        scores are). A ``ctc_weight`` option of the
        ``attention_beam`` search gets the CTC head's log-probabilities on the same encoder
        output (joint CTC/attention decoding); it and the other options only that search
        reads are refused for any other search
        (:func:`asr.search.attention.refuse_beam_only_options`).

        ``warps``: test-time vocal tract length normalisation. The audio is decoded once
        per frequency-warp factor (e.g. 0.88 ... 1.12) and each utterance keeps the warp
        whose best hypothesis scores highest: the maximum-likelihood warp of classic VTLN,
        chosen per utterance, which fits a new voice to the voices the model learnt.
        The n-best lists are merged (one entry per token sequence, its best score).
        """
        name = head or next(iter(self.heads))
        method = self.search_method(name, method)
        refuse_beam_only_options(method, options)
        h = self.heads[name]
        second = self.rescoring_head(rescore) if rescore is not None else None
        if options.get("ctc_weight"):
            ctc = next((m for m in self.heads.values() if isinstance(m, CTCHead)), None)
            if ctc is None:
                raise ValueError(f"ctc_weight needs a CTC head; the model has {list(self.heads)}")

        def run(enc: torch.Tensor, enc_lens: torch.Tensor) -> List[SearchResult]:
            extra = {"ctc_log_probs": ctc(enc)} if options.get("ctc_weight") else {}
            results = h.decode(enc, enc_lens, method, **options, **extra)
            if rescore is not None:
                results = rescore_nbest(second, enc, enc_lens, results, rescore_weight)
            if rescore_lm is not None:
                results = rescore_nbest_lm(rescore_lm, results, rescore_lm_weight)
            return results

        if not warps:
            return run(*self.encode(waves, wave_lens))
        if any(not 0.5 <= float(a) <= 2.0 for a in warps):
            raise ValueError(f"warps must lie in [0.5, 2.0], got {list(warps)}")
        feats, feat_lens = self.normalized_features(waves, wave_lens)  # once for all warps
        per_warp = [run(*self.encoder(warp_features(feats, float(a)), feat_lens)) for a in warps]
        merged = []
        for results in zip(*per_warp):
            pool: Dict[tuple, Hypothesis] = {}
            for hyp in (hyp for r in results for hyp in r.nbest):
                key = tuple(hyp.tokens)
                if key not in pool or hyp.score > pool[key].score:
                    pool[key] = hyp
            # sorted by score, so the first is the best hypothesis of the best-scoring warp
            ranked = sorted(pool.values(), key=lambda hyp: -hyp.score)
            merged.append(SearchResult(ranked[: max(len(r.nbest) for r in results)]))
        return merged
