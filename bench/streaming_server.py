"""Streaming speed and latency in one run: our torch streaming path, our ONNX streaming path
(fp32 and int8) and pocketsphinx, then the server under load.

(a) Real-time factor on ONE thread (torch.set_num_threads(1), onnxruntime
    intra_op_num_threads=1): every utterance is fed in ``--piece-ms`` pieces, each piece
    decoded and its partial read (pocketsphinx: ``process_raw`` then ``hyp()``), the engines
    interleaved per utterance (the order rotating), the same waveforms; compute time only.
(b) Partial delay: for each reference word, the time from the last audio of the word to
    the first partial containing it. Word starts and ends come from CTC forced alignment of
    the reference on the model's own offline log-probs (torchaudio.functional.forced_align).
    Pieces arrive at real time; a piece's partial is out at
    ``max(piece end, previous partial out) + its compute time`` (a decoder that falls
    behind queues). A word counts once the partial's words, aligned (difflib) to the
    reference words that had begun by the partial's time, match it; words never matched
    are counted apart.
(c) Server capacity: ``python -m asr serve`` as a subprocess (one decode thread), N
    WebSocket clients each streaming utterances one after another at real time in
    ``--server-piece-ms`` pieces (a session per utterance, so N streams are always open), N increasing until p95 partial delay (as in (b), in wall
    time) reaches 500 ms, a sender falls more than 200 ms behind real time (the server
    stopped reading: backpressure), or a stream does not finish; the largest N that
    passes, for the torch checkpoint and the ONNX export.

    python bench/streaming_server.py --model exp/models/M.pt --onnx exp/onnx/M \\
        --manifest exp/english/data/eval_an4.jsonl exp/english/data/eval_speechocean762.jsonl \\
        --limit 8 --out exp/bench/streaming_server

Writes OUT.json, OUT.png and prints a summary table (markdown).
"""
from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.decoding import decoding_options  # noqa: E402
from asr.text import normalize_text  # noqa: E402

SR = 16000


# ------------------------------------------------------------------ engines
class StreamingEngine:
    """Our recognizer (torch or onnxruntime) fed piece by piece: returns per piece the
    compute seconds and the partial's text."""

    def __init__(self, name: str, recognizer) -> None:
        self.name, self.rec = name, recognizer

    def run(self, wave: np.ndarray, piece: int):
        stream = self.rec.create_stream()
        costs, cpu, texts = [], [], []
        for i in range(0, wave.size, piece):
            t, c = time.perf_counter(), time.thread_time()
            stream.accept_waveform(SR, wave[i:i + piece])
            if i + piece >= wave.size:
                stream.input_finished()
            self.rec.decode_stream(stream)
            text = stream.result().text
            costs.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            texts.append(text)
        return costs, cpu, texts


class PocketSphinxEngine:
    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(loglevel="FATAL")  # bundled en-us model, dictionary and LM

    def run(self, wave: np.ndarray, piece: int):
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        costs, cpu, texts = [], [], []
        self.decoder.start_utt()
        for i in range(0, wave.size, piece):
            t, c = time.perf_counter(), time.thread_time()
            self.decoder.process_raw(pcm[i:i + piece].tobytes(), False, False)
            if i + piece >= wave.size:
                self.decoder.end_utt()
            hyp = self.decoder.hyp()
            costs.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            texts.append(hyp.hypstr if hyp is not None else "")
        return costs, cpu, texts


def build_engines(model_path: str, onnx_dir: str, names: Sequence[str], lm: bool):
    from asr.streaming import Recognizer as TorchRecognizer
    from export.asr_runtime import Recognizer as OnnxRecognizer

    model, tokenizer, cfg = load_model(model_path)
    opts = decoding_options(model, tokenizer, cfg, model_path, no_lm=not lm)
    search = {k: opts[k] for k in ("method", "beam", "lm_score", "lm_weight", "length_bonus",
                                   "token_min_logp", "beam_prune_logp") if opts.get(k) is not None}
    if search.get("method") not in ("ctc_greedy", "ctc_prefix_beam"):
        search["method"] = "ctc_prefix_beam" if lm else "ctc_greedy"
    engines = []
    for name in names:
        if name == "torch":
            engines.append(StreamingEngine(name, TorchRecognizer(model, tokenizer, cfg.streaming,
                                                                 **search)))
        elif name in ("onnx", "onnx_int8"):
            engines.append(StreamingEngine(name, OnnxRecognizer(onnx_dir, int8=name == "onnx_int8",
                                                                num_threads=1, **search)))
        elif name == "pocketsphinx":
            engines.append(PocketSphinxEngine())
        else:
            raise ValueError(f"unknown engine {name!r}")
    return model, tokenizer, engines, search


