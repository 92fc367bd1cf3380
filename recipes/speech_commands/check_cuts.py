"""How much of a command word the cuts of asr/word_cuts.py keep, on synthetic phrases whose word
positions are known (the check behind word_cuts' LEAD_S / TAIL_S / NEIGHBOUR_S):

    python -m recipes.speech_commands.check_cuts [--aligner data/models/english_streaming.pt]

Each phrase is rendered word by word (espeak-ng and flite voices) and joined with 80 ms gaps,
aligned as one utterance, and the command word's cut compared with where the word really is.
Prints one JSON line per setting: mean share of the word inside the cut, share of cuts that
keep less than 90% of it, mean seconds of other audio inside the cut.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from asr import word_cuts

VOICES = [("espeak", "en-us", 1.0), ("flite", "slt", 1.0), ("flite", "kal", 1.0), ("espeak", "en", 1.0),
          ("flite", "rms", 1.0), ("espeak", "en-us+f3", 1.2)]
PHRASES = ["turn left now", "please go home", "say yes again", "it was off today", "look up there",
           "i said no thanks", "then stop it", "move down here", "turn right away", "put it on again"]
SETTINGS = [  # cut_bounds' (lead, tail, previous, following): the first tried, then the chosen one
    (0.30, 0.05, 0.05, 0.10),
    (word_cuts.LEAD_S, word_cuts.TAIL_S, word_cuts.NEIGHBOUR_S, word_cuts.NEIGHBOUR_S),
]


def cases(aligner: str, gap_s: float = 0.08, sample_rate: int = 16000) -> list:
    """(spans, index of the command word, duration, (true start, true end)) per phrase and voice."""
    from asr.align import align_words
    from asr.checkpoint import load_model
    from kws.data import SPEECH_COMMANDS_WORDS, load_audio
    from kws.synth import Voice, synthesize

    model, tokenizer, _ = load_model(aligner)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, name, rate in VOICES:
            for phrase in PHRASES:
                words = phrase.split()
                gap = torch.zeros(int(gap_s * sample_rate))
                pieces, places, n = [], [], 0
                for w in words:
                    path = synthesize(w, Voice(engine, name, rate), tmp)
                    if path is None:
                        break
                    wave = load_audio(path, sample_rate)
                    pieces += [gap, wave]
                    places.append(((n + gap.numel()) / sample_rate, (n + gap.numel() + wave.numel()) / sample_rate))
                    n += gap.numel() + wave.numel()
                else:
                    audio = torch.cat(pieces + [gap])
                    spans = align_words(model, tokenizer, audio, phrase)
                    k = next(i for i, w in enumerate(words) if w in SPEECH_COMMANDS_WORDS)
                    out.append((spans, k, audio.numel() / sample_rate, places[k]))
    return out


def coverage(data: list, *setting: float) -> dict:
    kept, extra = [], []
    for spans, k, duration, (a, b) in data:
        s, e = word_cuts.cut_bounds(spans, k, duration, *setting)
        kept.append(max(0.0, min(b, e) - max(a, s)) / (b - a))
        extra.append(max(0.0, a - s) + max(0.0, e - b))
    return {"mean_kept": round(statistics.mean(kept), 3), "share_below_90": round(sum(x < 0.9 for x in kept) / len(kept), 3),
            "mean_extra_s": round(statistics.mean(extra), 3), "phrases": len(kept)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aligner", default=str(word_cuts.ALIGNER))
    args = p.parse_args(argv)
    data = cases(args.aligner)
    for setting in SETTINGS:
        print(json.dumps({**dict(zip(("lead_s", "tail_s", "previous_s", "following_s"), setting)),
                          **coverage(data, *setting)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
