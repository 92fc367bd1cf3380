"""ASR speed on this machine: training throughput and decoding real-time factor.

Each figure is measured beside a peer in the same run:
- training: our encoder (padded batches, per-length reversal for the backward direction)
  against the same model using PyTorch's packed-sequence bidirectional RNN;
- decoding: our CTC greedy and prefix beam search against torchaudio's flashlight
  ``ctc_decoder`` (lexicon-free, same beam), on the same log-probabilities.

    python bench/asr_speed.py [--config recipes/synth/ctc.yaml] [--model M.pt --manifest test.jsonl]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from asr.config import load_config
from asr.model import ASRModel
from asr.search.ctc import ctc_greedy, ctc_prefix_beam


class PackedRNN(nn.Module):
    """The peer: one nn.GRU/LSTM over packed sequences (the usual PyTorch recipe)."""

    def __init__(self, stacked) -> None:
        super().__init__()
        first = stacked.forward_layers[0]
        cls = type(first)
        self.rnn = cls(first.input_size, first.hidden_size, num_layers=len(stacked.forward_layers),
                       batch_first=True, bidirectional=stacked.backward_layers is not None)

    def forward(self, x, lens):
        packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


def batches(n_batches: int, batch_seconds: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        dur = 1.0 + 2.0 * float(torch.rand(1, generator=g))  # similar lengths, as bucketing gives
        b = max(1, int(batch_seconds // dur))
        lens = (torch.rand(b, generator=g) * 0.1 + 0.9) * dur * 16000
        lens = lens.long()
        waves = torch.randn(b, int(lens.max()), generator=g) * 0.1
        tl = (lens // 1600).clamp(min=2)  # ~10 characters a second
        targets = torch.randint(1, 29, (b, int(tl.max())), generator=g)
        out.append((waves, lens, targets, tl))
    return out


def train_throughput(model: ASRModel, data, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    utts, secs = 0, 0.0
    for i, (w, wl, t, tl) in enumerate(data):
        t0 = time.perf_counter()
        loss = model(w, wl, t, tl)["total"].sum() / tl.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            secs += time.perf_counter() - t0
            utts += w.shape[0]
    return utts / secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="recipes/synth/ctc.yaml")
    p.add_argument("--model", help="trained checkpoint for the decoding part (else untrained)")
    p.add_argument("--manifest", help="audio to decode with --model")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--beam", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(a.config)
    report = {"machine": platform.processor() or platform.machine(), "threads": a.threads,
              "date": time.strftime("%Y-%m-%d"), "config": a.config}

    # ---- training throughput, ours vs packed peer, same weights and batches
    data = batches(a.batches + 2, cfg.train.max_batch_seconds)
    ours = ASRModel(cfg, 29)
    peer = ASRModel(cfg, 29)
    peer.encoder.rnn = PackedRNN(ours.encoder.rnn)
    report["train_utt_per_s"] = round(train_throughput(ours, data), 2)
    report["train_utt_per_s_packed_peer"] = round(train_throughput(peer, data), 2)
    report["train_speedup_vs_packed"] = round(report["train_utt_per_s"] /
                                              report["train_utt_per_s_packed_peer"], 2)

    # ---- decoding RTF
    if a.model:
        from asr.checkpoint import load_model
        from asr.data import read_manifest
        from asr.audio import load_audio

        model, tok, _ = load_model(a.model)
        waves = [load_audio(u.audio, model.cfg.sample_rate) for u in read_manifest(a.manifest)[:64]]
    else:
        model = ours.eval()
        waves = [w[:n] for w, l, _, _ in data[:4] for w, n in zip(w, l)]
    model.eval()
    audio_s = sum(w.numel() for w in waves) / 16000
    lens = torch.tensor([w.numel() for w in waves])
    batch = nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        t0 = time.perf_counter()
        enc, enc_lens = model.encode(batch, lens)
        log_probs = model.heads["ctc"](enc)
        t_enc = time.perf_counter() - t0
    report["audio_seconds_decoded"] = round(audio_s, 1)
    report["rtf_encoder"] = round(t_enc / audio_s, 5)

    def timed(fn):
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    report["rtf_ctc_greedy"] = round((t_enc + timed(lambda: ctc_greedy(log_probs, enc_lens))) / audio_s, 5)
    report["rtf_ctc_prefix_beam"] = round((t_enc + timed(lambda: ctc_prefix_beam(
        log_probs, enc_lens, beam=a.beam, token_prune=8))) / audio_s, 5)
    try:
        from torchaudio.models.decoder import ctc_decoder

        tokens = ["-", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        fl = ctc_decoder(lexicon=None, tokens=tokens, lm=None, beam_size=a.beam,
                         beam_size_token=8, blank_token="-", sil_token="|")
        lp = log_probs.contiguous().float()
        report["rtf_flashlight_beam_peer"] = round((t_enc + timed(lambda: fl(lp, enc_lens))) / audio_s, 5)
        report["beam_search_time_ratio_vs_flashlight"] = round(
            (report["rtf_ctc_prefix_beam"] - report["rtf_encoder"]) /
            max(report["rtf_flashlight_beam_peer"] - report["rtf_encoder"], 1e-9), 2)
    except Exception as exc:  # flashlight-text missing
        report["rtf_flashlight_beam_peer"] = f"unavailable: {exc}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
