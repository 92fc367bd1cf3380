"""Corpora in their public layouts -> manifests. One ``prepare_<corpus>`` each, chosen by
name, so ``python -m asr evaluate --corpus NAME --data DIR`` works on any of them."""
from __future__ import annotations

import csv
import inspect
import logging
from pathlib import Path
from typing import Dict, List, Optional

from asr.audio import RAW_SUFFIX, AudioError, audio_info
from asr.audio_files import AUDIO_SUFFIXES, is_audio
from asr.data import Rejected, Utterance, read_manifest
from asr.metadata import read_metadata
from asr.registry import Registry
from asr.text import normalize_text

log = logging.getLogger(__name__)
CORPORA: Registry = Registry("corpus")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# both cases: find_audio tries each on case-sensitive file systems
AUDIO_EXTENSIONS = tuple(s for suffix in AUDIO_SUFFIXES for s in (suffix, suffix.upper()))
#: AN4's audio: any audio suffix, and the headerless .raw of its raw release (lower case)
AN4_SUFFIXES = AUDIO_SUFFIXES + (RAW_SUFFIX,)


class Corpus(list):
    """A corpus's utterances (a list of :class:`Utterance`), and ``rejected``: the
    entries its reader left out, each a :class:`Rejected` naming the file and the reason
    (missing or unreadable audio, an empty transcript, an unsupported ``wav.scp`` entry).

    Utterance ids are unique: results and references are matched by id, so a second
    utterance with an id already added (e.g. the same id in two splits) is refused with a
    ``ValueError`` naming the id and both sources, rather than renamed or dropped."""

    def __init__(self, utts=(), rejected=()) -> None:
        super().__init__(utts)
        self.rejected: List[Rejected] = list(rejected)
        self._source: Dict[str, str] = {}  # id -> where add() found it

    def add(self, uid: str, path: Path, text: str, speaker: Optional[str] = None,
            offset: float = 0.0, duration: Optional[float] = None, **meta) -> None:
        """Append an utterance with duration and rate from the audio header, or list it in
        ``rejected`` (logged by path) when its transcript is empty or its audio unusable.
        An id added before is a ``ValueError`` naming both sources."""
        source = f"{path}" + (f" (split {meta['split']})" if meta.get("split") else "")
        if uid in self._source:
            raise ValueError(f"utterance id {uid!r} is used twice: by {self._source[uid]} and by "
                             f"{source}; ids must be unique (to read one split, give --split)")
        if not normalize_text(text):
            return self.reject(uid, path, f"empty transcript (raw: {text!r})")
        path = find_audio(path)
        try:
            file_duration, sr = audio_info(path)
        except AudioError as exc:
            return self.reject(uid, path, exc.reason)
        if duration is None:
            duration = file_duration - offset
        if duration <= 0 or offset + duration > file_duration + 0.05:
            return self.reject(uid, path, f"segment {offset:.2f}+{duration:.2f} s lies outside "
                               f"the {file_duration:.2f} s recording")
        self.append(Utterance(id=uid, audio=str(Path(path).resolve()), duration=duration,
                              text=text, sample_rate=sr, offset=offset, speaker=speaker, meta=meta))
        self._source[uid] = source

    def check_usable(self, where: str, shown: int = 3) -> None:
        """A ``ValueError`` naming ``where`` when there is no utterance to use: none found, or
        every entry rejected (their number and the first ``shown`` reasons)."""
        if self:
            return
        if not self.rejected:
            raise ValueError(f"{where}: no utterances found")
        first = "; ".join(f"{r.id} ({r.audio}): {r.reason}" for r in self.rejected[:shown])
        more = f"; and {len(self.rejected) - shown} more" if len(self.rejected) > shown else ""
        raise ValueError(f"{where}: all {len(self.rejected)} entries were rejected, none is left "
                         f"to use: {first}{more}")

    def reject(self, uid: str, path, reason: str) -> None:
        log.warning("skipping %s (id %s): %s", path, uid, reason)
        self.rejected.append(Rejected(uid, str(path), reason))


