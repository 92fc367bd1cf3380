"""Text normalisation and tokenizers (characters, SentencePiece subwords).

One normaliser is used for training targets and for scoring, so WER never counts
differences of case or punctuation.
"""
from __future__ import annotations

import base64
import io
import re
import unicodedata
from typing import Dict, Iterable, List, Sequence

_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


#: what a corpus writes in square brackets for a sound that is not a word ("[noise]");
#: any other "[word]" is kept: prose puts spoken words there ("he [Oswald] had")
NON_SPEECH = ("noise", "laughter", "laugh", "laughing", "breath", "breathing", "cough",
              "sigh", "sneeze", "lipsmack", "lip-smack", "click", "music", "applause", "sil",
              "silence", "vocalized-noise", "spoken-noise", "noise-vocalized", "inaudible",
              "unintelligible", "unk", "oov", "hesitation")
#: a non-speech marker: one token in angle or curly brackets ("<unk>", "{laugh}", AN4's
#: "<s>"), or a NON_SPEECH word in square brackets ("[noise]", "[vocalized_noise]")
_MARKER = re.compile(r"<[^<>\s]*>|\{[^{}\s]*\}|\[(?:%s)\]"
                     % "|".join(w.replace("-", "[-_]") for w in NON_SPEECH))
#: an amount of money: "$5", "£1,250.50", "€3.5 million"
_CURRENCY = re.compile(r"([$£€]) ?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
                       r"(?: ?(hundred|thousand|million|billion|trillion)\b)?")
#: (one, many, one hundredth, many hundredths) of each currency
_CURRENCY_UNITS = {"$": ("dollar", "dollars", "cent", "cents"),
                   "£": ("pound", "pounds", "penny", "pence"),
                   "€": ("euro", "euros", "cent", "cents")}
#: a decade or century: "1990s", "'90s", "1800's"
_DECADE = re.compile(r"(?<![\w.,])(\d*0)'?s\b")
_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_GROUPED = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_NUMBER = re.compile(r"\d+")


def _cardinal(digits: str) -> str:
    """Spoken form of a digit string: 0-padded strings and very long ones digit by digit
    ("007", a phone number), four-digit years 1100-1999 and 2010-2099 in pairs ("nineteen
    ninety"), other integers as cardinals without "and" ("one hundred five")."""
    from num2words import num2words

    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 9:
        return _digits(digits)
    n = int(digits)
    if len(digits) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return num2words(n, to="year").replace("-", " ")
    return _cardinal_words(n)


def _cardinal_words(n: int) -> str:
    from num2words import num2words

    return num2words(n).replace(" and ", " ").replace("-", " ").replace(",", "")


def _digits(digits: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in digits)


def _money(m: re.Match) -> str:
    """ "$5" -> "five dollars", "$1.50" -> "one dollar fifty cents", "$0.99" -> "ninety nine
    cents", "$2.5 million" -> "two point five million dollars"."""
    symbol, whole, fraction, scale = m.groups()
    one, many, hundredth, hundredths = _CURRENCY_UNITS[symbol]
    n = int(whole.replace(",", ""))
    amount = _cardinal_words(n)
    if fraction and (scale or len(fraction) != 2):  # a decimal amount, not units and cents
        return f" {amount} point {_digits(fraction)} {scale or ''} {many} "
    if scale:
        return f" {amount} {scale} {many} "
    words = f"{amount} {one if n == 1 else many}"
    cents = int(fraction or 0)
    if cents:
        words = (words + " " if n else "") + \
            f"{_cardinal_words(cents)} {hundredth if cents == 1 else hundredths}"
    return f" {words} "


def _decade(m: re.Match) -> str:
    """ "1990s" -> "nineteen nineties", "80s" -> "eighties", "1900s" -> "nineteen hundreds"."""
    *words, last = _cardinal(m.group(1)).split()
    return " " + " ".join(words + [last[:-1] + "ies" if last.endswith("y") else last + "s"]) + " "


