"""Generate the embedded synthetic English speech corpus (the toolkit's default corpus).

The corpus is made on the machine with the Debian synthesizers ``espeak-ng``, ``flite`` and
``festival`` (plus ``sox`` for pitch/tempo changes). Every *voice* is one
``engine x voice x variant`` combination (e.g. ``espeak:en-gb-x-rp+f3``, ``flite:slt``,
``festival:kal_diphone``); the voice id is recorded as the utterance's ``speaker``.
Whole voices are held out for the dev and test splits, so evaluation is speaker-independent.

Texts are lowercase words matching ``[a-z' ]+``: digit strings read digit by digit, numbers
as words (up to 9999), short voice-assistant commands (``texts/commands.txt``) and short
real sentences from LJSpeech (``texts/sentences.txt``).

Each utterance gets its own random generator seeded from ``(seed, split, index)``, so the
corpus does not depend on the number of jobs or their order. Utterance ids end in a hash of
everything that determines the audio, which makes the wav cache content-addressed: a wav that
exists and is valid is never synthesized again, and re-running with the same configuration
only checks the files.

This module plans the utterances (:func:`plan_split`), builds the corpus with its wav cache
(:func:`generate`) and is the command line. The voices are :mod:`recipes.synth.voices`, the
texts :mod:`recipes.synth.texts`, and the engine checks, synthesizer calls and
post-processing :mod:`recipes.synth.synthesize`; the names other code uses from those are
importable from here too.

Usage::

    python -m recipes.synth.generate --out data/synth [--jobs 2] [--size small|default] [--seed 0]

or from Python::

    from recipes.synth.generate import generate
    manifests = generate("data/synth", size="small")   # {"train": Path, "dev": Path, "test": Path}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recipes.synth.synthesize import (
    SAMPLE_RATE,
    UttSpec,
    _pool_worker_init,
    _valid_wav,
    _worker_exit,
    _worker_init,
    available_engines,
    check_engines,
    synthesize_utterance,
)
from recipes.synth.texts import (
    DIGIT_WORDS,
    TEXT_DIR,
    build_sentences,
    load_texts,
    make_text,
    number_to_words,
)
from recipes.synth.voices import ENGINE_WEIGHTS, SPLITS, Voice, split_voices

try:  # tqdm is a project dependency, but keep the generator usable without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

#: This module's API, with the names re-exported from voices, texts and synthesize.
__all__ = [
    "GENERATOR_VERSION", "SIZES", "KIND_WEIGHTS", "SAMPLE_RATE", "SPLITS", "ENGINE_WEIGHTS",
    "DIGIT_WORDS", "Voice", "UttSpec", "split_voices", "number_to_words", "load_texts",
    "make_text", "available_engines", "check_engines", "plan_split", "generate", "main",
]

#: Bump when anything that changes the audio or texts for a given spec changes.
GENERATOR_VERSION = 1

#: Utterances per split for each named size.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"train": 12, "dev": 4, "test": 6},
    "small": {"train": 600, "dev": 50, "test": 100},
    "default": {"train": 4000, "dev": 200, "test": 400},
}

#: Share of each text kind (digit strings, numbers as words, commands, LJSpeech sentences).
KIND_WEIGHTS = {"digits": 0.35, "number": 0.15, "command": 0.30, "sentence": 0.20}

#: Per-utterance variation.
SPEED_RANGE = (0.85, 1.20)  # speaking-rate factor, 1.0 = the engine's default rate
PITCH_RANGE = (0.85, 1.20)  # F0 factor, 1.0 = the voice's default pitch
NOISE_PROB = 0.4  # fraction of utterances with additive background noise
SNR_RANGE_DB = (15.0, 40.0)
NOISE_COLORS = ("white", "pink", "brown")
PEAK_DB_RANGE = (-10.0, -1.0)  # peak level of the speech before noise is added

# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


def _rng(*keys) -> np.random.Generator:
    """A generator seeded from a stable hash of ``keys`` (independent of job order)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def plan_split(split: str, n: int, seed: int, voices: list[Voice], commands: list[str],
               sentences: list[str], kinds: dict[str, float] | None = None) -> list[UttSpec]:
    """Plan ``n`` utterances of one split; utterance ``i`` depends only on (seed, split, i).

    ``kinds`` weights the text kinds (default :data:`KIND_WEIGHTS`)."""
    by_engine: dict[str, list[Voice]] = {}
    for v in voices:
        by_engine.setdefault(v.engine, []).append(v)
    engine_weights = {e: w for e, w in ENGINE_WEIGHTS.items() if e in by_engine}
    specs = []
    for i in range(n):
        rng = _rng("synth", seed, split, i)
        engine = _choice(rng, engine_weights)
        voice = by_engine[engine][int(rng.integers(len(by_engine[engine])))]
        kind = _choice(rng, kinds or KIND_WEIGHTS)
        text = make_text(kind, rng, commands, sentences)
        speed = round(float(rng.uniform(*SPEED_RANGE)), 3)
        pitch = round(float(math.exp(rng.uniform(*np.log(PITCH_RANGE)))), 3)
        noisy = rng.random() < NOISE_PROB
        snr = round(float(rng.uniform(*SNR_RANGE_DB)), 1) if noisy else None
        color = NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))] if noisy else None
        peak_db = round(float(rng.uniform(*PEAK_DB_RANGE)), 1)
        noise_seed = int(rng.integers(2**31))
        fields = dict(split=split, engine=engine, voice=voice.name, speaker=voice.id,
                      kind=kind, text=text, speed=speed, pitch=pitch, snr_db=snr,
                      noise_color=color, peak_db=peak_db, noise_seed=noise_seed)
        key = json.dumps({"v": GENERATOR_VERSION, "sr": SAMPLE_RATE, **fields}, sort_keys=True)
        uid = f"{split}_{i:05d}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        specs.append(UttSpec(id=uid, **fields))
    return specs


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _config(size: str, counts: dict[str, int], seed: int, engines: list[str],
            kinds: dict[str, float] | None = None) -> dict:
    config = {"generator_version": GENERATOR_VERSION, "sample_rate": SAMPLE_RATE, "size": size,
              "counts": counts, "seed": seed, "engines": sorted(engines)}
    if kinds:
        config["kinds"] = kinds
    return config


