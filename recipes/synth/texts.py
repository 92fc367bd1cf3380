"""The synthetic corpus's texts: the shipped text lists, numbers in words, and drawing a text.

Texts are lowercase words matching ``[a-z' ]+`` (:data:`TEXT_RE`): digit strings read digit
by digit, numbers as words (up to 9999), short voice-assistant commands
(``texts/commands.txt``) and short real sentences from LJSpeech (``texts/sentences.txt``,
rebuilt with :func:`build_sentences`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from asr.metadata import read_metadata

TEXT_DIR = Path(__file__).resolve().parent / "texts"

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
_ONES = DIGIT_WORDS + (
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
TEXT_RE = re.compile(r"[a-z']+( [a-z']+)*")


def number_to_words(n: int) -> str:
    """Spell 0 <= n <= 9999 in words, e.g. 421 -> ``four hundred twenty one``."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        head, rest = f"{_ONES[n // 100]} hundred", n % 100
    else:
        head, rest = f"{_ONES[n // 1000]} thousand", n % 1000
    return head if rest == 0 else f"{head} {number_to_words(rest)}"


def normalize_text(text: str) -> str:
    """Lowercase, map hyphens/punctuation to spaces, collapse spaces.

    The result may still contain characters outside ``[a-z' ]`` (digits, accents);
    check it with :data:`TEXT_RE`.
    """
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[-\u2014\u2013\"\u201c\u201d.,;:!?()\[\]]", " ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", " ", text)  # quotes, keep word-internal apostrophes
    return re.sub(r"\s+", " ", text).strip()


def build_sentences(metadata_csv: str | Path, n: int = 600, min_words: int = 4,
                    max_words: int = 10, min_word_count: int = 3) -> list[str]:
    """Pick ``n`` short, complete, common-vocabulary sentences from an LJSpeech metadata file.

    Uses the normalized column (``id|raw|normalized``). A sentence qualifies if its raw text
    ends with ``.``, ``?`` or ``!``, it has ``min_words`` to ``max_words`` words after
    :func:`normalize_text`, it is pure ``[a-z' ]``, and every word occurs at least
    ``min_word_count`` times in the whole file (limits rare vocabulary). Whole sentences
    (raw text starting with a capital) are taken first, then sentence endings; within each
    group the choice is deterministic (ordered by a hash of the text).
    """
    rows = [(row.raw.strip(), normalize_text(row.normalized)) for row in read_metadata(metadata_csv)]
    counts: dict[str, int] = {}
    for _, norm in rows:
        for word in norm.split():
            counts[word] = counts.get(word, 0) + 1
    chosen: dict[str, bool] = {}  # text -> starts with a capital (a whole sentence)
    for raw, norm in rows:
        words = norm.split()
        if not (min_words <= len(words) <= max_words) or not TEXT_RE.fullmatch(norm):
            continue
        if raw[-1:] not in ".?!":
            continue
        if "quote" in words or any(counts[w] < min_word_count for w in words):
            continue
        chosen[norm] = chosen.get(norm, False) or raw[:1].isupper()
    ordered = sorted(chosen, key=lambda s: (not chosen[s], hashlib.sha1(s.encode()).hexdigest()))
    return sorted(ordered[:n])


def load_texts(name: str) -> list[str]:
    """Read one of the shipped text lists (``texts/<name>.txt``), one text per line."""
    lines = (TEXT_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    texts = [t.strip() for t in lines if t.strip() and not t.startswith("#")]
    bad = [t for t in texts if not TEXT_RE.fullmatch(t)]
    if bad:
        raise ValueError(f"texts/{name}.txt has non-normalized lines, e.g. {bad[:3]}")
    return texts


def make_text(kind: str, rng: np.random.Generator, commands: list[str],
              sentences: list[str]) -> str:
    """Draw one text of the given kind."""
    if kind == "digit":  # one isolated digit word, e.g. to augment FSDD
        return DIGIT_WORDS[int(rng.integers(0, 10))]
    if kind == "digits":
        n = int(rng.integers(1, 8))
        return " ".join(DIGIT_WORDS[int(d)] for d in rng.integers(0, 10, size=n))
    if kind == "number":
        ndigits = int(rng.integers(1, 5))  # as many 1-digit as 4-digit numbers
        lo = 0 if ndigits == 1 else 10 ** (ndigits - 1)
        return number_to_words(int(rng.integers(lo, 10**ndigits)))
    if kind == "command":
        return commands[int(rng.integers(len(commands)))]
    if kind == "sentence":
        return sentences[int(rng.integers(len(sentences)))]
    raise ValueError(kind)
