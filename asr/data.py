"""Manifests, datasets and duration batching, with an explicit bad-input policy.

A manifest is JSON lines, one utterance a line: ``id``, ``audio``, ``duration``,
``sample_rate``, ``text``, optional ``offset``, ``speaker`` and a free ``meta`` dict.

Bad input policy: problems are found *before* training where that is cheap (manifest
fields, empty transcripts, unreadable headers, wrong durations) and again when audio is
decoded. With ``on_error="skip"`` each bad utterance is logged with its file and reason,
collected in :attr:`UtteranceDataset.rejected`, and left out; with ``"raise"`` the first
one stops the run with the same message.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Sampler

from asr.audio import AudioError, audio_info, load_audio

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


@dataclass
class Utterance:
    id: str
    audio: str
    duration: float
    text: str
    sample_rate: int = 16000
    offset: float = 0.0
    speaker: Optional[str] = None
    meta: Dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        if not d["offset"]:
            d.pop("offset")
        return json.dumps(d, ensure_ascii=False)


REQUIRED = ("id", "audio", "duration", "text")


def parse_json_row(line: str, where: str, required: Sequence[str], error: type = ValueError) -> dict:
    """The JSON object on one line of a JSON-lines file, with every ``required`` field;
    ``error`` naming ``where`` (file:line) and what is wrong otherwise."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(d, dict):
        raise error(f"{where}: expected a JSON object with {list(required)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise error(f"{where}: missing field(s) {missing}")
    return d


def parse_manifest_line(line: str, where: str, base: Optional[Path] = None) -> Utterance:
    d = parse_json_row(line, where, REQUIRED, ManifestError)
    known = {"id", "audio", "duration", "text", "sample_rate", "offset", "speaker", "meta"}
    extra = set(d) - known
    meta = dict(d.get("meta") or {})
    for k in extra:  # keep unknown fields rather than lose them
        meta[k] = d[k]
    audio = str(d["audio"])
    if base is not None and not Path(audio).is_absolute():
        audio = str(base / audio)
    try:
        duration = float(d["duration"])
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: field 'duration' is not a number: {d['duration']!r}") from None
    if not isinstance(d["text"], str):
        raise ManifestError(f"{where}: field 'text' must be a string")
    return Utterance(id=str(d["id"]), audio=audio, duration=duration, text=d["text"],
                     sample_rate=int(d.get("sample_rate") or 16000),
                     offset=float(d.get("offset") or 0.0), speaker=d.get("speaker"), meta=meta)


def read_manifest(path: str | Path) -> List[Utterance]:
    """Read a JSON-lines manifest. Relative audio paths are relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    utts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            u = parse_manifest_line(line, f"{path}:{n}", base=path.parent)
            if u.id in seen:
                raise ManifestError(f"{path}:{n}: duplicate id {u.id!r}")
            seen.add(u.id)
            utts.append(u)
    return utts


def write_manifest(utts: Sequence[Utterance], path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a killed run never leaves half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utts:
            f.write(u.to_json() + "\n")
    tmp.replace(path)
    return path


@dataclass
class Rejected:
    id: str
    audio: str
    reason: str


def validate(utts: Sequence[Utterance], normalize: Callable[[str], str],
             encode: Callable[[str], List[int]], max_duration: float = math.inf,
             on_error: str = "skip", check_audio: bool = True
             ) -> Tuple[List[Utterance], List[Rejected]]:
    """Check transcripts and audio headers up front; return (kept, rejected).

    Texts are normalised here (the same normaliser is used for scoring).
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    kept, rejected = [], []
    for u in utts:
        reason = None
        text = normalize(u.text)
        if not text:
            reason = f"empty transcript after normalisation (raw: {u.text!r})"
        else:
            try:
                encode(text)
            except ValueError as exc:
                reason = str(exc)
        if reason is None and u.duration > max_duration:
            reason = f"longer than max_duration ({u.duration:.1f} s > {max_duration} s)"
        if reason is None and check_audio:
            try:
                dur, _ = audio_info(u.audio)
                if dur + 0.05 < u.offset + u.duration * 0.5:
                    reason = f"audio is {dur:.2f} s but the manifest says {u.duration:.2f} s"
            except AudioError as exc:
                reason = exc.reason
        if reason is not None:
            if on_error == "raise":
                raise ManifestError(f"{u.audio} (id {u.id}): {reason}")
            log.warning("skipping %s (id %s): %s", u.audio, u.id, reason)
            rejected.append(Rejected(u.id, u.audio, reason))
            continue
        kept.append(Utterance(**{**asdict(u), "text": text}))
    return kept, rejected


def check_rejected_share(manifest: str | Path, total: int, rejected: Sequence[Rejected],
                         max_share: float, floor: int = 20) -> None:
    """Raise :class:`ManifestError` when ``rejected`` is more than ``max_share`` of the
    ``total`` utterances of ``manifest`` and more than ``floor`` of them (a few bad files in
    a small corpus are normal), naming the manifest, the counts and the commonest reasons,
    each with an example file."""
    if len(rejected) <= floor or len(rejected) <= max_share * total:
        return
    by_reason: Dict[str, List[Rejected]] = {}
    for r in rejected:
        # "no such file" and the like differ only by the file named in them
        by_reason.setdefault(r.reason.replace(r.audio, "FILE"), []).append(r)
    common = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:3]
    reasons = "; ".join(f"{len(rs)} x {reason} (e.g. {rs[0].audio})" for reason, rs in common)
    raise ManifestError(f"{manifest}: {len(rejected)} of {total} utterances rejected "
                        f"({len(rejected) / max(total, 1):.0%}, more than data.max_rejected_share "
                        f"{max_share:g}): {reasons}")


