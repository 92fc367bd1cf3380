"""Free Spoken Digit Dataset: manifests with whole speakers held out.

    python -m recipes.fsdd.prepare --corpus ../shared/corpora/fsdd --out exp/fsdd/data \
        --test-speakers theo

Writes train.jsonl / valid.jsonl / test.jsonl. The valid split is a few recordings of
each training speaker (index 45-49); test holds every recording of the held-out speakers.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

from asr.corpora import DIGITS, Corpus, prepare_fsdd
from asr.data import Utterance
from recipes.common import download_and_unpack, write_splits

log = logging.getLogger(__name__)

URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"


def download(dest: str | Path) -> Path:
    """Download and unpack FSDD into ``dest``; returns the dataset folder."""
    return next(download_and_unpack(URL, Path(dest), "fsdd.tar.gz").glob("free-spoken-digit-dataset-*"))


def prepare(corpus_dir: str | Path, out_dir: str | Path,
            test_speakers: Optional[List[str]] = None, valid_index_from: int = 45) -> Dict[str, Path]:
    utts = prepare_fsdd(corpus_dir)
    if not utts:
        raise FileNotFoundError(f"{corpus_dir}: no FSDD recordings found")
    test_speakers = set(test_speakers or [])
    speakers = {u.speaker for u in utts}
    unknown = test_speakers - speakers
    if unknown:
        raise ValueError(f"test speakers {sorted(unknown)} not in corpus (has {sorted(speakers)})")
    test = [u for u in utts if u.speaker in test_speakers]
    rest = [u for u in utts if u.speaker not in test_speakers]
    valid = [u for u in rest if int(u.id.split("_")[2]) >= valid_index_from]
    train = [u for u in rest if int(u.id.split("_")[2]) < valid_index_from]
    splits = {"train": train, "valid": valid}
    if test:
        splits["test"] = test
    return write_splits(splits, Path(out_dir))


def repeated(utts: List[Utterance], repeat: int) -> List[Utterance]:
    """Each utterance listed ``repeat`` times, the copies with ids ``<id>_r1`` ... (few
    clips of many voices, weighted up)."""
    return [dataclasses.replace(u, id=f"{u.id}_r{r}") if r else u for u in utts for r in range(repeat)]


def speech_commands_words(root: str | Path, words: Optional[List[str]] = None,
                          repeat: int = 1) -> List[Utterance]:
    """Spoken words from a Speech Commands tree, as extra real training speakers.

    Reads the word folders of the full v0.02 layout (``<word>/<speaker>_nohash_<n>``) and
    the words filed under ``_unknown_/<word>_<speaker>_nohash_<n>`` in its test-set layout;
    ``words`` keeps only these (None: every word; ``_silence_`` and the background-noise
    folder are never words). Each clip is listed ``repeat`` times (many voices, few clips:
    weight them up).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; expected a Speech Commands folder")
    wanted = None if words is None else set(words)
    found = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("_")):
        if wanted is None or folder.name in wanted:
            found += [(f"sc_{folder.name}_{p.stem}", p, folder.name, p.stem.split("_")[0])
                      for p in sorted(folder.glob("*.*"))]
    for p in sorted((root / "_unknown_").glob("*_*.*")):
        word, spk = p.stem.split("_")[:2]
        if wanted is None or word in wanted:
            found.append((f"sc_{p.stem}", p, word, spk))
    utts = Corpus()
    for uid, p, word, spk in found:
        if p.suffix.lower() in (".wav", ".flac"):
            utts.add(uid, p, word, f"sc:{spk}")
    return repeated(utts, repeat)


def speech_commands_digits(root: str | Path, repeat: int = 1) -> List[Utterance]:
    """The digit words (``zero`` ... ``nine``) of a Speech Commands tree; see
    :func:`speech_commands_words`."""
    return speech_commands_words(root, DIGITS, repeat)


#: spoken digit strings in other corpora also say "oh" for zero; kept (a char model spells it)
STRING_WORDS = set(DIGITS) | {"oh"}


def digit_strings(corpus: str, root: str | Path, repeat: int = 1) -> List[Utterance]:
    """Utterances of another corpus (``an4``, ``speechocean762``, or any name
    :func:`asr.corpora.load_corpus` reads) that say nothing but digits, e.g. AN4's "two six
    eight": more real voices saying digits, none of them an FSDD speaker. Every split found
    is read; each clip is listed ``repeat`` times (few clips, many voices)."""
    from asr.corpora import load_corpus
    from asr.text import normalize_text

    utts = load_corpus(corpus, root)
    found = []
    for u in utts:
        text = normalize_text(u.text)
        if text and set(text.split()) <= STRING_WORDS:
            found.append(dataclasses.replace(u, text=text, speaker=f"{corpus}:{u.speaker}"))
    if not found:
        raise ValueError(f"{root}: no {corpus} utterance says only digits")
    return repeated(found, repeat)


