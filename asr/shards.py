"""Tar shards in the WebDataset layout: writing them, and a streaming reader for training.

A shard is a plain tar of ``{key}.json`` (id, text, duration, speaker, sample rate, meta)
and ``{key}.flac`` or ``{key}.wav`` (the audio bytes), consecutive members sharing a key,
which is what ``webdataset.WebDataset`` reads. ``shards.json`` beside them lists each
shard's name, utterance count and seconds, so a reader knows the sizes without a scan.

Written and read with the standard library's ``tarfile`` rather than the ``webdataset``
package: the trainer needs an exact mid-epoch resume (same batches as an uninterrupted
run), which needs the reader's position and shuffle state in the checkpoint, and
webdataset's pipeline keeps that state inside its iterators (its maintainer: "WebDataset
can't really do this for you", webdataset/webdataset#271). The files stay readable by it.

Reading (:class:`ShardPlan`): an epoch visits the shards in an order seeded by (seed,
epoch); utterance n of that stream belongs to rank n % W (:mod:`asr.distributed`), so the
ranks split every epoch exactly, without overlap. Each rank streams its utterances into a
bounded buffer (``buffer_size`` utterances and ``buffer_mb`` of held audio bytes) and
draws batches from it: a random utterance and its neighbours in duration, as many as fit
``max_batch_seconds`` of padded audio (what :class:`~asr.data.DurationBatchSampler` does
for a manifest). Every draw comes from a generator seeded by (seed, epoch, rank), and the
plan depends only on the shards' metadata, so an epoch's batches are a function of (seed,
epoch, rank, W): a resume at batch k replays the plan from the metadata alone (tar headers
and JSON, seeking over the audio) and reads audio again from batch k on.
"""
from __future__ import annotations

import bisect
import io
import json
import logging
import math
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from asr.audio import AudioError, audio_info, checked_mono, load_audio, resample
from asr.data import Rejected, Utterance

log = logging.getLogger(__name__)

INDEX = "shards.json"
AUDIO_EXTS = ("flac", "wav")


class ShardError(ValueError):
    """A shard folder or index that cannot be used; the message names the file."""


# ------------------------------------------------------------------------------- writing
def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def _audio_bytes(u: Utterance) -> Tuple[bytes, str]:
    """The utterance's audio as stored in a shard: the file itself when it is a whole
    FLAC or WAV file, else its segment encoded as 16-bit FLAC. Raises AudioError."""
    path = Path(u.audio)
    ext = path.suffix.lower().lstrip(".")
    if ext in AUDIO_EXTS and not u.offset:
        audio_info(path)  # a readable header, or AudioError naming the file
        return path.read_bytes(), ext
    _, sr = audio_info(path)
    wave = load_audio(path, None, offset=u.offset, duration=u.duration)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave.numpy(), -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), "flac"


def write_shards(utts: Sequence[Utterance], out_dir: str | Path, shard_size: Optional[int] = None,
                 shard_mb: Optional[float] = None, shuffle_seed: Optional[int] = 0,
                 progress: bool = True) -> Dict:
    """Write ``utts`` as tar shards ``shard-000000.tar`` ... and ``shards.json`` in ``out_dir``.

    A shard closes after ``shard_size`` utterances or once it holds ``shard_mb`` megabytes
    (give one). The utterances are shuffled with ``shuffle_seed`` first (None: kept in
    order), since a reader's bounded shuffle buffer only mixes nearby ones. Keys are the
    utterances' positions (``000000042``); the original id is in the JSON. Unreadable
    audio is logged, left out, and listed in the index's ``rejected``. Returns the index.
    """
    if (shard_size is None) == (shard_mb is None):
        raise ValueError("give one of shard_size (utterances) or shard_mb (megabytes)")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if shard_mb is not None and shard_mb <= 0:
        raise ValueError(f"shard_mb must be > 0, got {shard_mb}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")) or (out / INDEX).exists():
        raise ShardError(f"{out}: already holds shards; write to an empty folder")
    order = list(utts)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    shards: List[Dict] = []
    rejected: List[Rejected] = []
    tar, tmp, count, nbytes, seconds = None, None, 0, 0, 0.0

    def close() -> None:
        nonlocal tar
        tar.close()
        name = f"shard-{len(shards):06d}.tar"
        tmp.replace(out / name)
        shards.append({"name": name, "utterances": count, "seconds": round(seconds, 3)})
        tar = None

    for n, u in enumerate(tqdm(order, desc="shards", unit="utt", disable=not progress)):
        try:
            data, ext = _audio_bytes(u)
        except AudioError as exc:
            log.warning("skipping %s (id %s): %s", u.audio, u.id, exc.reason)
            rejected.append(Rejected(u.id, u.audio, exc.reason))
            continue
        if tar is None:
            tmp = out / f"shard-{len(shards):06d}.tar.tmp"
            tar, count, nbytes, seconds = tarfile.open(tmp, "w"), 0, 0, 0.0
        key = f"{n:09d}"
        meta = {"id": u.id, "text": u.text, "duration": u.duration, "speaker": u.speaker,
                "sample_rate": u.sample_rate, "meta": u.meta}
        _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())
        _tar_add(tar, f"{key}.{ext}", data)
        count, nbytes, seconds = count + 1, nbytes + len(data), seconds + u.duration
        if (shard_size and count >= shard_size) or (shard_mb and nbytes >= shard_mb * 1e6):
            close()
    if tar is not None:
        close()
    index = {"format": "webdataset", "shards": shards,
             "utterances": sum(s["utterances"] for s in shards),
             "seconds": round(sum(s["seconds"] for s in shards), 3),
             "rejected": [r.__dict__ for r in rejected]}
    tmp_index = out / (INDEX + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1))
    tmp_index.replace(out / INDEX)
    return index


