"""A small token n-gram LM for shallow fusion in beam search.

Interpolated Witten-Bell smoothing (every order mixes with the next lower one, down to an
add-one unigram), over the same token ids the acoustic model emits, so it plugs into
``ctc_prefix_beam`` and ``transducer_beam`` as ``lm(prefix, token) -> log P(token | prefix)``.
For a large word LM use KenLM through pyctcdecode or flashlight; this one is for
domain text (commands, digits) trained in seconds from transcripts.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

BOS = -1  # sentence start, never emitted
NEG_INF = float("-inf")


class NgramLM:
    """Token n-gram LM. With ``end_of_sentence`` it also models the end of each training
    sequence (as an extra token id ``vocab_size``) and :meth:`final` scores it, so a
    search stops preferring hypotheses cut off mid-sentence."""

    def __init__(self, order: int, vocab_size: int, end_of_sentence: bool = False) -> None:
        if order < 1:
            raise ValueError("order must be >= 1")
        self.order = order
        self.vocab_size = vocab_size
        self.end_of_sentence = end_of_sentence
        self.eos = vocab_size  # id of the end token when it is modelled
        # counts[k][context of length k] = Counter(next token)
        self.counts: List[Dict[Tuple[int, ...], Counter]] = [defaultdict(Counter) for _ in range(order)]
        self._memo: Dict[Tuple[Tuple[int, ...], int], float] = {}

    @classmethod
    def train(cls, sequences: Iterable[Sequence[int]], order: int, vocab_size: int,
              end_of_sentence: bool = False) -> "NgramLM":
        """Count n-grams over token-id sequences (each starts after ``BOS`` padding)."""
        lm = cls(order, vocab_size, end_of_sentence)
        for seq in sequences:
            padded = [BOS] * (order - 1) + list(seq) + ([lm.eos] if end_of_sentence else [])
            for i in range(order - 1, len(padded)):
                tok = padded[i]
                for k in range(order):
                    lm.counts[k][tuple(padded[i - k:i])][tok] += 1
        return lm

    def _prob(self, context: Tuple[int, ...], token: int) -> float:
        if not context:
            uni = self.counts[0][()]
            return (uni[token] + 1) / (sum(uni.values()) + self.vocab_size + self.end_of_sentence)
        lower = self._prob(context[1:], token)
        c = self.counts[len(context)].get(context)
        if not c:
            return lower
        total, types = sum(c.values()), len(c)
        return (c[token] + types * lower) / (total + types)

    def __call__(self, prefix: Tuple[int, ...], token: int) -> float:
        """log P(token | prefix): the LM-fusion interface of the beam searches."""
        k = self.order - 1
        context = tuple(([BOS] * k + list(prefix))[-k:]) if k else ()
        key = (context, token)
        if key not in self._memo:
            self._memo[key] = math.log(self._prob(context, token))
        return self._memo[key]

    def final(self, prefix: Tuple[int, ...]) -> float:
        """log P(end of sentence | prefix), or 0 when the end is not modelled."""
        return self(prefix, self.eos) if self.end_of_sentence else 0.0

    def save(self, path: str | Path) -> None:
        data = {"order": self.order, "vocab_size": self.vocab_size,
                "end_of_sentence": self.end_of_sentence,
                "counts": [[[list(ctx), dict(c)] for ctx, c in level.items()] for level in self.counts]}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "NgramLM":
        data = json.loads(Path(path).read_text())
        lm = cls(data["order"], data["vocab_size"], data.get("end_of_sentence", False))
        for k, level in enumerate(data["counts"]):
            for ctx, c in level:
                lm.counts[k][tuple(ctx)] = Counter({int(t): n for t, n in c.items()})
        return lm


EOS_WORD = "</s>"
UNKNOWN_WORD = -2  # id of a completed word that is not in the lexicon (never scored)


class WordLM:
    """A word n-gram LM with a lexicon, scored one character token at a time.

    Plugs into the character-level searches (``ctc_prefix_beam``, ``transducer_beam``)
    through the same ``lm(prefix, token)`` interface as :class:`NgramLM`:

    * a letter costs nothing while the word being spelled is a prefix of a lexicon word,
      and is forbidden (``-inf``) otherwise, so the search only spells known words;
    * the word separator (``space_id``) costs ``log P(word | previous words)``;
    * ``final(prefix)`` scores the last, unterminated word and the end of the sentence;
      the searches add it before ranking complete hypotheses.

    The lexicon and the LM are built from transcripts (:meth:`train`): a closed-vocabulary
    decoder for a domain whose words are known (commands, digits, a fixed text set).
    """

    MEMO_LIMIT = 200_000  # cached (prefix, token) scores before the cache starts over

    def __init__(self, lm: NgramLM, words: Sequence[str], encode, space_id: int) -> None:
        self.lm = lm
        self.words = list(words)
        self.word_ids = {w: i for i, w in enumerate(self.words)}
        self.space_id = space_id
        self._spelling = {tuple(encode(w)): i for i, w in enumerate(self.words) if w != EOS_WORD}
        self._prefixes = {s[:k] for s in self._spelling for k in range(len(s) + 1)}
        self._memo: Dict[Tuple[Tuple[int, ...], int], float] = {}

    @classmethod
    def train(cls, texts: Iterable[str], order: int, encode, space_id: int) -> "WordLM":
        """Build from normalised transcripts (words separated by single spaces)."""
        sentences = [t.split() for t in texts if t.split()]
        words = sorted({w for s in sentences for w in s}) + [EOS_WORD]
        index = {w: i for i, w in enumerate(words)}
        lm = NgramLM.train(([index[w] for w in s] + [index[EOS_WORD]] for s in sentences),
                           order, len(words))
        return cls(lm, words, encode, space_id)

    def _split(self, prefix: Tuple[int, ...]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """Word ids of the completed words, and the tokens of the word being spelled."""
        words, start = [], 0
        for i, tok in enumerate(prefix):
            if tok == self.space_id:
                words.append(self._spelling.get(prefix[start:i], UNKNOWN_WORD))
                start = i + 1
        return tuple(words), prefix[start:]

    def __call__(self, prefix: Tuple[int, ...], token: int) -> float:
        key = (prefix, token)
        score = self._memo.get(key)
        if score is None:
            words, partial = self._split(prefix)
            if token != self.space_id:
                score = 0.0 if partial + (token,) in self._prefixes else NEG_INF
            else:
                word = self._spelling.get(partial)
                score = NEG_INF if word is None else self.lm(words, word)
            if len(self._memo) >= self.MEMO_LIMIT:  # keyed by whole prefixes: bound it
                self._memo.clear()
            self._memo[key] = score
        return score

    def final(self, prefix: Tuple[int, ...]) -> float:
        """log-prob of ending here: the last word (if unterminated) then end of sentence."""
        words, partial = self._split(prefix)
        score = 0.0
        if partial:
            word = self._spelling.get(partial)
            if word is None:
                return NEG_INF
            score += self.lm(words, word)
            words = words + (word,)
        return score + self.lm(words, self.word_ids[EOS_WORD])



def build_lm(kind: str, texts: Iterable[str], order: int, tokenizer) -> "NgramLM | WordLM":
    """An LM for shallow fusion over ``tokenizer``'s tokens from normalised ``texts``:
    ``char`` a token n-gram with the sentence end modelled (open vocabulary), ``word`` a
    word n-gram whose lexicon limits the search to the words of ``texts``."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("cannot build an LM from no text")
    if kind == "word":
        return WordLM.train(texts, order, tokenizer.encode, tokenizer.word_separator())
    if kind == "char":
        return NgramLM.train((tokenizer.encode(t) for t in texts), order, tokenizer.vocab_size,
                             end_of_sentence=True)
    raise ValueError(f"lm kind must be 'char' or 'word', got {kind!r}")
