"""A small LSTM language model over the acoustic model's token ids, for N-best rescoring.

It reads the same ids the tokenizer emits (``asr.text``: 1 .. V-1 are text tokens, 0 is
the CTC/RNN-T blank and never a text token), so id 0 doubles as the sentence boundary:
it is the input before the first token and the target after the last, and the LM's
V-way output at class 0 is P(end of sentence). Hypotheses from any search score without
re-tokenising. Trained and saved by :func:`train_neural_lm` / :meth:`LSTMLM.save`.

Shape letters: ``N`` sequences, ``U`` tokens, ``V`` tokenizer vocabulary (blank included),
``E`` embedding width, ``H`` hidden width.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from asr.checkpoint import CheckpointError, read_state, write_state
from asr.config import from_dict, to_dict
from asr.text import Tokenizer, normalize_text

FORMAT = "speechkit-lstm-lm/1"
BOUNDARY = 0  # the blank id: never a text token, so free to mark sentence start and end


@dataclass
class LSTMLMConfig:
    embedding_size: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.1


class LSTMLM(nn.Module):
    """Token LSTM LM with the tokenizer it was trained for (``tokenizer``)."""

    def __init__(self, cfg: LSTMLMConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        V = tokenizer.vocab_size
        self.embedding = nn.Embedding(V, cfg.embedding_size)
        self.lstm = nn.LSTM(cfg.embedding_size, cfg.hidden_size, cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden_size, V)

    def token_log_probs(self, tokens: Tensor, lens: Tensor) -> Tensor:
        """tokens (N, U) long, lens (N,) -> (N, U + 1) log P of each token and, at
        position ``lens[n]``, of the end of sentence; 0 past it (padding is ignored: the
        LSTM reads left to right, so nothing after a sequence's end reaches its scores)."""
        N, U = tokens.shape
        positions = torch.arange(U + 1, device=tokens.device)[None, :]  # (1, U + 1)
        valid = positions < lens[:, None]  # (N, U + 1): real tokens
        padded = F.pad(tokens, (0, 1), value=BOUNDARY)  # (N, U + 1)
        targets = torch.where(valid, padded, torch.full_like(padded, BOUNDARY))
        inputs = F.pad(targets[:, :-1], (1, 0), value=BOUNDARY)  # boundary, then the tokens
        hidden, _ = self.lstm(self.embedding(inputs))  # (N, U + 1, H)
        log_probs = self.output(self.dropout(hidden)).log_softmax(-1)  # (N, U + 1, V)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, U + 1)
        return picked * (positions <= lens[:, None])

    def sequence_log_probs(self, tokens: Tensor, lens: Tensor) -> Tensor:
        """tokens (N, U) long, lens (N,) -> (N,) log P(tokens[n, :lens[n]], end of sentence)."""
        if tokens.dim() != 2 or lens.shape != tokens.shape[:1]:
            raise ValueError(f"tokens must be (N, U) and lens (N,), got {tuple(tokens.shape)} "
                             f"and {tuple(lens.shape)}")
        return self.token_log_probs(tokens, lens).sum(-1)

    def save(self, path: str | Path) -> Path:
        """One file (written atomically): resolved config, tokenizer, weights."""
        return write_state(path, {"format": FORMAT, "config": to_dict(self.cfg),
                                  "tokenizer": self.tokenizer.to_dict(),
                                  "model": self.state_dict()})

    @classmethod
    def load(cls, path: str | Path) -> "LSTMLM":
        """The LM saved at ``path``, in eval mode; a truncated or foreign file is refused
        naming the path."""
        state = read_state(path, FORMAT, "LSTM LM", "speechkit LSTM LM")
        cfg = from_dict(LSTMLMConfig, state["config"], where=f"{path}:config")
        lm = cls(cfg, Tokenizer.from_dict(state["tokenizer"]))
        try:
            lm.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: LM weights do not match its config ({exc})") from None
        return lm.eval()


def _batches(sequences: Sequence[List[int]], batch_size: int, rng: Optional[random.Random]):
    """(tokens (N, U), lens (N,)) batches of ``sequences``, shuffled when ``rng`` is given."""
    order = list(range(len(sequences)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start:start + batch_size]]
        lens = torch.tensor([len(s) for s in chunk])
        tokens = nn.utils.rnn.pad_sequence([torch.tensor(s, dtype=torch.long) for s in chunk],
                                           batch_first=True, padding_value=BOUNDARY)
        yield tokens, lens


@torch.no_grad()
def perplexity(lm: LSTMLM, sequences: Sequence[List[int]], batch_size: int = 64) -> float:
    """Per-token perplexity of token-id ``sequences``, each sentence end counted as a token."""
    if not sequences:
        raise ValueError("perplexity of no sequences")
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for tokens, lens in _batches(sequences, batch_size, None):
        total -= float(lm.sequence_log_probs(tokens, lens).sum())
        count += int(lens.sum()) + len(lens)
    lm.train(was_training)
    return math.exp(total / count)


def train_neural_lm(texts: Iterable[str], tokenizer: Tokenizer, cfg: Optional[LSTMLMConfig] = None,
                    epochs: int = 10, max_minutes: Optional[float] = None,
                    max_steps: Optional[int] = None, batch_size: int = 32, lr: float = 2e-3,
                    valid_share: float = 0.05, seed: int = 0, threads: int = 1,
                    progress: bool = True) -> Tuple[LSTMLM, Dict]:
    """Train an :class:`LSTMLM` (``cfg``, default :class:`LSTMLMConfig`) on text lines
    (normalised here; empty ones skipped).

    A seeded ``valid_share`` of the sentences is held out (at least one when there are
    two or more). Training stops after ``epochs``, ``max_steps`` optimiser steps or
    ``max_minutes``, whichever comes first. Returns the LM (eval mode) and a report:
    train (on up to 2000 sentences) and valid perplexity per token, sentences, steps,
    minutes, parameters.
    """
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sentences = [s for s in (normalize_text(t) for t in texts) if s]
    if not sentences:
        raise ValueError("cannot train an LM on no text (every line empty after normalising)")
    sequences = [tokenizer.encode(s) for s in sentences]
    rng = random.Random(seed)
    order = list(range(len(sequences)))
    rng.shuffle(order)
    n_valid = min(max(1, round(valid_share * len(order))), len(order) - 1) if valid_share > 0 else 0
    valid = [sequences[i] for i in order[:n_valid]]
    train = [sequences[i] for i in order[n_valid:]]

    lm = LSTMLM(cfg or LSTMLMConfig(), tokenizer)
    optimizer = torch.optim.Adam(lm.parameters(), lr=lr)
    start, steps, epochs_done = time.monotonic(), 0, 0
    out_of_time = lambda: max_minutes is not None and time.monotonic() - start > 60 * max_minutes
    out_of_steps = lambda: max_steps is not None and steps >= max_steps
    lm.train()
    bar = tqdm(total=epochs * math.ceil(len(train) / batch_size), desc="lm", disable=not progress,
               dynamic_ncols=True, leave=False)
    for _ in range(epochs):
        for tokens, lens in _batches(train, batch_size, rng):
            if out_of_time() or out_of_steps():
                break
            # mean per token (sentence ends included), so long sentences weigh by length
            loss = -lm.sequence_log_probs(tokens, lens).sum() / (lens.sum() + len(lens))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            optimizer.step()
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        else:
            epochs_done += 1
            continue
        break
    bar.close()
    minutes = (time.monotonic() - start) / 60
    lm.eval()
    report = {"sentences": len(sentences), "train_sentences": len(train),
              "valid_sentences": len(valid), "steps": steps, "epochs": epochs_done,
              "minutes": round(minutes, 2),
              "parameters": sum(p.numel() for p in lm.parameters()),
              # a seeded sample of the training sentences: the whole set can take minutes
              "train_perplexity": round(perplexity(lm, rng.sample(train, min(len(train), 2000))), 4),
              "valid_perplexity": round(perplexity(lm, valid), 4) if valid else None}
    return lm, report
