"""Word timings by CTC forced alignment: where each word of a known transcript lies in
the audio (for cutting words out of running speech, checking transcripts, subtitles).

    model, tokenizer, _ = load_model("data/models/english_ctc.pt")
    spans = align_words(model, tokenizer, wave, "turn the light on")
    # [WordSpan(word='turn', start=0.36, end=0.56, score=0.93), ...]

The alignment is the Viterbi path of the CTC head (``torchaudio.functional.forced_align``).
CTC emits each token as a spike of one or a few frames, so a span runs from the first frame
of the word's first token to the end of the frame of its last token: it sits inside the
spoken word, which starts a little earlier and ends a little later. Pad it for cutting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torchaudio.functional as AF

from asr.heads.ctc import CTCHead
from asr.text import CharTokenizer, Tokenizer, normalize_text

__all__ = ["WordSpan", "AlignmentError", "align_words", "word_groups"]


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: float  # seconds: start of the frame of the word's first token
    end: float  # seconds: end of the frame of its last token
    score: float  # mean posterior of the word's tokens on their aligned frames (0..1)


class AlignmentError(ValueError):
    """The transcript cannot be aligned to the audio (empty, or too long for its frames)."""


def word_groups(tokenizer: Tokenizer, tokens: List[int]) -> List[List[int]]:
    """Indices into ``tokens`` of each word's tokens: characters split at the separator,
    SentencePiece pieces at each piece that starts a word ("▁")."""
    groups: List[List[int]] = []
    if isinstance(tokenizer, CharTokenizer):
        sep = tokenizer.word_separator()
        current: List[int] = []
        for i, tok in enumerate(tokens):
            if tok == sep:
                if current:
                    groups.append(current)
                current = []
            else:
                current.append(i)
        if current:
            groups.append(current)
        return groups
    for i, tok in enumerate(tokens):
        if not groups or tokenizer.token(tok).startswith("\u2581"):
            groups.append([])
        groups[-1].append(i)
    return [g for g in groups if any(tokenizer.token(tokens[i]).strip("\u2581") for i in g)]


@torch.no_grad()
def align_words(model, tokenizer: Tokenizer, wave: torch.Tensor, text: str,
                head: str = "ctc") -> List[WordSpan]:
    """Word spans of ``text`` (normalised first, :func:`asr.text.normalize_text`) in ``wave``.

    Args:
        model: an :class:`asr.model.ASRModel` with a CTC head (in eval mode).
        tokenizer: its tokenizer.
        wave: (N,) samples at the model's rate.
        text: the transcript.
        head: the name of the CTC head.
    Returns:
        one :class:`WordSpan` per word of the normalised text, in order.
    Raises:
        AlignmentError: empty text, or more tokens (with the blanks repeats need) than frames.
    """
    ctc = model.heads[head] if head in model.heads else None
    if not isinstance(ctc, CTCHead):
        raise ValueError(f"align_words needs a CTC head named {head!r}; the model has {list(model.heads)}")
    words = normalize_text(text)
    if not words:
        raise AlignmentError(f"nothing to align: the transcript {text!r} is empty once normalised")
    tokens = tokenizer.encode(words)
    enc, enc_lens = model.encode(wave[None].float(), torch.tensor([wave.numel()]))
    log_probs = ctc(enc)[0, : int(enc_lens[0])].float()
    needed = len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
    if needed > log_probs.shape[0]:
        raise AlignmentError(f"the transcript {words!r} needs {needed} frames, the audio has "
                             f"{log_probs.shape[0]} ({wave.numel() / model.cfg.features.sample_rate:.2f} s)")
    path, scores = AF.forced_align(log_probs[None], torch.tensor([tokens], dtype=torch.int32),
                                   blank=tokenizer.blank_id)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=tokenizer.blank_id)
    if len(spans) != len(tokens):  # merge_tokens joins nothing: repeats are split by blanks
        raise AlignmentError(f"alignment of {words!r} gave {len(spans)} token spans for {len(tokens)} tokens")
    groups = word_groups(tokenizer, tokens)
    if len(groups) != len(words.split(" ")):
        raise AlignmentError(f"{words!r}: the tokenizer's pieces make {len(groups)} words")
    frame = model.frame_seconds
    out = []
    for group, word in zip(groups, words.split(" ")):
        first, last = spans[group[0]], spans[group[-1]]
        score = sum(spans[i].score for i in group) / len(group)
        out.append(WordSpan(word, first.start * frame, last.end * frame, float(score)))
    return out
