"""Our English model beside pocketsphinx (its bundled en-us acoustic model, dictionary and
LM) on the same audio in one run: WER of each, and real-time factor on one thread.

Each utterance is decoded by every engine from the same 16 kHz waveform, the order
alternating from one utterance to the next; the timings cover decoding only (features,
network and search with the LM for ours; ``process_raw`` to ``end_utt`` for pocketsphinx),
not reading the file.

    python bench/english_vs_pocketsphinx.py --model data/models/english.pt \\
        --manifest exp/english/data/eval_speechocean762.jsonl exp/english/data/eval_an4.jsonl \\
        --out recipes/english/bench_vs_pocketsphinx.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.decoding import decoding_options  # noqa: E402
from asr.evaluate import score  # noqa: E402


class Ours:
    def __init__(self, model_path: str, **overrides) -> None:
        self.name = Path(model_path).stem
        self.model, self.tokenizer, cfg = load_model(model_path)
        self.options = decoding_options(self.model, self.tokenizer, cfg, model_path, **overrides)
        self.sample_rate = cfg.sample_rate
        # what this engine decodes with, as used (not as asked: a model may save no LM)
        self.decoding = {"head": self.options["head"] or next(iter(self.model.heads)),
                         "method": self.options["method"], "lm": "lm_score" in self.options,
                         **{k: self.options[k] for k in ("beam", "nbest", "rescore", "rescore_weight")
                            if self.options.get(k) is not None}}

    def __call__(self, wave: torch.Tensor) -> str:
        with torch.no_grad():
            res = self.model.decode(wave[None], torch.tensor([wave.numel()]), **self.options)[0]
        return self.tokenizer.decode(res.best.tokens)


class PocketSphinx:
    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(loglevel="FATAL")  # bundled en-us model, dictionary and LM

    def __call__(self, wave: torch.Tensor) -> str:
        pcm = (np.clip(wave.numpy(), -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, False, True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def run(engines, manifest: Path, limit=None) -> dict:
    utts = read_manifest(manifest)[:limit]
    refs, hyps = [], {e.name: [] for e in engines}
    seconds = {e.name: 0.0 for e in engines}
    audio = 0.0
    for i, u in enumerate(tqdm(utts, desc=manifest.stem, dynamic_ncols=True)):
        wave = load_audio(u.audio, 16000, u.offset, u.duration if u.offset else None)
        audio += wave.numel() / 16000
        refs.append(u.text)
        order = engines if i % 2 == 0 else engines[::-1]  # no engine always first
        for e in order:
            t = time.perf_counter()
            hyps[e.name].append(e(wave))
            seconds[e.name] += time.perf_counter() - t
    out = {"manifest": str(manifest), "utterances": len(utts), "audio_hours": round(audio / 3600, 4)}
    for e in engines:
        m = score(refs, hyps[e.name])
        out[e.name] = {"wer": round(m["wer"], 4), "cer": round(m["cer"], 4),
                       "rtf": round(seconds[e.name] / audio, 4)}
    ps = out["pocketsphinx"]
    for e in engines:
        if e.name != "pocketsphinx":
            out[e.name]["wer_ratio_to_pocketsphinx"] = (
                round(out[e.name]["wer"] / ps["wer"], 3) if ps["wer"] else None)
            out[e.name]["speed_ratio_pocketsphinx_rtf_to_this"] = round(
                ps["rtf"] / max(out[e.name]["rtf"], 1e-9), 2)
    out["examples"] = [{"ref": r, **{e.name: hyps[e.name][j] for e in engines}}
                       for j, r in enumerate(refs[:5])]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["data/models/english.pt"],
                   help="one or more of our models, each decoding every clip beside pocketsphinx")
    p.add_argument("--manifest", nargs="+", type=Path, required=True)
    p.add_argument("--limit", type=int, help="first N utterances of each manifest")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-lm", action="store_true", help="our model without its LM")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    engines = [Ours(m, no_lm=args.no_lm) for m in args.model] + [PocketSphinx()]
    if len({e.name for e in engines}) < len(engines):
        p.error("--model: the file names must differ (each names its column)")
    for e in engines:  # warm-up: the LM is built, kernels are loaded
        e(torch.zeros(16000))
    results = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "threads": args.threads,
               "decoding": {e.name: e.decoding for e in engines if isinstance(e, Ours)},
               "runs": [run(engines, m, args.limit) for m in args.manifest]}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