def find_audio(path: Path) -> Path:
    """``path``, or the same name with another audio extension when only that exists (public
    layouts name ``.wav`` where a copy holds ``.flac`` or ``.opus``); else ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    for ext in AUDIO_EXTENSIONS:
        alt = path.with_suffix(ext)
        if alt.is_file():
            return alt
    return path


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not found; expected {what}")
    return path


@CORPORA.register("fsdd")
def prepare_fsdd(root: str | Path, speakers: Optional[List[str]] = None) -> List[Utterance]:
    """Free Spoken Digit Dataset: ``recordings/<digit>_<speaker>_<idx>.wav`` (any audio
    suffix, either case: ``.WAV``, ``.flac``...).

    ``root`` may be the dataset folder or its ``recordings`` folder.
    """
    root = Path(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else _need_dir(
        root, "FSDD layout recordings/<digit>_<speaker>_<idx>.wav")
    utts = Corpus()
    for p in sorted(p for p in rec.iterdir() if p.is_file() and is_audio(p)):
        parts = p.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit():
            utts.reject(p.stem, p, "name is not <digit>_<speaker>_<idx>.wav")
            continue
        if speakers is not None and parts[1] not in speakers:
            continue
        utts.add(p.stem, p, DIGITS[int(parts[0])], parts[1])
    return utts


@CORPORA.register("ljspeech")
def prepare_ljspeech(root: str | Path) -> List[Utterance]:
    """LJSpeech: ``metadata.csv`` (id|raw|normalized) and ``wavs/<id>.wav|.flac``."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; expected the LJSpeech layout")
    utts = Corpus()
    for row in read_metadata(meta):
        utts.add(row.id, root / "wavs" / f"{row.id}.wav", row.normalized, "LJ")
    return utts


@CORPORA.register("librispeech")
def prepare_librispeech(root: str | Path, subsets: Optional[List[str]] = None) -> List[Utterance]:
    """LibriSpeech: ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` and
    ``.flac`` files. ``root`` may be ``LibriSpeech/`` or a single subset folder."""
    root = _need_dir(Path(root), "the LibriSpeech layout <subset>/<spk>/<chapter>/")
    utts = Corpus()
    for trans in sorted(root.rglob("*.trans.txt")):
        if subsets and not any(s in trans.parts for s in subsets):
            continue
        for line in open(trans, encoding="utf-8"):
            uid, _, text = line.strip().partition(" ")
            if not uid:
                continue
            utts.add(uid, trans.parent / f"{uid}.flac", text, uid.split("-")[0],
                     subset=trans.parts[-4] if len(trans.parts) >= 4 else None)
    if not utts and not utts.rejected:
        raise FileNotFoundError(f"{root}: no *.trans.txt files found (LibriSpeech layout)")
    return utts


def _splits(found: Dict[str, object], split: Optional[str], where: Path, layout: str) -> List[str]:
    """The split names to read: ``split`` if given (it must exist), else every one found."""
    if not found:
        raise FileNotFoundError(f"{where}: no split found; expected {layout}")
    if split is None:
        return sorted(found)
    if split not in found:
        raise FileNotFoundError(f"{where}: no split {split!r} (found: {', '.join(sorted(found))})")
    return [split]


