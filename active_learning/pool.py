"""Scoring a pool of unlabeled clips: batches of similar length, scores written one JSON
line per clip as each batch finishes (nothing held for the whole pool), progress on tqdm;
reading a scores file back, and the chosen clips as the labeling queue takes them."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import IO, Dict, Iterator, List, Sequence, Tuple

from torch.utils.data import DataLoader
from tqdm import tqdm

from active_learning.scorers import Scorer
from asr.data import DurationBatchSampler, Utterance, UtteranceDataset, collate, parse_json_row, readable_audio

log = logging.getLogger(__name__)


def _no_tokens(text: str) -> List[int]:
    return []  # pool clips are unlabeled; any transcript in the manifest is ignored


def score_batches(scorer: Scorer, utts: Sequence[Utterance], sample_rate: int,
                  batch_seconds: float) -> Iterator[List[Dict]]:
    """Yield, batch by batch, the scorer's rows (``{"id", "score"}``, and ``"hypothesis"``
    from scorers that decode) of the clips whose audio loads (the others are logged with
    their path and skipped)."""
    if not scorer.needs_audio:
        # nothing is decoded, but clips whose audio cannot be read are skipped all the same
        # (their header is read), so every strategy draws from the same pool
        utts, _ = readable_audio(utts)
        for start in range(0, len(utts), 256):
            yield scorer.rows([u.id for u in utts[start:start + 256]], None, None)
        return
    ds = UtteranceDataset(utts, _no_tokens, sample_rate, on_error="skip")
    sampler = DurationBatchSampler([u.duration for u in utts], batch_seconds, shuffle=False)
    for batch in DataLoader(ds, batch_sampler=sampler, collate_fn=collate):
        if batch is None:
            continue
        yield scorer.rows(batch.ids, batch.waves, batch.wave_lens)


def score_pool(scorer: Scorer, utts: Sequence[Utterance], out: IO[str], sample_rate: int = 16000,
               batch_seconds: float = 30.0, progress: bool = True) -> Dict[str, int]:
    """Score ``utts`` into ``out`` (one JSON line per clip, flushed per batch); returns
    ``{"scored", "skipped"}`` counts."""
    scored = 0
    with tqdm(total=len(utts), desc=f"scoring ({type(scorer).__name__})", unit="clip",
              disable=not progress, dynamic_ncols=True) as bar:
        for rows in score_batches(scorer, utts, sample_rate, batch_seconds):
            out.write("".join(json.dumps(r) + "\n" for r in rows))
            out.flush()
            scored += len(rows)
            bar.update(len(rows))
    return {"scored": scored, "skipped": len(utts) - scored}


def score_pool_file(scorer: Scorer, utts: Sequence[Utterance], path: str | Path, sample_rate: int = 16000,
                    batch_seconds: float = 30.0, progress: bool = True) -> Dict[str, int]:
    """:func:`score_pool` into the file ``path``: written as ``path.tmp`` and renamed once
    every clip is scored, so a run that fails or is killed leaves an earlier ``path`` as it
    was (and its rows so far in the ``.tmp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        counts = score_pool(scorer, utts, out, sample_rate, batch_seconds, progress)
    tmp.replace(path)
    return counts


def read_scores(path: str | Path) -> Dict[str, float]:
    """A scores file (JSON lines with ``id`` and ``score``) -> {id: score}. A line that is
    not such a row raises ValueError naming the file and line."""
    return {uid: row["score"] for uid, row in read_score_rows(path).items()}


def read_score_rows(path: str | Path) -> Dict[str, Dict]:
    """A scores file -> {id: row}, each row with ``score`` (a float) and, where the scorer
    decoded, ``hypothesis`` (the best hypothesis's text). Errors as :func:`read_scores`."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = parse_score_row(line, f"{path}:{n}")
                rows[row["id"]] = row
    return rows


def selected_for_labeling(chosen: Sequence[Tuple[Utterance, float]], rows: Dict[str, Dict]) -> List[Utterance]:
    """The clips ``select_clips`` chose, as the labeling queue takes them: ``meta.al_score``
    (the queue's priority) and, where the clip's scores row has one, ``meta.hypothesis``
    (the text the labeler starts from)."""
    out = []
    for u, score in chosen:
        meta = {**u.meta, "al_score": score}
        if "hypothesis" in rows.get(u.id, {}):
            meta["hypothesis"] = rows[u.id]["hypothesis"]
        out.append(dataclasses.replace(u, meta=meta))
    return out


def parse_score_row(line: str, where: str) -> Dict:
    """One line of a scores file -> the row with ``id`` a string and ``score`` a finite
    float; ValueError naming ``where`` (file:line) otherwise."""
    row = parse_json_row(line, where, ("id", "score"))
    try:
        score = float(row["score"])
    except (TypeError, ValueError):
        score = math.nan
    if isinstance(row["score"], bool) or not math.isfinite(score):
        raise ValueError(f"{where}: field 'score' must be a finite number, got {row['score']!r}")
    if not isinstance(row.get("hypothesis", ""), str):
        raise ValueError(f"{where}: field 'hypothesis' must be text, got {row['hypothesis']!r}")
    return {**row, "id": str(row["id"]), "score": score}