# ------------------------------------------------------------------ word end times
def word_spans(model, tokenizer, wave: np.ndarray, text: str) -> List[Tuple[float, float]]:
    """(start, end) seconds of each reference word: the first frame of its first token and
    the end of the last frame of its last token, by CTC forced alignment of the reference
    on the model's offline log-probs (its CTC head)."""
    import torchaudio.functional as AF

    head = next(h for h in model.heads.values() if hasattr(h, "search_methods")
                and "ctc_greedy" in h.search_methods)
    with torch.no_grad():
        enc, lens = model.encode(torch.from_numpy(wave)[None], torch.tensor([wave.size]))
        log_probs = head(enc)[:, : int(lens[0])]
    tokens = tokenizer.encode(text)
    if not tokens or log_probs.shape[1] < len(tokens):
        return []
    labels, _ = AF.forced_align(log_probs.float(), torch.tensor([tokens], dtype=torch.int32),
                                blank=0)
    labels = labels[0].tolist()
    # the first and last frame of each emitted token, in order (a new token starts where
    # the label changes to a non-blank, or repeats after a blank)
    firsts, lasts, prev = [], [], 0
    for t, lab in enumerate(labels):
        if lab != 0 and lab != prev:
            firsts.append(t)
            lasts.append(t)
        elif lab != 0 and lab == prev:
            lasts[-1] = t
        prev = lab
    if len(lasts) != len(tokens):
        return []
    frame_s = model.cfg.features.hop_length * model.encoder.subsampling_factor / SR
    spans, k = [], 0
    for word in text.split():
        n = len(tokenizer.encode(word))
        spans.append((firsts[k] * frame_s, (lasts[k + n - 1] + 1) * frame_s))
        k += n
        k += 1 if k < len(tokens) else 0  # the space between words
    return spans


def matched_words(ref: Sequence[str], hyp: Sequence[str]) -> set:
    """Indices of reference words matched by the hypothesis (difflib alignment)."""
    out = set()
    for block in difflib.SequenceMatcher(a=list(ref), b=list(hyp), autojunk=False).get_matching_blocks():
        out.update(range(block.a, block.a + block.size))
    return out


def first_seen_delays(ref_words, spans, out_times, texts):
    """Per reference word: the first output time whose text matches it, minus the word's
    end. An output is aligned only with the words that had begun by its time: a partial
    cannot hold a word not yet spoken, and without the rule a frequent word ("a", "the")
    in an early partial would match the same word spoken seconds later."""
    delays, missed = [], 0
    seen = {}
    starts = [s for s, _ in spans]
    for t, text in zip(out_times, texts):
        audible = int(np.searchsorted(starts, t, side="left"))
        for i in matched_words(ref_words[:audible], normalize_text(text).split()):
            seen.setdefault(i, t)
    for i, (_, end) in enumerate(spans):
        if i in seen:
            delays.append(seen[i] - end)
        else:
            missed += 1
    return delays, missed


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