def _numbers_as_words(text: str) -> str:
    from num2words import num2words

    text = _CURRENCY.sub(_money, text)
    text = _DECADE.sub(_decade, text)
    # "1,250" is a count, never a year: spell grouped numbers as cardinals first
    text = _GROUPED.sub(lambda m: f" {_cardinal_words(int(m.group().replace(',', '')))} ", text)
    text = _ORDINAL.sub(lambda m: f" {num2words(int(m.group(1)), to='ordinal')} ", text)
    text = _DECIMAL.sub(lambda m: f" {_cardinal(m.group(1))} point {_digits(m.group(2))} ", text)
    text = text.replace("%", " percent ").replace("&", " and ")
    return _NUMBER.sub(lambda m: f" {_cardinal(m.group())} ", text)


def normalize_text(text: str) -> str:
    """The one normalisation for training targets and scoring, for every corpus.

    Lowercase; accents stripped; non-speech markers dropped (one token in angle or curly
    brackets, "<unk>", "{laugh}", or a :data:`NON_SPEECH` word in square brackets,
    "[noise]", "[laughter]"; other "[words]" stay words); numbers spoken as words (cardinals without "and",
    ordinals, decimals with "point", years 1100-1999 and 2010-2099 in pairs, 0-padded or
    longer than 9 digits digit by digit; decades "1990s" -> nineteen nineties, "'80s" ->
    eighties; money "$5" -> five dollars, "$1.50" -> one dollar fifty cents, "£3" -> three
    pounds, "€2.5 million" -> two point five million euros; "%" -> percent, "&" -> and);
    then only a-z, apostrophe and space are kept: hyphens and other punctuation become
    spaces, runs of spaces collapse to one, apostrophes at word edges are dropped (inner
    ones stay).

    >>> normalize_text("Hello, World-wide  Web's 2 cats, 1st of 25 in 1990!")
    "hello world wide web's two cats first of twenty five in nineteen ninety"
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _MARKER.sub(" ", text.replace("\u2019", "'"))
    if any(ch.isdigit() for ch in text):
        text = _numbers_as_words(text)
    text = _NOT_ALLOWED.sub(" ", text)
    words = [w.strip("'") for w in text.split(" ")]
    return _SPACES.sub(" ", " ".join(w for w in words if w)).strip()


class Tokenizer:
    """Maps normalised text to token ids and back. Id 0 is always the CTC/RNN-T blank."""

    blank_id = 0

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token(self, idx: int) -> str:
        raise NotImplementedError

    def word_separator(self) -> int:
        """The token between words, for word-level LMs over character outputs."""
        raise ValueError(f"{type(self).__name__} has no single word-separator token; "
                         "word LMs need a character tokenizer")

    def to_dict(self) -> Dict:
        raise NotImplementedError

    @staticmethod
    def from_dict(d: Dict) -> "Tokenizer":
        kind = d["kind"]
        if kind == "char":
            return CharTokenizer(d["chars"])
        if kind == "sentencepiece":
            return SentencePieceTokenizer(base64.b64decode(d["model"]))
        raise ValueError(f"unknown tokenizer kind {kind!r}")


class CharTokenizer(Tokenizer):
    """Characters: blank, space, apostrophe and a-z by default."""

    DEFAULT = " 'abcdefghijklmnopqrstuvwxyz"

    def __init__(self, chars: str = DEFAULT) -> None:
        self.chars = chars
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> List[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary; "
                             f"normalize the text first (text: {text!r})") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i > 0)

    def word_separator(self) -> int:
        if " " not in self._index:
            return super().word_separator()
        return self._index[" "]

    def token(self, idx: int) -> str:
        return "<blank>" if idx == 0 else self.chars[idx - 1]

    def to_dict(self) -> Dict:
        return {"kind": "char", "chars": self.chars}


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece subwords; piece i is token i + 1 (0 stays the blank)."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 256,
              model_type: str = "unigram") -> "SentencePieceTokenizer":
        """Train on normalised texts, all in memory (nothing written to disk)."""
        import sentencepiece as spm

        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("cannot train a SentencePiece model on no text")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1,
            unk_id=0, hard_vocab_limit=False, minloglevel=2,
        )
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + 1

    def encode(self, text: str) -> List[int]:
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i - 1 for i in ids if i > 0])

    def token(self, idx: int) -> str:
        return "<blank>" if idx == 0 else self.sp.id_to_piece(idx - 1)

    def to_dict(self) -> Dict:
        return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode()}


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 256) -> Tokenizer:
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size)
    raise ValueError(f"tokenizer must be 'char' or 'sentencepiece', got {kind!r}")