def _read_table(path: Path) -> Dict[str, str]:
    """A Kaldi table (``key value...`` per line) as a dict; missing file -> empty dict. A key
    listed twice is a ``ValueError`` naming the file and both lines."""
    table, lines = {}, {}
    if path.is_file():
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            parts = line.strip().split(None, 1)  # Kaldi separates by any whitespace
            if not parts:
                continue
            if parts[0] in lines:
                raise ValueError(f"{path}:{n}: key {parts[0]!r} is listed twice (first on line "
                                 f"{lines[parts[0]]}); each key must appear once")
            lines[parts[0]] = n
            table[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return table


def _kaldi_dir(data_dir: Path, root: Path, utts: Corpus, split: str) -> None:
    """One Kaldi data folder: ``text`` and ``wav.scp`` (file paths, absolute or relative to
    the corpus folder), optional ``segments``, ``utt2spk``, ``spk2age``, ``spk2gender``. A
    ``wav.scp`` entry ending in ``|`` is a command (not supported: rejected); any other is
    the rest of the line after the id, one path even when it holds spaces."""
    texts = _read_table(data_dir / "text")
    wavs = _read_table(data_dir / "wav.scp")
    segments = _read_table(data_dir / "segments")
    utt2spk = _read_table(data_dir / "utt2spk")
    spk2age, spk2gender = _read_table(data_dir / "spk2age"), _read_table(data_dir / "spk2gender")
    if segments:  # utt -> (recording, start, end)
        segments = {u: v.split() for u, v in segments.items()}
    pipes = 0
    for uid, text in texts.items():
        rec, offset, duration = uid, 0.0, None
        if segments:
            if uid not in segments or len(segments[uid]) != 3:
                utts.reject(uid, data_dir / "segments", "no segment for this utterance")
                continue
            rec, start, end = segments[uid]
            offset, duration = float(start), float(end) - float(start)
        entry = wavs.get(rec)
        if entry is None:
            utts.reject(uid, data_dir / "wav.scp", f"recording {rec!r} is not in wav.scp")
            continue
        if entry.endswith("|"):  # Kaldi's rxfilename for a command's output
            pipes += 1
            utts.reject(uid, data_dir / "wav.scp",
                        f"wav.scp entry {entry!r} is a command, not a file path: only file paths "
                        "are supported; write the audio to files (e.g. with sox) and list those")
            continue
        path = Path(entry)
        if not path.is_absolute():  # relative to the corpus folder (or the data folder)
            candidates = [root / path, data_dir / path, data_dir.parent / path]
            path = next((c for c in map(find_audio, candidates) if c.is_file()), root / path)
        if " " in entry and not Path(path).is_file():
            utts.reject(uid, path, "no such file (wav.scp: the rest of the line after the id is "
                        "one path, spaces included; a command must end with '|')")
            continue
        spk = utt2spk.get(uid)
        meta = {"split": split}
        if spk in spk2age:
            meta["age"] = spk2age[spk]
        if spk in spk2gender:
            meta["gender"] = spk2gender[spk]
        utts.add(uid, path, text, spk, offset=offset, duration=duration, **meta)
    if texts and pipes == len(texts):
        raise ValueError(f"{data_dir / 'wav.scp'}: every entry is a command pipe; only file "
                         "paths are supported: write the audio to files and list their paths")


@CORPORA.register("kaldi")
def prepare_kaldi(root: str | Path, split: Optional[str] = None) -> Corpus:
    """A Kaldi data folder (``text``, ``wav.scp``, ``utt2spk``...), or a folder of them
    (``train/``, ``test/``...): every one found, or the one named ``split``. A single data
    folder is the split of its own name: another ``split`` is refused."""
    root = _need_dir(Path(root), "a Kaldi data folder (text, wav.scp) or a folder of them")
    if (root / "text").is_file():
        if split not in (None, root.name):
            raise FileNotFoundError(
                f"{root}: a single Kaldi data folder (split {root.name!r}), so it has no split "
                f"{split!r}; give the folder that holds the splits, or no --split")
        found = {root.name: root}
    else:
        found = {d.name: d for d in sorted(root.iterdir())
                 if d.is_dir() and (d / "text").is_file() and (d / "wav.scp").is_file()}
    utts = Corpus()
    for name in _splits(found, split, root, "<split>/text and <split>/wav.scp (Kaldi layout)"):
        _kaldi_dir(found[name], root, utts, name)
    return utts


@CORPORA.register("speechocean762")
def prepare_speechocean762(root: str | Path, split: Optional[str] = None) -> Corpus:
    """speechocean762: Kaldi folders ``train/`` and ``test/`` whose ``wav.scp`` names
    ``WAVE/SPEAKERnnnn/<utt>.WAV`` relative to the corpus folder (a copy may hold
    ``.flac`` or ``.opus`` instead); speaker age and gender go to ``meta``."""
    return prepare_kaldi(root, split)


@CORPORA.register("an4")
def prepare_an4(root: str | Path, split: Optional[str] = None) -> Corpus:
    """CMU AN4: ``etc/an4_{train,test}.transcription`` (``<s> WORDS </s> (uttid)``) and
    audio ``wav/<part>/<speaker>/<uttid>.<ext>`` (``.wav``, ``.flac``, NIST SPHERE ``.sph``,
    headerless ``.raw`` as in CMU's an4_raw.bigendian release (:data:`asr.audio.RAW_FORMAT`)
    or any of :data:`AUDIO_EXTENSIONS`), found by name anywhere under ``wav/``.
    ``root`` is the ``an4`` folder."""
    root = Path(root)
    etc = _need_dir(root / "etc", "the AN4 layout etc/an4_{train,test}.transcription + wav/")
    found = {p.name[len("an4_"):-len(".transcription")]: p
             for p in sorted(etc.glob("an4_*.transcription"))}
    audio = {}
    if (root / "wav").is_dir():
        for p in (root / "wav").rglob("*"):
            if p.suffix.lower() in AN4_SUFFIXES:
                audio.setdefault(p.stem, p)
    utts = Corpus()
    for name in _splits(found, split, etc, "an4_<split>.transcription"):
        for n, line in enumerate(open(found[name], encoding="utf-8"), 1):
            line = line.strip()
            if not line:
                continue
            if not (line.endswith(")") and "(" in line):
                utts.reject(f"{found[name].name}:{n}", found[name],
                            f"line {n} is not '<s> WORDS </s> (uttid)': {line!r}")
                continue
            body, _, uid = line[:-1].rpartition("(")
            uid = uid.strip()
            words = [w for w in body.split() if not (w.startswith("<") and w.endswith(">"))]
            if uid not in audio:  # named as the public layout would have it
                part = f"an4{'' if name == 'train' else name}_clstk"
                spk = (uid.split("-") + ["?"])[1]
                exts = " ".join(sorted(AN4_SUFFIXES))
                utts.reject(uid, root / "wav" / part / spk / f"{uid}.wav",
                            f"no such file: expected wav/<part>/<spk>/{uid}.<ext> under {root} "
                            f"(<ext> one of {exts}); no file under wav/ is named {uid}.<ext>")
                continue
            utts.add(uid, audio[uid], " ".join(words), audio[uid].parent.name, split=name)
    return utts


@CORPORA.register("commonvoice")
def prepare_commonvoice(root: str | Path, split: Optional[str] = None) -> Corpus:
    """Mozilla Common Voice (one locale): ``clips/*.mp3`` and ``train.tsv``, ``dev.tsv``,
    ``test.tsv`` (columns ``client_id``, ``path``, ``sentence``...): every one present, or
    the one named ``split``. The speaker is the ``client_id``."""
    root = _need_dir(Path(root), "the Common Voice layout clips/ + train.tsv/dev.tsv/test.tsv")
    found = {name: root / f"{name}.tsv" for name in ("train", "dev", "test")
             if (root / f"{name}.tsv").is_file()}
    utts = Corpus()
    for name in _splits(found, split, root, "train.tsv, dev.tsv or test.tsv beside clips/"):
        with open(found[name], encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = {"path", "sentence"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{found[name]}: no column {', '.join(sorted(missing))} "
                                 f"(header: {reader.fieldnames})")
            for row in reader:
                clip = (row.get("path") or "").strip()
                if not clip:
                    utts.reject("?", found[name], f"row without a clip path: {row}")
                    continue
                utts.add(Path(clip).stem, root / "clips" / clip, row.get("sentence") or "",
                         row.get("client_id") or None, split=name)
    return utts


@CORPORA.register("manifest")
def prepare_manifest(path: str | Path) -> List[Utterance]:
    """A JSON-lines manifest file, or a folder holding ``test.jsonl``."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.jsonl"
    return read_manifest(path)


CORPORA.register("synth")(prepare_manifest)


def load_corpus(name: str, data: str | Path, split: Optional[str] = None, **kwargs) -> Corpus:
    """Read corpus ``name`` from ``data``; ``split`` picks one split of corpora that have
    several (kaldi, speechocean762, an4, commonvoice). ``rejected`` on the result lists the
    entries left out."""
    reader = CORPORA.get(name)
    if split is not None:
        if "split" not in inspect.signature(reader).parameters:
            raise ValueError(f"corpus {name!r} has no splits to choose from (--split {split})")
        kwargs["split"] = split
    utts = reader(data, **kwargs)
    return utts if isinstance(utts, Corpus) else Corpus(utts)
