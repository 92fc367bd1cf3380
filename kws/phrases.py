"""Text lists for custom wake words: near-miss phrases generated from the wake phrase, and
negative sentences from a text corpus. Text only (no synthesis, no audio).

Near misses share syllables with the wake phrase but are not it: the phrase's words alone
("hey jarvis" -> "jarvis", "hey"), its syllables ("jar", "vis"), a word with another
onset ("travis", "marvis") or another first vowel ("jervis"), another ending ("jarvo"),
another leading word ("hi jarvis"), and real words from a vocabulary that share a
syllable with it ("jargon", "visit").
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from asr.metadata import read_metadata

__all__ = ["normalize", "syllables", "near_miss_phrases", "sentence_vocabulary", "negative_sentences",
           "contains_phrase"]

VOWELS = "aeiouy"
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "ch", "sh", "th", "tr", "st", "br", "cl", "gr", "sp"]
FIRST_VOWELS = ["a", "e", "i", "o", "u", "ee", "oo"]
ENDINGS = ["a", "o", "er", "y", "in", "et", "on", "ice", "us"]
LEAD_WORDS = ["hi", "hay", "they", "say", "okay", "a", "the", "oh"]


def normalize(text: str) -> str:
    """Lowercase letters and single spaces only."""
    return " ".join(re.findall(r"[a-z']+", text.lower())).replace("'", "")


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether ``text`` holds ``phrase`` (letters only, spaces ignored: "jar vis" holds
    "jarvis")."""
    squash = lambda s: re.sub(r"[^a-z]", "", s.lower())  # noqa: E731
    return squash(phrase) in squash(text)


def syllables(word: str) -> List[str]:
    """A spelling-based split into syllables: one vowel group each; of the consonants
    between two vowel groups, a single one starts the next syllable and a longer cluster
    is split after its first consonant ("jarvis" -> jar, vis; "alexa" -> a, le, xa)."""
    word = re.sub(r"[^a-z]", "", word.lower())
    groups = [(m.start(), m.end()) for m in re.finditer(f"[{VOWELS}]+", word)]
    if word.endswith("e") and len(groups) > 1 and groups[-1] == (len(word) - 1, len(word)):
        groups = groups[:-1]  # silent final e ("dispute")
    if len(groups) <= 1:
        return [word] if word else []
    cuts = []
    for (_, e0), (s1, _) in zip(groups, groups[1:]):
        gap = s1 - e0
        cuts.append(e0 if gap <= 1 else e0 + 1)
    parts, prev = [], 0
    for c in cuts:
        parts.append(word[prev:c])
        prev = c
    parts.append(word[prev:])
    return parts


def _onset(word: str) -> str:
    m = re.match(f"[^{VOWELS}]*", word)
    return m.group(0) if m else ""


