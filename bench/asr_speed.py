"""ASR speed on this machine: training throughput and decoding real-time factor.

Each figure is measured beside a peer in the same run:
- training: our encoder (padded batches, per-length reversal for the backward direction)
  against the same model, with the same starting weights, using PyTorch's packed-sequence
  bidirectional RNN; each batch is a step of both, who goes first alternating by batch;
- decoding: our CTC greedy and prefix beam search against torchaudio's flashlight
  ``ctc_decoder`` (lexicon-free, same beam), on the same log-probabilities.
Every timed part (encoder, each search, the peer) is the median of the same number of
repetitions (``--reps``), the order rotating each repetition.

    python bench/asr_speed.py [--config recipes/synth/ctc.yaml] [--model M.pt --manifest test.jsonl]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn as nn

from asr.config import load_config
from asr.model import ASRModel
from asr.search.ctc import ctc_greedy, ctc_prefix_beam


class PackedRNN(nn.Module):
    """The peer: one nn.GRU/LSTM over packed sequences (the usual PyTorch recipe), with the
    weights of ``stacked`` (an asr.encoders.StackedRNN) copied in."""

    def __init__(self, stacked) -> None:
        super().__init__()
        first = stacked.forward_layers[0]
        cls = type(first)
        self.rnn = cls(first.input_size, first.hidden_size, num_layers=len(stacked.forward_layers),
                       batch_first=True, bidirectional=stacked.backward_layers is not None,
                       dropout=stacked.dropout.p if len(stacked.forward_layers) > 1 else 0.0)
        with torch.no_grad():
            for k, fwd in enumerate(stacked.forward_layers):
                directions = [(fwd, "")]
                if stacked.backward_layers is not None:
                    directions.append((stacked.backward_layers[k], "_reverse"))
                for layer, suffix in directions:
                    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(self.rnn, f"{name}_l{k}{suffix}").copy_(getattr(layer, f"{name}_l0"))

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


def train_throughput(models: Dict[str, ASRModel], data, warmup: int = 2) -> Dict[str, float]:
    """Utterances per second of each model, one training step each per batch, the order of
    the models rotating by batch (so neither always runs on a cache the other warmed)."""
    names = list(models)
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    secs = dict.fromkeys(names, 0.0)
    utts = 0
    for i, (w, wl, t, tl) in enumerate(data):
        for n in names[i % len(names):] + names[: i % len(names)]:
            model = models[n].train()
            t0 = time.perf_counter()
            loss = model(w, wl, t, tl)["total"].sum() / tl.sum()
            opts[n].zero_grad()
            loss.backward()
            opts[n].step()
            if i >= warmup:
                secs[n] += time.perf_counter() - t0
        if i >= warmup:
            utts += w.shape[0]
    return {n: utts / secs[n] for n in names}


def timed(fns: Dict[str, Callable[[], object]], reps: int) -> Dict[str, float]:
    """Median seconds of each function over ``reps`` runs, the order rotating each run."""
    names = list(fns)
    runs: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            runs[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="recipes/synth/ctc.yaml")
    p.add_argument("--model", help="trained checkpoint for the decoding part (else untrained)")
    p.add_argument("--manifest", help="audio to decode with --model")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--beam", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="repetitions of every timed decoding part")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(a.config)
    report = {"machine": platform.processor() or platform.machine(), "threads": a.threads,
              "date": time.strftime("%Y-%m-%d"), "config": a.config}

    # ---- training throughput, ours vs packed peer, same weights and batches
    data = batches(a.batches + 2, cfg.train.max_batch_seconds)
    ours = ASRModel(cfg, 29)
    peer = copy.deepcopy(ours)
    peer.encoder.rnn = PackedRNN(ours.encoder.rnn)
    with torch.no_grad():  # the peer computes the same function before training
        x = torch.randn(4, 50, cfg.encoder.hidden_size)
        lens = torch.tensor([50, 31, 17, 10])
        mask = (torch.arange(50)[None, :] < lens[:, None])[..., None]
        torch.testing.assert_close(ours.encoder.rnn.eval()(x, lens) * mask,
                                   peer.encoder.rnn.eval()(x, lens) * mask, atol=1e-5, rtol=1e-4)
    speed = train_throughput({"ours": ours, "peer": peer}, data)
    report["train_utt_per_s"] = round(speed["ours"], 2)
    report["train_utt_per_s_packed_peer"] = round(speed["peer"], 2)
    report["train_speedup_vs_packed"] = round(speed["ours"] / speed["peer"], 2)

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
    audio_s = sum(w.numel() for w in waves) / model.cfg.sample_rate
    lens = torch.tensor([w.numel() for w in waves])
    batch = nn.utils.rnn.pad_sequence(waves, batch_first=True)

    @torch.no_grad()
    def encode():
        enc, enc_lens = model.encode(batch, lens)
        return model.heads["ctc"](enc), enc_lens

    log_probs, enc_lens = encode()
    fns = {"encoder": encode,
           "greedy": lambda: ctc_greedy(log_probs, enc_lens),
           "beam": lambda: ctc_prefix_beam(log_probs, enc_lens, beam=a.beam, token_prune=8)}
    try:
        from torchaudio.models.decoder import ctc_decoder

        tokens = ["-", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        fl = ctc_decoder(lexicon=None, tokens=tokens, lm=None, beam_size=a.beam,
                         beam_size_token=8, blank_token="-", sil_token="|")
        lp = log_probs.contiguous().float()
        fns["flashlight"] = lambda: fl(lp, enc_lens)
    except Exception as exc:  # flashlight-text missing
        report["rtf_flashlight_beam_peer"] = f"unavailable: {exc}"
    t = timed(fns, a.reps)
    report["repetitions"] = a.reps
    report["audio_seconds_decoded"] = round(audio_s, 1)
    report["rtf_encoder"] = round(t["encoder"] / audio_s, 5)
    report["rtf_ctc_greedy"] = round((t["encoder"] + t["greedy"]) / audio_s, 5)
    report["rtf_ctc_prefix_beam"] = round((t["encoder"] + t["beam"]) / audio_s, 5)
    if "flashlight" in t:
        report["rtf_flashlight_beam_peer"] = round((t["encoder"] + t["flashlight"]) / audio_s, 5)
        report["beam_search_time_ratio_vs_flashlight"] = round(t["beam"] / t["flashlight"], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
