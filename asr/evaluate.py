"""Evaluation: WER/CER with jiwer, per-utterance results and real-time factor."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import jiwer
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.augment import band_limit
from asr.data import DurationBatchSampler, Utterance, UtteranceDataset, collate, validate
from asr.text import Tokenizer, normalize_text


def score(refs: Sequence[str], hyps: Sequence[str]) -> Dict[str, float]:
    """Corpus WER and CER (jiwer) over normalised texts; an empty hypothesis is allowed."""
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        raise ValueError("no non-empty references to score")
    r, h = zip(*pairs)
    return {"wer": float(jiwer.wer(list(r), list(h))), "cer": float(jiwer.cer(list(r), list(h)))}


def vocab_search(model: torch.nn.Module, head: Optional[str] = None) -> str:
    """Name of the closed-vocabulary search of ``head`` (default: the model's first)."""
    name = head or next(iter(model.heads))
    found = [m for m in model.heads[name].search_methods if m.endswith("_vocab")]
    if not found:  # the attention head ranks no closed vocabulary
        raise ValueError(f"head {name!r} has no closed-vocabulary search (its searches: "
                         f"{model.heads[name].search_methods}); decode open with --plain or --search")
    return found[0]


def decode_rows(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
                head: Optional[str] = None, method: Optional[str] = None,
                batch_seconds: float = 120.0, on_error: str = "skip",
                band_limit_hz: Optional[int] = None, **search_options) -> Dict:
    """Decode ``utts``; returns ``rows`` (one dict per decoded utterance: id, ref, hyp,
    score, times, audio, nbest as [text, score] pairs), ``compute`` and ``audio_seconds``
    (decoding time and audio duration), ``rejected`` (a :class:`~asr.data.Rejected` for each
    utterance left out: by the up-front checks or because its audio failed to decode) and
    ``skipped`` (their number)."""
    sample_rate = model.cfg.sample_rate
    kept, rejected = validate(utts, normalize_text, tokenizer.encode, on_error=on_error)
    ds = UtteranceDataset(kept, tokenizer.encode, sample_rate, on_error,
                          transform=lambda w, i: band_limit(w, sample_rate, band_limit_hz))
    loader = DataLoader(ds, batch_sampler=DurationBatchSampler(
        [u.duration for u in kept], batch_seconds, shuffle=False), collate_fn=collate)
    by_id = {u.id: u for u in kept}
    rows, compute, audio_seconds = [], 0.0, 0.0
    model.eval()
    device = next(model.parameters()).device  # the batches go where the model is
    for batch in tqdm(loader, desc="decoding", leave=False, dynamic_ncols=True):
        if batch is None:
            continue
        t0 = time.perf_counter()
        batch = batch.to(device)
        results = model.decode(batch.waves, batch.wave_lens, head=head, method=method,
                               **search_options)
        compute += time.perf_counter() - t0
        audio_seconds += float(batch.wave_lens.sum()) / sample_rate
        for uid, res in zip(batch.ids, results):
            hyp = res.best
            rows.append({"id": uid, "ref": by_id[uid].text, "hyp": tokenizer.decode(hyp.tokens),
                         "score": hyp.score, "times": hyp.times, "audio": by_id[uid].audio,
                         "nbest": [[tokenizer.decode(h.tokens), h.score] for h in res.nbest]})
    rejected = rejected + ds.rejected
    return {"rows": rows, "compute": compute, "audio_seconds": audio_seconds,
            "rejected": rejected, "skipped": len(rejected)}


def summarize(rows: Sequence[Dict], compute: float, audio_seconds: float, skipped: int,
              results_path: Optional[Path] = None) -> Dict:
    """Metrics of decoded rows (see :func:`decode_rows`); writes them to ``results_path``."""
    if not rows:
        raise RuntimeError(f"nothing could be decoded ({skipped} utterances rejected)")
    metrics = score([r["ref"] for r in rows], [r["hyp"] for r in rows])
    for r in rows:
        r["correct"] = normalize_text(r["ref"]) == normalize_text(r["hyp"])
    metrics.update(utterances=len(rows), rtf=compute / max(audio_seconds, 1e-9), skipped=skipped)
    if all(len(r["ref"].split()) == 1 for r in rows):
        metrics["accuracy"] = sum(r["correct"] for r in rows) / len(rows)
    if results_path is not None:
        results_path = Path(results_path)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with open(results_path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return metrics


def evaluate_model(model: torch.nn.Module, tokenizer: Tokenizer, utts: Sequence[Utterance],
                   head: Optional[str] = None, method: Optional[str] = None,
                   batch_seconds: float = 120.0, results_path: Optional[Path] = None,
                   on_error: str = "skip", band_limit_hz: Optional[int] = None,
                   **search_options) -> Dict:
    """Decode ``utts`` and score them.

    Returns a dict with ``wer``, ``cer``, ``utterances``, ``rtf`` (decoding compute time
    over audio duration, audio reading excluded), ``skipped``, and ``accuracy`` when every
    reference is a single word. Per-utterance rows go to ``results_path`` (JSON lines).
    """
    d = decode_rows(model, tokenizer, utts, head, method, batch_seconds, on_error,
                    band_limit_hz, **search_options)
    return summarize(d["rows"], d["compute"], d["audio_seconds"], d["skipped"], results_path)