# ------------------------------------------------------------------ (a) + (b)
def single_stream(engines, utts, piece_ms: int, model, tokenizer):
    """RTF from wall time and from the thread's CPU time (the machine is shared: CPU time
    is what the engine itself spent); partial delays with each kind of compute time."""
    piece = SR * piece_ms // 1000
    kinds = ("wall", "cpu")
    seconds = {k: {e.name: 0.0 for e in engines} for k in kinds}
    delays = {k: {e.name: [] for e in engines} for k in kinds}
    missed = {e.name: 0 for e in engines}
    hyps = {e.name: [] for e in engines}
    audio = 0.0
    for j, (wave, text, spans) in enumerate(utts):
        audio += wave.size / SR
        k = j % len(engines)
        for e in engines[k:] + engines[:k]:  # rotate the order per utterance
            wall, cpu, texts = e.run(wave, piece)
            hyps[e.name].append(texts[-1])
            for kind, costs in zip(kinds, (wall, cpu)):
                seconds[kind][e.name] += sum(costs)
                out, t_out = [], 0.0
                for i, c in enumerate(costs):  # the pieces arrive at real time
                    arrive = min((i + 1) * piece, wave.size) / SR
                    t_out = max(arrive, t_out) + c
                    out.append(t_out)
                d, m = first_seen_delays(text.split(), spans, out, texts)
                delays[kind][e.name] += d
            missed[e.name] += m
        print(f"utterance {j + 1}/{len(utts)}: "
              f"{json.dumps({k: round(v, 2) for k, v in seconds['cpu'].items()})}",
              file=sys.stderr, flush=True)
    from asr.evaluate import score

    refs = [t for _, t, _ in utts]
    res = {"audio_seconds": round(audio, 2), "utterances": len(utts), "piece_ms": piece_ms}
    for e in engines:
        res[e.name] = {
            "rtf_cpu": round(seconds["cpu"][e.name] / audio, 4),
            "rtf_wall": round(seconds["wall"][e.name] / audio, 4),
            "wer": round(score(refs, [normalize_text(h) for h in hyps[e.name]])["wer"], 4),
            "words_never_matched": missed[e.name]}
        for kind in kinds:
            d = delays[kind][e.name]
            res[e.name][f"partial_delay_ms_{kind}"] = {
                "median": round(1000 * pct(d, 50), 1) if d else None,
                "p95": round(1000 * pct(d, 95), 1) if d else None, "words": len(d)}
    for kind in kinds:
        ps = res.get("pocketsphinx", {}).get(f"rtf_{kind}")
        if ps:
            res[f"speedup_vs_pocketsphinx_{kind}"] = {
                e.name: round(ps / max(res[e.name][f"rtf_{kind}"], 1e-9), 2)
                for e in engines if e.name != "pocketsphinx"}
    return res


# ------------------------------------------------------------------ (c) server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(url: str, items, piece_ms: int):
    """Stream utterances one after another at real time, each in its own session (a
    connection per utterance, as a voice assistant sends one request per utterance);
    returns (delays, words never matched, max lag, every session done)."""
    delays, missed, lag, done = [], 0, 0.0, True
    for item in items:
        d, m, g, ok = await session(url, item, piece_ms)
        delays += d
        missed += m
        lag, done = max(lag, g), done and ok
    return delays, missed, lag, done


