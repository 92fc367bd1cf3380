"""Synthetic English speech for the English recipe: real sentences spoken by the Debian voices.

    python -m recipes.english.synthetic --texts ../shared/corpora/texts/ljspeech_metadata.csv \
        --exclude exp/english/data/dev_*.jsonl exp/english/data/eval_*.jsonl \
        --count 3000 --out exp/english/synthetic

Sentences of the text corpus (its normalised column, in our scoring normalisation) are each
rendered once, by a voice drawn from every installed espeak-ng / flite / festival voice
(``kws.voices``) with a random rate and pitch (``kws.synth``: cached by text and voice, so a
re-run only renders what is missing). Sentences longer than ``--max-words`` are skipped (the
recipe drops clips over 15 s), and so is any sentence that is the transcript of an
``--exclude`` manifest (dev and eval text never reaches training). Writes
``<out>/synthetic.jsonl`` (speaker = voice id, ``meta.corpus = "synthetic"``) and
``<out>/summary.json``. Noise is added in training (``data.noise_prob``) like for the real clips.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import List, Sequence, Set

from asr.audio import audio_info
from asr.data import Utterance, read_manifest, write_manifest
from asr.metadata import read_metadata
from asr.text import normalize_text


def sentences(texts_csv: Path, exclude: Set[str], max_words: int) -> List[str]:
    """The corpus's normalised sentences, deduplicated, without the excluded ones."""
    out, seen = [], set()
    for row in read_metadata(texts_csv, strict=True):
        text = normalize_text(row.normalized)
        if text and text not in seen and text not in exclude and len(text.split()) <= max_words:
            seen.add(text)
            out.append(text)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    from kws.synth import synthesize_many
    from kws.voices import sample_renderings, voice_id, voice_inventory

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--texts", type=Path, required=True, help="id|raw text|normalized text lines")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=3000, help="sentences to render (one voice each)")
    p.add_argument("--exclude", nargs="*", default=[], help="manifests whose transcripts must not be rendered")
    p.add_argument("--max-words", type=int, default=25)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    exclude = {normalize_text(u.text) for m in a.exclude for u in read_manifest(m)}
    pool = sentences(a.texts, exclude, a.max_words)
    rng = random.Random(a.seed)
    chosen = rng.sample(pool, min(a.count, len(pool)))
    voices = voice_inventory()
    if not voices:
        raise RuntimeError("no speech synthesizer found: install espeak-ng, flite or festival")
    renderings = sample_renderings(voices, len(chosen), rng)
    done = synthesize_many(list(zip(chosen, renderings)), a.out / "wavs", jobs=a.jobs,
                           desc="synthesizing sentences")
    utts = []
    for text, voice, path in done:
        duration, sample_rate = audio_info(path)
        utts.append(Utterance(id=f"synth_{path.stem}", audio=str(path.resolve()), duration=round(duration, 3),
                              text=text, sample_rate=sample_rate, speaker=voice_id(voice),
                              meta={"corpus": "synthetic", "rate": voice.rate, "pitch": voice.pitch}))
    write_manifest(utts, a.out / "synthetic.jsonl")
    summary = {"sentences": len(chosen), "rendered": len(utts), "failed": len(chosen) - len(utts),
               "hours": round(sum(u.duration for u in utts) / 3600, 3),
               "voices": len({u.speaker for u in utts}), "installed_voices": len(voices),
               "excluded_transcripts": len(exclude), "manifest": str(a.out / "synthetic.jsonl")}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