def digit_words(corpus: str, root: str | Path, out_dir: str | Path, repeat: int = 1, per_speaker: int = 3,
                pad_s: float = 0.15, aligner=None, min_score: Optional[float] = None) -> List[Utterance]:
    """Single digit words ("zero" ... "nine") cut out of another corpus's utterances
    (``an4``, ``speechocean762``, or any name :func:`asr.corpora.load_corpus` reads) by
    forced alignment (:mod:`asr.word_cuts`: the rest of the utterance faded 40 dB down), at
    most ``per_speaker`` of each digit per speaker: isolated digits, as FSDD's, in many
    more voices, none of them an FSDD speaker (``aligner`` and ``min_score``: see
    :func:`asr.word_cuts.cut_words`). Each cut, with ``pad_s`` of the faded
    surround either side, is written as FLAC under ``out_dir/<corpus>/`` (kept: a second
    call reads them back) and listed ``repeat`` times. The utterances' audio paths are
    absolute (a manifest resolves relative ones against its own folder); the index
    ``cuts.json`` lists them relative to its folder, so the folder may move."""
    import json

    from asr.audio import save_audio
    from asr.corpora import load_corpus
    from asr.word_cuts import ALIGNER, MIN_SCORE, cut_words, load_aligner

    out_dir = Path(out_dir) / corpus
    index = out_dir / "cuts.json"
    settings = {"per_speaker": per_speaker, "pad_s": pad_s,
                "min_score": MIN_SCORE if min_score is None else min_score,
                # a model file by name; a (model, tokenizer) given in code is not compared
                "aligner": Path(aligner or ALIGNER).name if aligner is None or isinstance(aligner, (str, Path))
                else "given"}
    if index.is_file():
        try:
            saved = json.loads(index.read_text())
        except ValueError as exc:
            raise ValueError(f"{index}: not a digit-word index ({exc}); delete it to cut again") from None
        if isinstance(saved, list):  # the cuts alone, as written before session 19
            saved = {"settings": {}, "cuts": saved}
        made = saved["cuts"]
        differ = {k: (v, settings[k]) for k, v in saved["settings"].items()
                  if k in settings and v != settings[k] and "given" not in (v, settings[k])}
        if differ:
            log.warning("%s: reusing cuts made with other settings (%s); delete the folder to cut again",
                        index, ", ".join(f"{k} {a} (now {b})" for k, (a, b) in differ.items()))
    else:
        utts = load_corpus(corpus, root)
        model, tokenizer = load_aligner(aligner or ALIGNER)
        rate = model.cfg.features.sample_rate
        made = []
        for cut in cut_words([(u.audio, u.text, u.speaker or u.id) for u in utts], DIGITS, (model, tokenizer),
                             per_key_word=per_speaker, desc=f"{corpus} digit words",
                             min_score=MIN_SCORE if min_score is None else min_score):
            pad = int(pad_s * rate)
            a, b = max(0, cut.start - pad), min(cut.wave.numel(), cut.end + pad)
            path = out_dir / f"{cut.word}_{len(made):05d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_audio(path, cut.wave[a:b], rate)
            made.append({"id": f"{corpus}_{path.stem}", "audio": path.name, "duration": (b - a) / rate,
                         "text": cut.word, "speaker": f"{corpus}:{cut.key}", "source": f"{cut.path}#{a / rate:.2f}s"})
        if not made:
            raise ValueError(f"{root}: no digit word could be cut from {corpus}")
        # a killed run never leaves half an index, nor does a fold cutting beside another
        tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"settings": settings, "cuts": made}, indent=0))
        tmp.replace(index)
    utts = [Utterance(m["id"], _cut_audio(index, m["audio"]), m["duration"], m["text"], speaker=m["speaker"])
            for m in made]
    return repeated(utts, repeat)


def _cut_audio(index: Path, audio: str) -> str:
    """An index entry's file as an absolute path: relative entries are relative to the
    index's folder (indexes written before were relative to the working folder: tried
    when the index's folder has no such file)."""
    p = Path(audio)
    if not p.is_absolute() and ((index.parent / p).exists() or not p.exists()):
        p = index.parent / p
    return str(p.resolve())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--test-speakers", nargs="*", default=[])
    a = p.parse_args()
    for name, path in prepare(a.corpus, a.out, a.test_speakers).items():
        print(f"{name}: {path} ({sum(1 for _ in open(path))} utterances)")


if __name__ == "__main__":
    main()