def _word_variants(word: str) -> Dict[str, List[str]]:
    """Variants of one word by kind (onset, vowel, ending, syllable)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    out: Dict[str, List[str]] = {"syllable": [], "onset": [], "vowel": [], "ending": []}
    if not w:
        return out
    sy = syllables(w)
    if len(sy) > 1:
        out["syllable"] = [s for s in sy if len(s) >= 2]
        if len(sy) > 2:  # the word without its first or last syllable ("lexa", "compu")
            out["syllable"] += ["".join(sy[1:]), "".join(sy[:-1])]
    on = _onset(w)
    rest = w[len(on):]
    if rest:
        out["onset"] = [o + rest for o in ONSETS if o != on]
        if on:
            out["onset"].append(rest)  # onset dropped ("arvis")
        m = re.match(f"[{VOWELS}]+", rest)
        if m:
            after = rest[m.end():]
            out["vowel"] = [on + v + after for v in FIRST_VOWELS if v != m.group(0)]
            if len(sy) > 1 and len(sy[0]) > len(on) + len(m.group(0)):
                # the first syllable without its coda, with another onset ("jarvis" -> "travis")
                tail = m.group(0) + w[len(sy[0]):]
                out["onset"] += [o + tail for o in ONSETS if o != on]
    if len(sy) > 1:
        last = sy[-1]
        stem = w[: len(w) - len(last)]
        lon = _onset(last)
        out["ending"] = [stem + lon + e for e in ENDINGS if lon + e != last]
    return out


def sentence_vocabulary(texts_csv: str | Path) -> Dict[str, int]:
    """Word counts of an LJSpeech-style ``id|raw|normalized`` file (third column)."""
    vocab: Dict[str, int] = {}
    for row in read_metadata(texts_csv, strict=True):
        for w in re.findall(r"[a-z]+", row.normalized.lower()):
            vocab[w] = vocab.get(w, 0) + 1
    return vocab


def near_miss_phrases(phrase: str, limit: int = 40, vocabulary: Optional[Dict[str, int]] = None,
                      seed: int = 0) -> List[str]:
    """Up to ``limit`` phrases that share syllables with ``phrase`` but are not it
    (none contains the phrase's letters in order), deterministic for a ``seed``.

    Kinds are interleaved so that a small limit still covers each: partial phrases and
    syllables first, then one word changed at a time (onset, first vowel, ending, leading
    word), then vocabulary words sharing a syllable (3+ letters) with a phrase word.
    """
    words = normalize(phrase).split()
    if not words:
        raise ValueError(f"wake phrase {phrase!r} has no letters")
    rng = random.Random(seed)
    partial: List[str] = []
    if len(words) > 1:
        partial += [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
        partial += [" ".join(words[:-1] + [s]) for s in _word_variants(words[-1])["syllable"]]
    for w in words:
        partial += _word_variants(w)["syllable"]
    changed: Dict[str, List[str]] = {"onset": [], "vowel": [], "ending": [], "lead": []}
    for i, w in enumerate(words):
        for kind, vs in _word_variants(w).items():
            if kind == "syllable":
                continue
            rng.shuffle(vs)
            changed[kind] += [" ".join(words[:i] + [v] + words[i + 1:]) for v in vs]
    if len(words) > 1:
        changed["lead"] = [" ".join([lw] + words[1:]) for lw in LEAD_WORDS if lw != words[0]]
    else:
        changed["lead"] = []  # "hey jarvis" contains "jarvis": never a near miss of it
    vocab_words: List[str] = []
    if vocabulary:
        keys = {s for w in words for s in syllables(w) if len(s) >= 3}
        keys |= {w[:3] for w in words if len(w) >= 4} | {w[-4:] for w in words if len(w) >= 5}
        cands = [v for v in vocabulary if len(v) >= 3 and any(k in v for k in keys)]
        cands.sort(key=lambda v: (-vocabulary[v], v))
        vocab_words = cands
    streams = [partial, changed["onset"], changed["lead"], changed["vowel"], changed["ending"], vocab_words]
    out: List[str] = []
    seen = set()

    def ok(p: str) -> bool:
        return bool(p.strip()) and not contains_phrase(p, phrase) and p not in seen

    # partial phrases first (all of them), then round-robin over the other kinds
    for p in partial:
        if ok(p) and len(out) < limit:
            seen.add(p)
            out.append(p)
    iters = [iter(s) for s in streams[1:]]
    while len(out) < limit and iters:
        for it in list(iters):
            for p in it:
                if ok(p):
                    seen.add(p)
                    out.append(p)
                    break
            else:
                iters.remove(it)
            if len(out) >= limit:
                break
    return out


def negative_sentences(texts_csv: str | Path, phrase: str, n: int, seed: int = 0,
                       min_chars: int = 20, max_chars: int = 160) -> List[str]:
    """``n`` normalized sentences from an ``id|raw|normalized`` file that do not contain
    the phrase, shuffled with ``seed``."""
    rows = []
    for row in read_metadata(texts_csv, strict=True):
        t = row.normalized.strip()
        if min_chars <= len(t) <= max_chars and not contains_phrase(t, phrase):
            rows.append(t)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def dedupe(items: Iterable[str]) -> List[str]:
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