def read_index(shard_dir: str | Path) -> Dict:
    """``shards.json`` of a shard folder, checked: every listed shard exists."""
    path = Path(shard_dir) / INDEX
    if not path.is_file():
        raise ShardError(f"{path}: shard index not found (write shards with `python -m asr shard`)")
    try:
        index = json.loads(path.read_text())
        shards = index["shards"]
        for s in shards:
            s["name"], s["utterances"], s["seconds"] = str(s["name"]), int(s["utterances"]), float(s["seconds"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"{path}: not a shard index ({type(exc).__name__}: {exc})") from None
    missing = [s["name"] for s in shards if not (path.parent / s["name"]).is_file()]
    if missing:
        raise ShardError(f"{path}: lists shard(s) that are missing: {missing[:5]}")
    if not shards:
        raise ShardError(f"{path}: lists no shards")
    return index


# ------------------------------------------------------------------------------- reading
@dataclass(eq=False)
class Entry:
    """One utterance of a shard: its metadata, where its audio is, and (while streamed)
    the audio bytes themselves."""

    uid: int  # position in the shard set (shards in index order), seeds its augmentation
    shard: str  # path of the tar
    key: str
    id: str
    text: str  # normalised
    duration: float
    ext: str
    offset: int  # of the audio bytes in the tar
    size: int
    data: Optional[bytes] = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}.{self.ext}"


