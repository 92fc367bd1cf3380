"""A start checkpoint for a SentencePiece CTC model from a trained character CTC model.

    python -m recipes.english.piece_init --model data/models/english_ctc.pt \
        --train exp/english/data/train.jsonl --pieces 256 --out sp256_init.pt

Keeps every weight but the CTC output layer (its rows are the characters; the pieces start
it afresh) and saves a SentencePiece tokenizer trained on the manifest's transcripts the way
the trainer trains one, so ``python -m asr train --init-from OUT --set
tokenizer.kind=sentencepiece`` continues with it (README, "Units and synthetic speech").
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from asr.checkpoint import read_checkpoint
from asr.data import read_manifest
from asr.text import build_tokenizer, normalize_text


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True, help="training manifest (its transcripts train the pieces)")
    p.add_argument("--pieces", type=int, default=256)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    state = read_checkpoint(a.model)
    texts = [normalize_text(u.text) for u in read_manifest(a.train)]
    tok = build_tokenizer("sentencepiece", texts, a.pieces)
    dropped = [k for k in state["model"] if k.startswith("heads.ctc.proj")]
    if not dropped:
        raise ValueError(f"{a.model}: no CTC output layer (heads.ctc.proj) to replace")
    state["model"] = {k: v for k, v in state["model"].items() if k not in dropped}
    state["tokenizer"] = tok.to_dict()
    state["config"]["tokenizer"] = {"kind": "sentencepiece", "vocab_size": a.pieces}
    torch.save(state, a.out)
    summary = {"out": a.out, "pieces": tok.vocab_size - 1, "dropped": dropped,
               "tokens_per_transcript": round(sum(len(tok.encode(t)) for t in texts) / len(texts), 2)}
    print(summary)
    return summary


if __name__ == "__main__":
    main()
