"""Real negative speech for wake-word training: the files of the shared corpora (in their
public layouts) and of user folders, a speaker-disjoint held-out slice, and loading that
reports and skips bad files.

Corpora read under a root (``../shared/corpora``): ``speechocean762`` (Kaldi ``wav.scp``),
``an4`` (``etc/an4_train.fileids``), ``ljspeech`` (``wavs/``; one reader, so one speaker),
``speech_commands`` (every
word folder; not ``_background_noise_`` or ``_silence_``, which are noise) and
``mycroft_precise`` (``not-wake-words/en``). An utterance whose transcript contains the
wake phrase is left out.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from asr.audio import AudioError, audio_info, load_audio
from asr.metadata import read_metadata
from kws.layout import BACKGROUND_NOISE, hash_split, list_audio, speaker_of
from kws.phrases import contains_phrase

log = logging.getLogger(__name__)

__all__ = ["NegativeFile", "corpus_files", "folder_files", "split_held_out", "load_negatives",
           "noise_files", "CORPORA", "LoadedNegative", "SpeakerLeakError", "check_speakers_disjoint"]

CORPORA = ("speechocean762", "an4", "ljspeech", "speech_commands", "mycroft_precise")
SILENT_PEAK = 1e-4  # a file whose peak is below this is silence, not negative speech


@dataclass(frozen=True)
class NegativeFile:
    path: str
    corpus: str
    speaker: str  # the unit of the held-out split
    text: str = ""


def _with_suffix(path: Path) -> Optional[Path]:
    """The file, or the same name with another audio suffix (public vs shared layouts)."""
    if path.is_file():
        return path
    for suf in (".wav", ".WAV", ".flac", ".opus", ".ogg"):
        p = path.with_suffix(suf)
        if p.is_file():
            return p
    return None


def _read_table(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        k, _, v = line.strip().partition(" ") if "\t" not in line else line.strip().partition("\t")
        if k:
            out[k] = v.strip()
    return out


def _speechocean(root: Path) -> List[NegativeFile]:
    d = root / "train"
    scp, spk, text = _read_table(d / "wav.scp"), _read_table(d / "utt2spk"), _read_table(d / "text")
    out = []
    for utt, rel in scp.items():
        p = _with_suffix(root / rel)
        if p is not None:
            out.append(NegativeFile(str(p), "speechocean762", spk.get(utt, utt), text.get(utt, "")))
    return out


def _an4(root: Path) -> List[NegativeFile]:
    ids = (root / "etc" / "an4_train.fileids").read_text().split()
    texts = {}
    trans = root / "etc" / "an4_train.transcription"
    if trans.is_file():
        for line in trans.read_text().splitlines():
            if "(" in line:
                words, _, uid = line.rpartition("(")
                texts[uid.strip(" )")] = words.replace("<s>", "").replace("</s>", "").strip()
    out = []
    for fid in ids:
        p = _with_suffix(root / "wav" / (fid + ".flac"))
        if p is not None:
            out.append(NegativeFile(str(p), "an4", fid.split("/")[-2], texts.get(fid.split("/")[-1], "")))
    return out


LJSPEECH_SPEAKER = "LJ"  # LJSpeech has one reader: every file carries her id


def _ljspeech(root: Path) -> List[NegativeFile]:
    meta = root / "metadata.csv"
    texts = {row.id: row.normalized for row in read_metadata(meta)} if meta.is_file() else {}
    # one reader, one speaker id: the whole corpus lands on one side of the held-out split
    return [NegativeFile(str(p), "ljspeech", LJSPEECH_SPEAKER, texts.get(p.stem, ""))
            for p in list_audio(root / "wavs")]


def _speech_commands(root: Path) -> List[NegativeFile]:
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name not in ("_background_noise_", "_silence_"):
            out += [NegativeFile(str(p), "speech_commands", speaker_of(p),
                                 d.name if d.name != "_unknown_" else p.name.split("_")[0])
                    for p in list_audio(d)]
    return out


def _mycroft(root: Path) -> List[NegativeFile]:
    d = root / "not-wake-words" / "en"
    return [NegativeFile(str(p), "mycroft_precise", p.stem) for p in list_audio(d)] if d.is_dir() else []


READERS = {"speechocean762": _speechocean, "an4": _an4, "ljspeech": _ljspeech,
           "speech_commands": _speech_commands, "mycroft_precise": _mycroft}


def corpus_files(root: str | Path, names: Sequence[str] = CORPORA, phrase: str = "") -> List[NegativeFile]:
    """Negative speech files of the named corpora under ``root`` (missing corpora are
    reported and skipped), without utterances whose transcript contains ``phrase``."""
    root = Path(root)
    out: List[NegativeFile] = []
    for name in names:
        if name not in READERS:
            raise ValueError(f"unknown corpus {name!r}; known: {sorted(READERS)}")
        d = root / name
        if not d.is_dir():
            log.warning("%s: no such corpus folder, skipped", d)
            continue
        try:
            files = READERS[name](d)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{d}: cannot read the {name} layout ({exc})") from None
        out += [f for f in files if not (phrase and f.text and contains_phrase(f.text, phrase))]
    return out


def folder_files(folder: str | Path) -> List[NegativeFile]:
    """Every audio file under a user folder; each file is its own split unit."""
    folder = Path(folder)
    return [NegativeFile(str(p), folder.name, f"{folder.name}/{p.relative_to(folder)}")
            for p in list_audio(folder)]


def noise_files(root: str | Path) -> List[str]:
    """Speech Commands ``_background_noise_`` recordings under the corpora root."""
    d = Path(root) / BACKGROUND_NOISE
    return [str(p) for p in list_audio(d)] if d.is_dir() else []


def split_held_out(files: Sequence[NegativeFile], percent: float) -> Tuple[List[NegativeFile], List[NegativeFile]]:
    """(training, held out): ``percent`` of the speakers (SHA-1 of corpus/speaker) are held
    out, so no held-out speaker is trained on."""
    train, held = [], []
    for f in files:
        (held if hash_split(f"{f.corpus}/{f.speaker}", 0.0, percent) == "test" else train).append(f)
    return train, held


class SpeakerLeakError(RuntimeError):
    """A held-out negative speaker also has files in the training share."""


def check_speakers_disjoint(train: Sequence[NegativeFile], held: Sequence[NegativeFile]) -> None:
    """Raise :class:`SpeakerLeakError` if a (corpus, speaker) has files on both sides."""
    held_speakers = {(f.corpus, f.speaker) for f in held}
    shared = sorted({f"{f.corpus}/{f.speaker}" for f in train if (f.corpus, f.speaker) in held_speakers})
    if shared:
        raise SpeakerLeakError(f"{len(shared)} held-out negative speaker(s) also in training: {shared[:10]}")


@dataclass
class LoadedNegative:
    file: NegativeFile
    wave: Optional[torch.Tensor]  # (N,) at the model's rate; None when not kept
    seconds: float


def load_negatives(files: Sequence[NegativeFile], sample_rate: int = 16000, max_hours: Optional[float] = None,
                   seed: int = 0, keep_audio: bool = True, desc: str = "negatives"
                   ) -> Tuple[List[LoadedNegative], List[str]]:
    """Read the files (in a shuffled order, up to ``max_hours``) -> (loaded, skipped). A
    file that cannot be decoded or is silent is reported with its path and skipped.
    ``keep_audio=False`` only reads the headers (durations; a file whose header cannot be
    read is reported and skipped; decoding errors are left to whoever reads it later)."""
    order = list(files)
    random.Random(seed).shuffle(order)
    out: List[LoadedNegative] = []
    skipped: List[str] = []
    samples = 0
    limit = None if max_hours is None else int(max_hours * 3600 * sample_rate)
    for f in tqdm(order, desc=desc, mininterval=5.0):
        if limit is not None and samples >= limit:
            break
        if not keep_audio:
            try:
                seconds, _ = audio_info(f.path)
            except AudioError as exc:
                log.warning("skipping negative %s", exc)
                skipped.append(str(exc))
                continue
            out.append(LoadedNegative(f, None, seconds))
            samples += int(seconds * sample_rate)
            continue
        try:
            wave = load_audio(f.path, sample_rate)
        except AudioError as exc:
            log.warning("skipping negative %s", exc)
            skipped.append(str(exc))
            continue
        if float(wave.abs().max()) < SILENT_PEAK:
            msg = f"{f.path}: silent (peak below {SILENT_PEAK:g})"
            log.warning("skipping negative %s", msg)
            skipped.append(msg)
            continue
        out.append(LoadedNegative(f, wave, wave.numel() / sample_rate))
        samples += wave.numel()
    return out, skipped