def _members(path: Path) -> Iterator[Tuple[str, Dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {extension: member}, tar) for each group of consecutive members sharing a key.
    A tar that breaks off is logged with its name and ends there."""
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        log.error("skipping shard %s: cannot open it as a tar (%s)", path, exc)
        return
    with tar:
        key, group = None, {}
        while True:
            try:
                m = tar.next()
            except (tarfile.TarError, OSError) as exc:
                log.error("shard %s breaks off after key %s (%s); skipping the rest of it",
                          path, key, exc)
                break
            if m is None:
                break
            if not m.isfile():
                continue
            k, _, ext = m.name.partition(".")
            if k != key:
                if group:
                    yield key, group, tar
                key, group = k, {}
            group[ext] = m
        if group:
            yield key, group, tar
        tar.members = []  # the headers of a shard are not kept


def read_bytes(shard: str, offset: int, size: int) -> bytes:
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise AudioError(shard, f"truncated: {size} bytes expected at offset {offset}, got {len(data)}")
    return data


def decode(data: bytes, sample_rate: int, where: str) -> torch.Tensor:
    """Audio bytes -> (N,) float32 mono at ``sample_rate``; AudioError names ``where``."""
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types
        raise AudioError(where, f"cannot decode audio ({exc})") from None
    return resample(checked_mono(wave, where), sr, sample_rate)


class ShardPlan:
    """The batches of one rank's share of an epoch, as lists of :class:`Entry` (with their
    audio bytes), streamed from the shards with a bounded buffer (see the module doc).

    ``normalize``/``encode`` check transcripts as :func:`asr.data.validate` does; bad
    ones, and utterances longer than ``max_duration``, are logged and collected in
    :attr:`rejected`. Iterating yields epoch :attr:`epoch` from batch :attr:`start_batch`
    (set by :meth:`set_epoch`); batches before it are planned from metadata only.
    """

    def __init__(self, shard_dir: str | Path, max_batch_seconds: float, seed: int = 0,
                 rank: int = 0, world_size: int = 1, buffer_size: int = 2000,
                 buffer_mb: float = 256.0, max_duration: float = math.inf,
                 normalize: Callable[[str], str] = lambda s: s,
                 encode: Optional[Callable[[str], List[int]]] = None, shuffle: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if buffer_size < 1 or buffer_mb <= 0:
            raise ValueError(f"the shuffle buffer needs buffer_size >= 1 and buffer_mb > 0, "
                             f"got {buffer_size} and {buffer_mb}")
        self.dir = Path(shard_dir)
        self.index = read_index(self.dir)
        self.max_batch_seconds, self.seed = max_batch_seconds, seed
        self.rank, self.world_size = rank, world_size
        self.buffer_size, self.buffer_bytes = buffer_size, int(buffer_mb * 1e6)
        self.max_duration, self.normalize, self.encode = max_duration, normalize, encode
        self.shuffle = shuffle
        self.epoch, self.start_batch = 0, 0
        self.rejected: List[Rejected] = []
        self._rejected_seen: set = set()
        self.peak_held_bytes = 0  # the most audio bytes the buffer held (for the memory bound)
        starts = np.cumsum([0] + [s["utterances"] for s in self.index["shards"]])
        self._first_uid = {s["name"]: int(starts[i]) for i, s in enumerate(self.index["shards"])}

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Plan epoch ``epoch``; iteration starts at this rank's batch ``start_batch``."""
        self.epoch, self.start_batch = epoch, start_batch

    def shard_order(self, epoch: int) -> List[str]:
        names = [s["name"] for s in self.index["shards"]]
        if self.shuffle:
            random.Random(self.seed * 1000003 + epoch).shuffle(names)
        return names

    def _reject(self, id: str, where: str, reason: str) -> None:
        if (id, where) not in self._rejected_seen:
            self._rejected_seen.add((id, where))
            log.warning("skipping %s (id %s): %s", where, id, reason)
            self.rejected.append(Rejected(id, where, reason))

    def entries(self, epoch: int, lazy: Callable[[], bool] = lambda: False) -> Iterator[Entry]:
        """This rank's utterances of ``epoch`` in stream order; their audio bytes are read
        unless ``lazy()`` is true when they are reached."""
        n = -1
        for name in self.shard_order(epoch):
            path = self.dir / name
            for pos, (key, group, tar) in enumerate(_members(path)):
                audio = [e for e in AUDIO_EXTS if e in group]
                if "json" not in group or not audio:
                    self._reject(key, f"{path}:{key}", f"needs {key}.json and {key}.flac or "
                                 f".wav, found {sorted(group)}")
                    continue
                n += 1
                if n % self.world_size != self.rank:
                    continue
                try:
                    meta = json.loads(tar.extractfile(group["json"]).read())
                    text, duration = str(meta["text"]), float(meta["duration"])
                except (ValueError, KeyError, TypeError, tarfile.TarError, OSError) as exc:
                    self._reject(key, f"{path}:{key}.json", f"bad metadata ({type(exc).__name__}: {exc})")
                    continue
                uid = self._first_uid[name] + pos
                m = group[audio[0]]
                e = Entry(uid, str(path), key, str(meta.get("id", key)), self.normalize(text),
                          duration, audio[0], m.offset_data, m.size)
                reason = self._check(e)
                if reason:
                    self._reject(e.id, e.where, reason)
                    continue
                if not lazy():
                    try:
                        e.data = tar.extractfile(m).read()
                    except (tarfile.TarError, OSError) as exc:
                        self._reject(e.id, e.where, f"cannot read the audio ({exc})")
                        continue
                yield e

    def _check(self, e: Entry) -> Optional[str]:
        if not e.text:
            return "empty transcript after normalisation"
        if self.encode is not None:
            try:
                self.encode(e.text)
            except ValueError as exc:
                return str(exc)
        if e.duration > self.max_duration:
            return f"longer than max_duration ({e.duration:.1f} s > {self.max_duration} s)"
        return None

    def _draw(self, buffer: List[Tuple[float, int, Entry]], rng: random.Random) -> List[Entry]:
        """Take a batch out of the duration-sorted buffer: a random utterance, then its
        longer neighbours, then its shorter ones, while the padded total fits."""
        lo = hi = rng.randrange(len(buffer))
        while hi + 1 < len(buffer) and (hi - lo + 2) * buffer[hi + 1][0] <= self.max_batch_seconds:
            hi += 1
        while lo > 0 and (hi - lo + 2) * buffer[hi][0] <= self.max_batch_seconds:
            lo -= 1
        batch = [e for _, _, e in buffer[lo:hi + 1]]
        del buffer[lo:hi + 1]
        return batch

    def _plan(self, epoch: int, lazy_until: float) -> Iterator[List[Entry]]:
        """Every batch of this rank's share of ``epoch``; audio bytes are read only for
        batches from number ``lazy_until`` on (and the utterances still buffered then)."""
        rng = random.Random((self.seed * 1000003 + epoch) * 1009 + self.rank)
        buffer: List[Tuple[float, int, Entry]] = []
        held, k = 0, 0  # audio bytes in the buffer (by size, so a lazy replay plans the same)
        for e in self.entries(epoch, lazy=lambda: k < lazy_until):
            bisect.insort(buffer, (e.duration, e.uid, e), key=lambda t: t[:2])
            held += e.size
            self.peak_held_bytes = max(self.peak_held_bytes, held)
            while buffer and (len(buffer) >= self.buffer_size or held > self.buffer_bytes):
                batch = self._draw(buffer, rng)
                held -= sum(b.size for b in batch)
                k += 1
                yield batch
        while buffer:
            yield self._draw(buffer, rng)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[List[Entry]]:
        """This rank's batches of ``epoch`` from ``start_batch`` on (the ones before it are
        planned from the metadata and skipped)."""
        for k, batch in enumerate(self._plan(epoch, start_batch)):
            if k >= start_batch:
                yield batch

    def __iter__(self) -> Iterator[List[Entry]]:
        return self.batches(self.epoch, self.start_batch)

    def count_batches(self, epoch: int = 0) -> int:
        """This rank's batches in ``epoch``, planned from the metadata alone."""
        return sum(1 for _ in self._plan(epoch, math.inf))