def _manifest_record(spec: UttSpec, wav: Path, duration: float) -> dict:
    return {"id": spec.id, "audio": str(wav), "duration": round(duration, 4),
            "sample_rate": SAMPLE_RATE, "text": spec.text, "speaker": spec.speaker,
            "meta": {"engine": spec.engine, "voice": spec.voice, "kind": spec.kind,
                     "snr_db": spec.snr_db, "speed": spec.speed, "pitch": spec.pitch}}


def _up_to_date(out: Path, config: dict) -> dict[str, Path] | None:
    """Manifests of a previous complete run with the same config, if all files are there."""
    try:
        info = json.loads((out / "corpus.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("config") != config or info.get("failures"):
        return None
    manifests = {s: out / f"{s}.jsonl" for s in SPLITS}
    for path in manifests.values():
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            if not os.path.exists(json.loads(line)["audio"]):
                return None
    return manifests


def generate(out_dir: str | Path, size: str = "default", seed: int = 0, jobs: int = 2,
             counts: dict[str, int] | None = None, engines: list[str] | None = None,
             progress: bool = True, kinds: dict[str, float] | None = None) -> dict[str, Path]:
    """Generate (or update) the corpus in ``out_dir``; returns split -> manifest path.

    ``counts`` (e.g. ``{"train": 8, "dev": 2, "test": 4}``) overrides the named ``size``.
    ``engines`` restricts the engines (default: espeak, flite and festival); it changes
    the voices, hence the corpus. Existing valid wavs are reused; wavs in ``wavs/<split>``
    that the current configuration does not produce are deleted. Utterances whose
    synthesis fails are reported on stderr, listed in ``corpus.json`` and left out.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    counts = {s: int((counts or SIZES[size]).get(s, 0)) for s in SPLITS}
    engines = list(engines or ENGINE_WEIGHTS)
    unknown = set(engines) - set(ENGINE_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}")
    out = Path(out_dir).resolve()
    if kinds and set(kinds) - set(KIND_WEIGHTS) - {"digit"}:
        raise ValueError(f"unknown text kinds {sorted(set(kinds) - set(KIND_WEIGHTS) - {'digit'})}")
    config = _config(size, counts, seed, engines, kinds)
    done = _up_to_date(out, config)
    if done is not None:
        return done

    check_engines(engines)
    t0 = time.time()
    commands, sentences = load_texts("commands"), load_texts("sentences")
    voices = split_voices(engines)
    specs = {s: plan_split(s, counts[s], seed, voices[s], commands, sentences, kinds)
             for s in SPLITS}

    todo, durations = [], {}
    for split in SPLITS:
        wav_dir = out / "wavs" / split
        wav_dir.mkdir(parents=True, exist_ok=True)
        wanted = {f"{sp.id}.wav" for sp in specs[split]}
        for f in wav_dir.iterdir():  # stale files from other configurations / killed runs
            if f.name not in wanted:
                f.unlink()
        for sp in specs[split]:
            wav = wav_dir / f"{sp.id}.wav"
            dur = _valid_wav(wav)
            if dur is None:
                todo.append((asdict(sp), str(wav)))
            else:
                durations[sp.id] = dur

    failures = _run_jobs(todo, out / ".tmp", jobs, progress, durations)
    shutil.rmtree(out / ".tmp", ignore_errors=True)

    manifests, stats = {}, {}
    for split in SPLITS:
        records = [_manifest_record(sp, out / "wavs" / split / f"{sp.id}.wav", durations[sp.id])
                   for sp in specs[split] if sp.id in durations]
        if counts[split] and not records:
            raise RuntimeError(f"every utterance of split {split!r} failed; see errors above")
        manifests[split] = out / f"{split}.jsonl"
        tmp = manifests[split].with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, manifests[split])
        stats[split] = {"utterances": len(records),
                        "hours": round(sum(r["duration"] for r in records) / 3600, 4),
                        "speakers": len({r["speaker"] for r in records})}
    info = {"config": config,
            "voices": {s: [v.id for v in voices[s]] for s in SPLITS},
            "stats": stats, "synthesized": len(todo), "failures": failures,
            "seconds": round(time.time() - t0, 1), "jobs": jobs}
    (out / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    if failures:
        print(f"[synth] {len(failures)} utterance(s) failed and were skipped "
              f"(listed in {out / 'corpus.json'})", file=sys.stderr)
    return manifests


def _run_jobs(todo: list, tmp_root: Path, jobs: int, progress: bool,
              durations: dict[str, float]) -> list[dict]:
    """Synthesize ``todo`` with ``jobs`` processes; fills ``durations``, returns failures."""
    failures: list[dict] = []
    if not todo:
        return failures
    tmp_root.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="synth", unit="utt", disable=not progress) if tqdm else None

    def handle(result: dict) -> None:
        if "error" in result:
            failures.append(result)
            msg = f"[synth] FAILED {result['id']}: {result['error']}"
            (bar.write if bar else print)(msg, file=sys.stderr)
        else:
            durations[result["id"]] = result["duration"]
        if bar:
            bar.update()

    if jobs <= 1:
        _worker_init(str(tmp_root))
        try:
            for spec, wav in todo:
                handle(synthesize_utterance(spec, wav))
        finally:
            _worker_exit()
    else:
        import multiprocessing as mp

        # Interleave engines so slow festival/flite work is spread over the workers.
        todo = sorted(todo, key=lambda t: hashlib.sha1(t[0]["id"].encode()).hexdigest())
        # spawn, not fork: a fork while another thread (tqdm's monitor) holds a lock leaves
        # the child waiting on it forever
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_pool_worker_init, initargs=(str(tmp_root),)) as pool:
            for result in pool.imap_unordered(_star_synth, todo, chunksize=4):
                handle(result)
            pool.close()  # let workers exit normally, so they stop their festival sessions
            pool.join()
    if bar:
        bar.close()
    return failures


def _star_synth(args: tuple) -> dict:
    return synthesize_utterance(*args)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--size", default="default", choices=sorted(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    for split in SPLITS:
        ap.add_argument(f"--{split}", type=int, help=f"number of {split} utterances "
                        "(overrides --size; unset splits take the --size count)")
    ap.add_argument("--engines", nargs="+", choices=list(ENGINE_WEIGHTS),
                    help="restrict to these engines (changes the voices)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--build-sentences", metavar="LJSPEECH_METADATA_CSV",
                    help="(maintainers) rebuild texts/sentences.txt from an LJSpeech "
                         "metadata.csv and exit")
    args = ap.parse_args(argv)
    if args.build_sentences:
        sentences = build_sentences(args.build_sentences)
        (TEXT_DIR / "sentences.txt").write_text("\n".join(sentences) + "\n")
        print(f"wrote {len(sentences)} sentences to {TEXT_DIR / 'sentences.txt'}")
        return
    if not args.out:
        ap.error("--out is required")
    counts = None
    if any(getattr(args, s) is not None for s in SPLITS):
        counts = {s: getattr(args, s) if getattr(args, s) is not None else SIZES[args.size][s]
                  for s in SPLITS}
    t0 = time.time()
    corpus_json = Path(args.out) / "corpus.json"
    manifests = generate(args.out, size=args.size, seed=args.seed, jobs=args.jobs,
                         counts=counts, engines=args.engines, progress=not args.no_progress)
    info = json.loads((Path(args.out) / "corpus.json").read_text())
    for split, path in manifests.items():
        st = info["stats"][split]
        print(f"{split:5s} {st['utterances']:5d} utts {st['hours'] * 60:7.1f} min "
              f"{st['speakers']:4d} speakers  {path}")
    if corpus_json.stat().st_mtime < t0:
        print(f"up to date (checked in {time.time() - t0:.1f}s)")
    else:
        print(f"done in {time.time() - t0:.1f}s ({info['synthesized']} synthesized, "
              f"{len(info['failures'])} failed)")


if __name__ == "__main__":
    main()