def readable_audio(utts: Sequence[Utterance]) -> Tuple[List[Utterance], List[Rejected]]:
    """(the utterances whose audio header reads, the others as :class:`Rejected`), each
    of those logged with its file and reason. Cheap: the header only (:func:`audio_info`),
    for callers that do not decode the audio but must leave out what could not be."""
    kept, rejected = [], []
    for u in utts:
        try:
            audio_info(u.audio)
        except AudioError as exc:
            log.warning("skipping %s (id %s): %s", u.audio, u.id, exc.reason)
            rejected.append(Rejected(u.id, u.audio, exc.reason))
            continue
        kept.append(u)
    return kept, rejected


class UtteranceDataset(Dataset):
    """Decodes audio on demand (optionally caching it) and encodes the transcript.

    ``__getitem__`` returns ``(id, wave (N,), token ids (U,))`` or ``None`` for audio that
    fails to decode under the skip policy (the collate function drops Nones). A failure is
    remembered: the utterance is listed once in :attr:`rejected` and not read again.
    """

    def __init__(self, utts: Sequence[Utterance], encode: Callable[[str], List[int]],
                 sample_rate: int = 16000, on_error: str = "skip", cache_audio: bool = False,
                 transform: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None) -> None:
        self.utts = list(utts)
        self.encode = encode
        self.sample_rate = sample_rate
        self.on_error = on_error
        self.cache: Optional[Dict[int, torch.Tensor]] = {} if cache_audio else None
        self.transform = transform
        self.rejected: List[Rejected] = []
        self._failed: set = set()  # indices whose audio failed to load

    def restore_rejected(self, rows: Sequence[Dict]) -> None:
        """Mark the utterances of earlier ``Rejected`` rows (as dicts) as failed, so a
        resumed run neither reads nor lists them again."""
        index = {(u.id, u.audio): i for i, u in enumerate(self.utts)}
        for row in rows:
            i = index.get((row["id"], row["audio"]))
            if i is not None and i not in self._failed:
                self._failed.add(i)
                self.rejected.append(Rejected(**row))

    def __len__(self) -> int:
        return len(self.utts)

    def load(self, i: int) -> Optional[torch.Tensor]:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        if i in self._failed:
            return None
        u = self.utts[i]
        try:
            wave = load_audio(u.audio, self.sample_rate, offset=u.offset,
                              duration=u.duration if u.offset else None)
        except AudioError as exc:
            if self.on_error == "raise":
                raise
            log.warning("skipping %s (id %s): %s", u.audio, u.id, exc.reason)
            self.rejected.append(Rejected(u.id, u.audio, exc.reason))
            self._failed.add(i)
            wave = None
        if self.cache is not None and wave is not None:
            self.cache[i] = wave
        return wave

    def __getitem__(self, i: int):
        wave = self.load(i)
        if wave is None:
            return None
        if self.transform is not None:
            wave = self.transform(wave, i)
        return self.utts[i].id, wave, torch.tensor(self.encode(self.utts[i].text), dtype=torch.long)


@dataclass
class Batch:
    ids: List[str]
    waves: torch.Tensor  # (B, N) zero padded
    wave_lens: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, U) zero padded
    target_lens: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        """The batch with its tensors on ``device`` (``non_blocking`` overlaps the copy
        with compute when the batch is in pinned memory)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)
        return Batch(self.ids, move(self.waves), move(self.wave_lens), move(self.targets),
                     move(self.target_lens))

    def pin_memory(self) -> "Batch":
        """Page-locked copies, for fast host-to-GPU transfer (DataLoader ``pin_memory``)."""
        return Batch(self.ids, self.waves.pin_memory(), self.wave_lens.pin_memory(),
                     self.targets.pin_memory(), self.target_lens.pin_memory())


def collate(items: Sequence) -> Optional[Batch]:
    items = [it for it in items if it is not None]
    if not items:
        return None
    ids, waves, targets = zip(*items)
    wave_lens = torch.tensor([w.numel() for w in waves])
    target_lens = torch.tensor([t.numel() for t in targets])
    return Batch(
        list(ids),
        torch.nn.utils.rnn.pad_sequence(list(waves), batch_first=True),
        wave_lens,
        torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True),
        target_lens,
    )


class DurationBatchSampler(Sampler[List[int]]):
    """Batches of similar-length utterances whose padded total stays under a budget.

    Utterances are sorted by duration, cut into batches with
    ``len(batch) * longest <= max_seconds``, and the batch order is shuffled with a
    per-epoch seed, so an epoch's order is reproducible (needed to resume mid-epoch).
    """

    def __init__(self, durations: Sequence[float], max_seconds: float, shuffle: bool = True,
                 seed: int = 0, jitter: float = 0.1) -> None:
        self.durations = list(durations)
        self.max_seconds = max_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.jitter = jitter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: Optional[int] = None) -> List[List[int]]:
        """The batches of ``epoch`` (default: the one set by :meth:`set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        rng = random.Random(self.seed * 1000003 + epoch)
        keys = [d * (1 + rng.uniform(-self.jitter, self.jitter)) if self.shuffle else d
                for d in self.durations]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        out, cur, longest = [], [], 0.0
        for i in order:
            longest_if = max(longest, self.durations[i])
            if cur and longest_if * (len(cur) + 1) > self.max_seconds:
                out.append(cur)
                cur, longest_if = [], self.durations[i]
            cur.append(i)
            longest = longest_if
        if cur:
            out.append(cur)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())

    def batches_per_epoch(self, epochs: int) -> List[int]:
        """Number of batches in each of epochs 0 .. epochs - 1: the jittered sort cuts a
        different number of batches each epoch, so one epoch's count times the epochs is not
        the run's total."""
        return [len(self.batches(e)) for e in range(epochs)]