class ShardDataset(Dataset):
    """Decodes a :class:`ShardPlan` entry: ``dataset[entry]`` is ``(id, wave (N,), token
    ids (U,))``, or None for audio that fails to decode (logged with the shard and key,
    listed in :attr:`rejected`); a DataLoader with ``batch_sampler=plan`` and
    :func:`asr.data.collate` gives training batches (worker processes decode in parallel)."""

    def __init__(self, encode: Callable[[str], List[int]], sample_rate: int = 16000,
                 on_error: str = "skip",
                 transform: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None) -> None:
        self.encode, self.sample_rate, self.on_error = encode, sample_rate, on_error
        self.transform = transform
        self.rejected: List[Rejected] = []
        self._failed: set = set()

    def restore_rejected(self, rows: Sequence[Dict]) -> None:
        for row in rows:
            if row["audio"] not in self._failed:
                self._failed.add(row["audio"])
                self.rejected.append(Rejected(**row))

    def load(self, e: Entry) -> Optional[torch.Tensor]:
        if e.where in self._failed:
            return None
        try:
            data = e.data if e.data is not None else read_bytes(e.shard, e.offset, e.size)
            return decode(data, self.sample_rate, e.where)
        except AudioError as exc:
            if self.on_error == "raise":
                raise
            log.warning("skipping %s (id %s): %s", e.where, e.id, exc.reason)
            self.rejected.append(Rejected(e.id, e.where, exc.reason))
            self._failed.add(e.where)
            return None

    def __getitem__(self, e: Entry):
        wave = self.load(e)
        if wave is None:
            return None
        if self.transform is not None:
            wave = self.transform(wave, e.uid)
        return e.id, wave, torch.tensor(self.encode(e.text), dtype=torch.long)


def iter_metadata(shard_dir: str | Path) -> Iterator[Dict]:
    """Every utterance's JSON metadata, in index order (audio skipped: tar headers only)."""
    d = Path(shard_dir)
    for s in read_index(d)["shards"]:
        for key, group, tar in _members(d / s["name"]):
            if "json" in group:
                try:
                    yield json.loads(tar.extractfile(group["json"]).read())
                except (ValueError, tarfile.TarError, OSError):
                    continue  # the plan reports it


class ShardStream:
    """Collated batches of a :class:`ShardPlan` with a resumable position: after ``k``
    batches, :meth:`state_dict` restores (:meth:`load_state_dict`) a stream that yields
    exactly the batches an uninterrupted one would have yielded next."""

    def __init__(self, plan: ShardPlan, dataset: ShardDataset) -> None:
        from asr.data import collate

        self.plan, self.dataset, self.collate = plan, dataset, collate
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> Dict:
        p = self.plan
        return {"epoch": self.epoch, "batch": self.position, "seed": p.seed, "rank": p.rank,
                "world_size": p.world_size}

    def load_state_dict(self, state: Dict) -> None:
        p = self.plan
        for k in ("seed", "rank", "world_size"):
            if state[k] != getattr(p, k):
                raise ValueError(f"shard reader state is for {k}={state[k]}, this reader has "
                                 f"{k}={getattr(p, k)}; the order would differ")
        self.epoch, self.position = state["epoch"], state["batch"]

    def __iter__(self):
        for entries in self.plan.batches(self.epoch, self.position):
            self.position += 1
            yield self.collate([self.dataset[e] for e in entries])
