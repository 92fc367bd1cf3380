"""Unsupervised speaker adaptation by self-training, for closed-vocabulary tasks.

A model trained on a few speakers meets a new voice. Given that voice's unlabelled clips
(and nothing else), :func:`adapt_to_speaker` decodes them with the closed vocabulary,
keeps the clips whose best phrase has a posterior of at least ``confidence`` (a softmax
over the phrases' log-likelihoods), and fine-tunes a copy of the model on those clips with
their hypotheses as labels. Each further round re-labels the clips with the adapted model
and fine-tunes the *source* model again, so a wrong label of an early round is not baked in.

This is test-time adaptation: it uses the test speaker's audio, never its transcripts. The
figures it gives are reported apart from plain held-out-speaker accuracy.
"""
from __future__ import annotations

import copy
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.augment import band_limit
from asr.data import UtteranceDataset, Utterance, collate
from asr.evaluate import decode_rows, summarize, vocab_search
from asr.text import Tokenizer
from asr.train import train_step

log = logging.getLogger(__name__)


@dataclass
class AdaptConfig:
    confidence: float = 0.5  # least posterior of a clip's best phrase to train on it
    rounds: int = 3  # label, fine-tune from the source model; repeat with the new labels
    epochs: int = 3  # passes over the kept clips per round
    lr: float = 5e-4
    batch_size: int = 16  # clips per step
    seed: int = 0


def posterior(nbest_scores: Sequence[float]) -> float:
    """Posterior of the first phrase: softmax over the log-likelihoods of all phrases."""
    scores = torch.tensor(nbest_scores, dtype=torch.float64)
    if not torch.isfinite(scores[0]):
        return 0.0
    return math.exp(float(scores[0] - torch.logsumexp(scores, 0)))


def pseudo_labels(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
                  vocabulary: Sequence[Sequence[int]], head: Optional[str] = None,
                  band_limit_hz: Optional[int] = None) -> List[Tuple[Utterance, str, float]]:
    """Each decodable clip with its closed-vocabulary hypothesis and that hypothesis'
    posterior, ``(utterance, text, posterior)``. References are never read."""
    # decoding validates reference texts: give each clip a placeholder (the first phrase),
    # so unlabelled clips pass and no reference can leak into the labels
    placeholder = tokenizer.decode(list(vocabulary[0]))
    by_id = {u.id: u for u in utts}
    d = decode_rows(model, tokenizer, [replace(u, text=placeholder) for u in utts], head=head,
                    method=vocab_search(model, head), band_limit_hz=band_limit_hz,
                    vocabulary=vocabulary, nbest=len(vocabulary))
    return [(by_id[r["id"]], r["hyp"], posterior([s for _, s in r["nbest"]])) for r in d["rows"]]


def fine_tune(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
              cfg: AdaptConfig, band_limit_hz: Optional[int] = None,
              seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` fine-tuned on ``utts`` (their ``text`` as labels), with the
    gradient clipping the model was trained with."""
    tuned = copy.deepcopy(model)
    sample_rate = model.cfg.sample_rate
    ds = UtteranceDataset(utts, tokenizer.encode, sample_rate, cache_audio=True,
                          transform=lambda w, i: band_limit(w, sample_rate, band_limit_hz))
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=cfg.lr)
    order = random.Random(seed)
    with torch.random.fork_rng():  # dropout and SpecAugment draw from a seeded stream
        torch.manual_seed(seed)
        tuned.train()
        for _ in range(cfg.epochs):
            index = list(range(len(ds)))
            order.shuffle(index)
            batches = [index[i: i + cfg.batch_size] for i in range(0, len(index), cfg.batch_size)]
            for batch in DataLoader(ds, batch_sampler=batches, collate_fn=collate):
                if batch is not None:
                    train_step(tuned, optimizer, batch, model.cfg.train.grad_clip)
    tuned.eval()
    return tuned


def adapt_to_speaker(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
                     vocabulary: Sequence[Sequence[int]], cfg: AdaptConfig = AdaptConfig(),
                     head: Optional[str] = None,
                     band_limit_hz: Optional[int] = None) -> Tuple[torch.nn.Module, List[Dict]]:
    """Self-train ``model`` on one speaker's unlabelled clips.

    Returns the adapted model (``model`` itself when no clip is confident enough) and one
    dict per round: clips kept and their mean posterior.
    """
    if not 0.0 <= cfg.confidence < 1.0:
        raise ValueError(f"adapt confidence must be in [0, 1), got {cfg.confidence}")
    if cfg.rounds < 1 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"adapt rounds, epochs and batch_size must be >= 1, got {cfg}")
    current, report = model, []
    for r in range(cfg.rounds):
        labelled = pseudo_labels(current, tokenizer, utts, vocabulary, head, band_limit_hz)
        kept = [replace(u, text=text) for u, text, p in labelled if p >= cfg.confidence and text]
        report.append({"round": r + 1, "clips": len(labelled), "kept": len(kept),
                       "mean_posterior": sum(p for *_, p in labelled) / max(1, len(labelled))})
        if not kept:
            log.warning("adaptation round %d: no clip reached posterior %.2f; model unchanged",
                        r + 1, cfg.confidence)
            break
        current = fine_tune(model, tokenizer, kept, cfg, band_limit_hz, seed=cfg.seed + r)
    return current, report


def speaker_of(u: Utterance) -> str:
    """The utterance's speaker; utterances without one form a single group."""
    return u.speaker or "<no speaker>"


def evaluate_adapted(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
                     cfg: AdaptConfig = AdaptConfig(), head: Optional[str] = None,
                     method: Optional[str] = None, results_path=None,
                     band_limit_hz: Optional[int] = None, **search_options) -> Dict:
    """Adapt a copy of ``model`` to each speaker's clips, decode that speaker with it, and
    score all speakers together (against the references in ``utts``).

    ``search_options`` must hold the closed ``vocabulary`` (token-id phrases); the rest
    (e.g. ``warps``) apply to the final decoding only, since labelling uses the plain
    closed-vocabulary search. Adds ``adaptation`` (speaker -> per-round report)."""
    vocabulary = search_options.get("vocabulary")
    if not vocabulary:
        raise ValueError("speaker adaptation needs a closed vocabulary: pass vocabulary= "
                         "(token-id phrases, e.g. from the model's cfg.decoding.vocabulary)")
    method = method or vocab_search(model, head)
    groups: Dict[str, List[Utterance]] = defaultdict(list)
    for u in utts:
        groups[speaker_of(u)].append(u)
    rows, compute, audio_seconds, skipped, report = [], 0.0, 0.0, 0, {}
    for spk, group in tqdm(sorted(groups.items()), desc="adapting", leave=False,
                           dynamic_ncols=True):
        adapted, report[spk] = adapt_to_speaker(model, tokenizer, group, vocabulary, cfg, head,
                                                band_limit_hz)
        d = decode_rows(adapted, tokenizer, group, head=head, method=method,
                        band_limit_hz=band_limit_hz, **search_options)
        rows += d["rows"]
        compute += d["compute"]
        audio_seconds += d["audio_seconds"]
        skipped += d["skipped"]
    metrics = summarize(rows, compute, audio_seconds, skipped, results_path)
    metrics["adaptation"] = report
    return metrics