async def session(url: str, item, piece_ms: int):
    """One utterance over one WebSocket session, sent at real time in ``piece_ms`` pieces;
    the partial delays of its words, by the client's clock."""
    import websockets

    wave, text, spans = item
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    step = SR * piece_ms // 1000 * 2
    lag, out_times, texts, finals = 0.0, [], [], []
    done = False
    async with websockets.connect(url, max_size=2 ** 20) as ws:
        await ws.send(json.dumps({"type": "start", "version": 1, "sample_rate": SR,
                                  "format": "pcm_s16le"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def send():
            nonlocal lag
            for i in range(0, len(pcm), step):
                due = t0 + i / 2 / SR
                now = loop.time()
                if now < due:
                    await asyncio.sleep(due - now)
                lag = max(lag, loop.time() - due)
                await ws.send(pcm[i:i + step])
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            msg = json.loads(raw)
            t = loop.time() - t0
            if msg["type"] in ("partial", "final"):
                # the text so far of the whole stream: finals before, plus this segment
                text_so_far = " ".join(finals + [msg["text"]])
                if msg["type"] == "final":
                    finals.append(msg["text"])
                out_times.append(t)
                texts.append(text_so_far)
            elif msg["type"] == "done":
                done = True
                break
            elif msg["type"] == "error":
                break
        await asyncio.gather(sender, return_exceptions=True)
    delays, missed = first_seen_delays(text.split(), spans, out_times, texts)
    return delays, missed, lag, done


async def load_level(url: str, n: int, clips, per_client: int, piece_ms: int):
    tasks = []
    for c in range(n):
        items = [clips[(c * per_client + k) % len(clips)] for k in range(per_client)]
        tasks.append(client(url, items, piece_ms))
        await asyncio.sleep(0.05)  # staggered starts
    return await asyncio.gather(*tasks, return_exceptions=True)


def server_capacity(model_arg: str, extra: List[str], clips, levels, per_client: int,
                    piece_ms: int, search: str, p95_limit_ms: float = 500.0):
    port = free_port()
    cmd = [sys.executable, "-m", "asr", "serve", "--model", model_arg, "--port", str(port),
           "--max-streams", "256", "--threads", "1", "--search", search, *extra]
    proc = subprocess.Popen(cmd, cwd=str(Path(__file__).resolve().parents[1]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import urllib.request

        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        results, best = [], 0
        for n in levels:
            out = asyncio.run(load_level(f"ws://127.0.0.1:{port}/ws", n, clips, per_client,
                                         piece_ms))
            errors = [repr(r) for r in out if isinstance(r, BaseException)]
            ok = [r for r in out if not isinstance(r, BaseException)]
            delays = [d for r in ok for d in r[0]]
            level = {"streams": n, "p95_delay_ms": round(1000 * pct(delays, 95), 1) if delays else None,
                     "median_delay_ms": round(1000 * pct(delays, 50), 1) if delays else None,
                     "words": len(delays), "words_never_matched": sum(r[1] for r in ok),
                     "max_sender_lag_ms": round(1000 * max((r[2] for r in ok), default=0), 1),
                     "finished": sum(r[3] for r in ok), "errors": errors[:3]}
            level["pass"] = bool(delays and level["p95_delay_ms"] < p95_limit_ms
                                 and level["max_sender_lag_ms"] < 200 and level["finished"] == n)
            results.append(level)
            print(json.dumps({"server": model_arg, **level}), flush=True)
            if not level["pass"]:
                break
            best = n
        return {"levels": results, "max_streams_passing": best}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ------------------------------------------------------------------ report
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    a = results.get("single_stream", {})
    names = [n for n in ("torch", "onnx", "onnx_int8", "pocketsphinx") if n in a]
    axes[0].bar(names, [a[n]["rtf_cpu"] for n in names])
    axes[0].set_ylabel("real-time factor, CPU time (1 thread)")
    axes[0].set_title("(a) single stream")
    for n in names:
        d = a[n]["partial_delay_ms_cpu"]
        if d["median"] is not None:
            axes[1].bar([f"{n}\nmedian", f"{n}\np95"], [d["median"], d["p95"]])
    axes[1].tick_params(axis="x", labelrotation=45, labelsize=8)
    axes[1].set_ylabel("ms after the word's last audio (CPU-time compute)")
    axes[1].set_title("(b) first partial with the word")
    for name, cap in results.get("server", {}).items():
        lv = cap["levels"]
        axes[2].plot([l["streams"] for l in lv], [l["p95_delay_ms"] or 0 for l in lv], "o-",
                     label=f"{name} (max {cap['max_streams_passing']})")
    axes[2].axhline(results.get("p95_limit_ms", 500), color="gray", ls="--")
    axes[2].set_xlabel("concurrent real-time streams")
    axes[2].set_ylabel("p95 partial delay, ms")
    axes[2].set_title("(c) server")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def table(results: dict) -> str:
    a = results.get("single_stream", {})
    lines = ["| engine | RTF CPU / wall (1 thread) | speed-up vs pocketsphinx CPU / wall | WER | "
             "partial delay median / p95, CPU-time compute (ms) | same, wall (ms) | words |",
             "|---|---|---|---|---|---|---|"]
    for n in ("torch", "onnx", "onnx_int8", "pocketsphinx"):
        if n not in a:
            continue
        dc, dw = a[n]["partial_delay_ms_cpu"], a[n]["partial_delay_ms_wall"]
        sp = [a.get(f"speedup_vs_pocketsphinx_{k}", {}).get(n, "-") for k in ("cpu", "wall")]
        lines.append(f"| {n} | {a[n]['rtf_cpu']} / {a[n]['rtf_wall']} | {sp[0]} / {sp[1]} | "
                     f"{a[n]['wer']} | {dc['median']} / {dc['p95']} | {dw['median']} / {dw['p95']} | "
                     f"{dc['words']} (+{a[n]['words_never_matched']} never) |")
    for name, cap in results.get("server", {}).items():
        lv = "; ".join(f"{l['streams']}: p95 {l['p95_delay_ms']} ms, lag {l['max_sender_lag_ms']} ms"
                       f"{'' if l['pass'] else ' FAIL'}" for l in cap["levels"])
        lines.append(f"\nserver {name}: largest N passing = {cap['max_streams_passing']} ({lv})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="streaming checkpoint (.pt)")
    p.add_argument("--onnx", required=True, help="its export (python -m export asr)")
    p.add_argument("--manifest", nargs="+", required=True)
    p.add_argument("--limit", type=int, default=8, help="utterances per manifest")
    p.add_argument("--engines", nargs="+", default=["torch", "onnx", "onnx_int8", "pocketsphinx"])
    p.add_argument("--no-lm", action="store_true", help="our searches without the model's LM")
    p.add_argument("--piece-ms", type=int, default=20)
    p.add_argument("--server-levels", type=int, nargs="*", default=[4, 8, 12, 16, 20, 24])
    p.add_argument("--server-piece-ms", type=int, default=100)
    p.add_argument("--server-utts-per-client", type=int, default=2)
    p.add_argument("--server-search", default="ctc_greedy",
                   help="serve's search (it loads no LM)")
    p.add_argument("--servers", nargs="*", default=["torch", "onnx_int8"],
                   help="torch, onnx, onnx_int8")
    p.add_argument("--p95-limit-ms", type=float, default=500.0,
                   help="server pass criterion: p95 partial delay under this")
    p.add_argument("--skip-single-stream", action="store_true", help="only the server part (c)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    model, tokenizer, engines, search = build_engines(args.model, args.onnx, args.engines,
                                                      not args.no_lm)
    utts = []
    for m in args.manifest:
        for u in read_manifest(m)[:args.limit]:
            wave = load_audio(u.audio, SR).numpy()
            text = normalize_text(u.text)
            utts.append((wave, text, word_spans(model, tokenizer, wave, text)))
    utts = [u for u in utts if len(u[2]) == len(u[1].split())]
    print(f"{len(utts)} utterances aligned", file=sys.stderr, flush=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args.model,
               "onnx": args.onnx, "search": {k: v for k, v in search.items() if k != "lm_score"},
               "lm": "lm_score" in search, "machine": f"{os.cpu_count()} CPUs, shared",
               "load_average_at_start": os.getloadavg()}
    if not args.skip_single_stream:
        for e in engines:  # warm-up (LM tables, kernels)
            e.run(np.zeros(SR, np.float32), SR * args.piece_ms // 1000)
        results["single_stream"] = single_stream(engines, utts, args.piece_ms, model, tokenizer)
        print(json.dumps(results["single_stream"]), flush=True)
    results["server"] = {}
    for name in args.servers:
        model_arg, extra = (args.model, []) if name == "torch" else (
            args.onnx, ["--int8"] if name == "onnx_int8" else [])
        results["server"][name] = server_capacity(model_arg, extra, utts, args.server_levels,
                                                  args.server_utts_per_client,
                                                  args.server_piece_ms, args.server_search,
                                                  args.p95_limit_ms)
    results["server_settings"] = {"piece_ms": args.server_piece_ms, "search": args.server_search,
                                  "utterances_per_client": args.server_utts_per_client,
                                  "criterion": f"p95 partial delay < {args.p95_limit_ms:g} ms, "
                                               "sender lag < 200 ms, every stream done"}
    results["p95_limit_ms"] = args.p95_limit_ms
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
