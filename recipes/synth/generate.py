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

Usage::

    python -m recipes.synth.generate --out data/synth [--jobs 2] [--size small|default] [--seed 0]

or from Python::

    from recipes.synth.generate import generate
    manifests = generate("data/synth", size="small")   # {"train": Path, "dev": Path, "test": Path}
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.metadata import read_metadata

try:  # tqdm is a project dependency, but keep the generator usable without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

#: Bump when anything that changes the audio or texts for a given spec changes.
GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
TEXT_DIR = Path(__file__).resolve().parent / "texts"

#: Utterances per split for each named size.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"train": 12, "dev": 4, "test": 6},
    "small": {"train": 600, "dev": 50, "test": 100},
    "default": {"train": 4000, "dev": 200, "test": 400},
}

#: Share of each text kind (digit strings, numbers as words, commands, LJSpeech sentences).
KIND_WEIGHTS = {"digits": 0.35, "number": 0.15, "command": 0.30, "sentence": 0.20}

#: Share of utterances per engine in every split (espeak-ng has by far the most voices,
#: flite and festival sound more natural; weighting keeps all three well represented).
ENGINE_WEIGHTS = {"espeak": 0.70, "flite": 0.20, "festival": 0.10}

#: Per-utterance variation.
SPEED_RANGE = (0.85, 1.20)  # speaking-rate factor, 1.0 = the engine's default rate
PITCH_RANGE = (0.85, 1.20)  # F0 factor, 1.0 = the voice's default pitch
NOISE_PROB = 0.4  # fraction of utterances with additive background noise
SNR_RANGE_DB = (15.0, 40.0)
NOISE_COLORS = ("white", "pink", "brown")
CLEAN_FLOOR_SNR_DB = 60.0  # faint white noise floor of utterances without background noise
PEAK_DB_RANGE = (-10.0, -1.0)  # peak level of the speech before noise is added
EDGE_SILENCE_S = 0.10  # silence kept (or padded) before and after the speech
TRIM_BELOW_PEAK_DB = 40.0  # frames this far below the loudest frame count as silence

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
_ONES = DIGIT_WORDS + (
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
)
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
TEXT_RE = re.compile(r"[a-z']+( [a-z']+)*")

# --------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------

#: espeak-ng accents (language voices) and voice variants (timbre). Every accent is combined
#: with every variant. The variants are the clearly intelligible ones (no whisper, croak,
#: robot, ...). Test/dev hold out whole variants, i.e. unseen timbres in every accent.
ESPEAK_ACCENTS = (
    "en-us", "en-us-nyc", "en", "en-gb-x-rp", "en-gb-scotland",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "Andy", "david",
    "quincy", "f1", "f2", "f3", "f4", "f5", "belinda", "linda", "Annie", "steph",
)
#: flite voices -> underlying recorded speaker (``awb_time`` is limited-domain: left out).
FLITE_VOICES = {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"}
#: festival voices -> (underlying speaker, Debian package).
FESTIVAL_VOICES = {
    "kal_diphone": ("kal", "festvox-kallpc16k"),
    "ked_diphone": ("ked", "festvox-kdlpc16k"),
    "cmu_us_slt_arctic_hts": ("slt", "festvox-us-slt-hts"),
}
#: Held-out voice families. A family is an espeak variant (in all accents) or one recorded
#: speaker (in every engine that has it: flite ``kal``/``kal16`` and festival ``kal_diphone``
#: are the same person), so no test speaker is heard in training under another engine.
#: test: 3 of 22 espeak variants (24 voices) + flite rms + festival ked -> 26 of 184 voices
#: (14%), every engine; dev: 2 espeak variants (16 voices) + flite awb -> 17 voices.
HOLDOUT_FAMILIES = {
    "test": ("espeak:m4", "espeak:f2", "espeak:klatt3", "rms", "ked"),
    "dev": ("espeak:m6", "espeak:steph", "awb"),
}

#: program -> Debian package, per engine.
ENGINE_PROGRAMS = {
    "espeak": {"espeak-ng": "espeak-ng"},
    "flite": {"flite": "flite", "sox": "sox"},
    "festival": {"festival": "festival", "sox": "sox", "stdbuf": "coreutils"},
}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine plus the engine's own voice name (with variant)."""

    engine: str  # "espeak" | "flite" | "festival"
    name: str  # what the engine is given, e.g. "en-gb-x-rp+f3", "slt", "kal_diphone"
    family: str  # hold-out unit, e.g. "espeak:f3" or a recorded speaker like "kal"

    @property
    def id(self) -> str:
        """Speaker id used in manifests, e.g. ``espeak:en-us+m1``."""
        return f"{self.engine}:{self.name}"


def all_voices(engines=tuple(ENGINE_WEIGHTS)) -> list[Voice]:
    """Every voice of the given engines, in a fixed order."""
    voices: list[Voice] = []
    if "espeak" in engines:
        for variant in ESPEAK_VARIANTS:
            for accent in ESPEAK_ACCENTS:
                voices.append(Voice("espeak", f"{accent}+{variant}", f"espeak:{variant}"))
    if "flite" in engines:
        voices += [Voice("flite", name, spk) for name, spk in FLITE_VOICES.items()]
    if "festival" in engines:
        voices += [Voice("festival", name, spk) for name, (spk, _) in FESTIVAL_VOICES.items()]
    return voices


def split_voices(engines=tuple(ENGINE_WEIGHTS)) -> dict[str, list[Voice]]:
    """Assign every voice to train/dev/test by its family (see ``HOLDOUT_FAMILIES``)."""
    out: dict[str, list[Voice]] = {s: [] for s in SPLITS}
    for voice in all_voices(engines):
        split = next((s for s, fams in HOLDOUT_FAMILIES.items() if voice.family in fams), "train")
        out[split].append(voice)
    return out


# --------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------


def number_to_words(n: int) -> str:
    """Spell 0 <= n <= 9999 in words, e.g. 421 -> ``four hundred twenty one``."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        head, rest = f"{_ONES[n // 100]} hundred", n % 100
    else:
        head, rest = f"{_ONES[n // 1000]} thousand", n % 1000
    return head if rest == 0 else f"{head} {number_to_words(rest)}"


def normalize_text(text: str) -> str:
    """Lowercase, map hyphens/punctuation to spaces, collapse spaces.

    The result may still contain characters outside ``[a-z' ]`` (digits, accents);
    check it with :data:`TEXT_RE`.
    """
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[-\u2014\u2013\"\u201c\u201d.,;:!?()\[\]]", " ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", " ", text)  # quotes, keep word-internal apostrophes
    return re.sub(r"\s+", " ", text).strip()


def build_sentences(metadata_csv: str | Path, n: int = 600, min_words: int = 4,
                    max_words: int = 10, min_word_count: int = 3) -> list[str]:
    """Pick ``n`` short, complete, common-vocabulary sentences from an LJSpeech metadata file.

    Uses the normalized column (``id|raw|normalized``). A sentence qualifies if its raw text
    ends with ``.``, ``?`` or ``!``, it has ``min_words`` to ``max_words`` words after
    :func:`normalize_text`, it is pure ``[a-z' ]``, and every word occurs at least
    ``min_word_count`` times in the whole file (limits rare vocabulary). Whole sentences
    (raw text starting with a capital) are taken first, then sentence endings; within each
    group the choice is deterministic (ordered by a hash of the text).
    """
    rows = [(row.raw.strip(), normalize_text(row.normalized)) for row in read_metadata(metadata_csv)]
    counts: dict[str, int] = {}
    for _, norm in rows:
        for word in norm.split():
            counts[word] = counts.get(word, 0) + 1
    chosen: dict[str, bool] = {}  # text -> starts with a capital (a whole sentence)
    for raw, norm in rows:
        words = norm.split()
        if not (min_words <= len(words) <= max_words) or not TEXT_RE.fullmatch(norm):
            continue
        if raw[-1:] not in ".?!":
            continue
        if "quote" in words or any(counts[w] < min_word_count for w in words):
            continue
        chosen[norm] = chosen.get(norm, False) or raw[:1].isupper()
    ordered = sorted(chosen, key=lambda s: (not chosen[s], hashlib.sha1(s.encode()).hexdigest()))
    return sorted(ordered[:n])


def load_texts(name: str) -> list[str]:
    """Read one of the shipped text lists (``texts/<name>.txt``), one text per line."""
    lines = (TEXT_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    texts = [t.strip() for t in lines if t.strip() and not t.startswith("#")]
    bad = [t for t in texts if not TEXT_RE.fullmatch(t)]
    if bad:
        raise ValueError(f"texts/{name}.txt has non-normalized lines, e.g. {bad[:3]}")
    return texts


def make_text(kind: str, rng: np.random.Generator, commands: list[str],
              sentences: list[str]) -> str:
    """Draw one text of the given kind."""
    if kind == "digit":  # one isolated digit word, e.g. to augment FSDD
        return DIGIT_WORDS[int(rng.integers(0, 10))]
    if kind == "digits":
        n = int(rng.integers(1, 8))
        return " ".join(DIGIT_WORDS[int(d)] for d in rng.integers(0, 10, size=n))
    if kind == "number":
        ndigits = int(rng.integers(1, 5))  # as many 1-digit as 4-digit numbers
        lo = 0 if ndigits == 1 else 10 ** (ndigits - 1)
        return number_to_words(int(rng.integers(lo, 10**ndigits)))
    if kind == "command":
        return commands[int(rng.integers(len(commands)))]
    if kind == "sentence":
        return sentences[int(rng.integers(len(sentences)))]
    raise ValueError(kind)


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UttSpec:
    """Everything that determines one utterance's text and audio."""

    id: str
    split: str
    engine: str
    voice: str  # engine voice name
    speaker: str  # Voice.id
    kind: str
    text: str
    speed: float
    pitch: float
    snr_db: float | None
    noise_color: str | None
    peak_db: float
    noise_seed: int


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
# Engine checks
# --------------------------------------------------------------------------------------


def check_engines(engines) -> None:
    """Raise a clear error if a program or voice the given engines need is missing."""
    missing = []
    for engine in engines:
        for program, package in ENGINE_PROGRAMS[engine].items():
            if shutil.which(program) is None:
                missing.append(f"program '{program}' (apt package '{package}') for {engine}")
    if missing:
        raise RuntimeError("missing synthesizer: " + "; ".join(sorted(set(missing)))
                           + ". Install with apt-get install -y "
                           "$(cat recipes/synth/apt-packages.txt)")
    if "espeak" in engines:  # espeak-ng silently falls back for unknown voices/variants
        langs, variants = _espeak_inventory()
        lacking = sorted(set(ESPEAK_ACCENTS) - langs) + sorted(set(ESPEAK_VARIANTS) - variants)
        if lacking:
            raise RuntimeError(f"espeak-ng lacks voices/variants {lacking} (apt package "
                               "'espeak-ng' >= 1.51 has them all)")
    if "flite" in engines:  # flite silently falls back to its default voice
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
        have = set(out.replace("Voices available:", "").split())
        lacking = sorted(set(FLITE_VOICES) - have)
        if lacking:
            raise RuntimeError(f"flite lacks voices {lacking} (apt package 'flite')")
    if "festival" in engines:
        proc = subprocess.run(["festival", "-b", "(print (voice.list))"],
                              capture_output=True, text=True, timeout=60)
        have = set(proc.stdout.replace("(", " ").replace(")", " ").split())
        lacking = [f"{v} (apt package '{pkg}')" for v, (_, pkg) in FESTIVAL_VOICES.items()
                   if v not in have]
        if lacking:
            raise RuntimeError("festival lacks voices: " + ", ".join(lacking))


def _espeak_inventory() -> tuple[set[str], set[str]]:
    """(language names incl. aliases, variant names) that the installed espeak-ng knows."""
    out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True).stdout
    langs = set()
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 1:
            langs.add(parts[1])
        langs.update(re.findall(r"\(([\w-]+) \d+\)", line))
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True,
                         text=True).stdout
    return langs, set(re.findall(r"!v/(\S+)", out))


def available_engines() -> list[str]:
    """Engines whose programs are all on PATH (voices are not checked)."""
    return [e for e, progs in ENGINE_PROGRAMS.items() if all(shutil.which(p) for p in progs)]


# --------------------------------------------------------------------------------------
# Synthesis (runs in worker processes)
# --------------------------------------------------------------------------------------


class SynthError(RuntimeError):
    """A synthesizer call failed; the message names the command and its stderr."""


def _run(cmd: list[str], timeout: float = 60.0) -> bytes:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SynthError(f"command timed out after {timeout:.0f}s: {_fmt_cmd(cmd)}") from e
    if proc.returncode != 0:
        raise SynthError(f"command failed (exit {proc.returncode}): {_fmt_cmd(cmd)}\n"
                         f"stderr: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _fmt_cmd(cmd: list[str]) -> str:
    return " ".join(repr(c) if (" " in c or not c) else c for c in cmd)


class FestivalSession:
    """A long-running ``festival --pipe`` process (starting festival costs ~0.3 s, a diphone
    utterance only ~0.02 s). Each request is wrapped in ``unwind-protect`` so a failing
    utterance reports an error instead of killing the session."""

    def __init__(self, tmpdir: Path):
        self.tmpdir = tmpdir
        self.proc: subprocess.Popen | None = None
        self.counter = 0
        self.current_voice: str | None = None

    def _start(self) -> None:
        self.errpath = self.tmpdir / "festival.stderr"
        self.errfile = open(self.errpath, "wb")
        # stdbuf: festival block-buffers stdout on a pipe; we need each reply line at once.
        self.proc = subprocess.Popen(["stdbuf", "-oL", "festival", "--pipe"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errfile)
        self.buffer = b""
        self.current_voice = None

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
            self.errfile.close()
            self.proc = None

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while marker not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise SynthError("festival timed out")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise SynthError("festival exited")
                self.buffer += chunk
        finally:
            sel.close()
        reply, self.buffer = self.buffer.split(marker, 1)
        return reply

    def synthesize(self, voice: str, text: str, wav_path: Path, timeout: float = 60.0) -> None:
        """Synthesize ``text`` with festival voice ``voice`` into ``wav_path``."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.counter += 1
        marker = f"@@END{self.counter}@@".encode()
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        select_voice = f"(voice_{voice}) " if voice != self.current_voice else ""
        request = (
            f'(unwind-protect (begin {select_voice}'
            f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{wav_path}" \'riff) '
            f'(format t "@@OK\\n")) (format t "@@FAIL\\n"))\n'
            f'(format t "\\n{marker.decode()}\\n")\n'
        )
        err_pos = self.errpath.stat().st_size
        try:
            self.proc.stdin.write(request.encode())
            self.proc.stdin.flush()
            reply = self._read_until(marker, timeout)
        except (SynthError, OSError) as e:
            self.close()
            raise SynthError(f"festival session failed ({e}) on request: {request.strip()}"
                             f"\nstderr: {self._stderr_since(err_pos)}") from e
        if b"@@OK" not in reply or not wav_path.exists():
            self.current_voice = None
            raise SynthError(f"festival failed on request: {request.strip()}\n"
                             f"stderr: {self._stderr_since(err_pos)}")
        self.current_voice = voice

    def _stderr_since(self, pos: int) -> str:
        try:
            with open(self.errpath, "rb") as f:
                f.seek(pos)
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


_WORKER: dict = {}


def _worker_init(tmp_root: str) -> None:
    """Per-process state: a private temp dir and (lazily) a festival session."""
    tmpdir = Path(tmp_root) / f"w{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    _WORKER.clear()
    _WORKER.update(tmpdir=tmpdir, festival=None)


def _worker_exit() -> None:
    """Stop this process's festival session (pool workers run it when they exit)."""
    if _WORKER.get("festival") is not None:
        _WORKER["festival"].close()
    _WORKER.clear()


def _pool_worker_init(tmp_root: str) -> None:
    import multiprocessing.util

    _worker_init(tmp_root)
    multiprocessing.util.Finalize(None, _worker_exit, exitpriority=10)


def _read_wav_bytes(data: bytes, what: str) -> tuple[np.ndarray, int]:
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except Exception as e:
        raise SynthError(f"unreadable audio from {what}: {e}") from e
    return audio.mean(axis=1), sr


def _read_wav(path: Path, what: str) -> tuple[np.ndarray, int]:
    if not path.exists() or path.stat().st_size == 0:
        raise SynthError(f"{what} wrote no audio to {path}")
    return _read_wav_bytes(path.read_bytes(), what)


def _sox_pitch_tempo(src: Path, dst: Path, pitch: float, tempo: float | None) -> None:
    """Shift pitch by the factor ``pitch`` (and change tempo) with sox, float output."""
    cmd = ["sox", str(src), "-e", "floating-point", "-b", "32", str(dst),
           "pitch", f"{1200 * math.log2(pitch):.1f}"]
    if tempo is not None:
        cmd += ["tempo", "-s", f"{tempo:.3f}"]
    _run(cmd)


def synthesize_raw(spec: UttSpec, tmpdir: Path) -> tuple[np.ndarray, int]:
    """Run the engine for one utterance (with its speed and pitch); returns (audio, rate)."""
    if spec.engine == "espeak":
        # espeak-ng: -s words per minute (default 175), -p pitch 0..99 (default 50);
        # measured: F0 scales by about exp(0.0095 * (p - 50)).
        rate = max(80, round(175 * spec.speed))
        p = min(99, max(0, round(50 + math.log(spec.pitch) / 0.0095)))
        cmd = ["espeak-ng", "-v", spec.voice, "-s", str(rate), "-p", str(p), "--stdout",
               spec.text]
        return _read_wav_bytes(_run(cmd), _fmt_cmd(cmd))
    raw, shifted = tmpdir / f"{spec.id}.raw.wav", tmpdir / f"{spec.id}.sox.wav"
    try:
        if spec.engine == "flite":
            cmd = ["flite", "-voice", spec.voice, "-t", spec.text, "-o", str(raw),
                   "--setf", f"duration_stretch={1 / spec.speed:.3f}"]
            _run(cmd)
            _read_wav(raw, _fmt_cmd(cmd))  # validate before sox
            _sox_pitch_tempo(raw, shifted, spec.pitch, None)
        elif spec.engine == "festival":
            if _WORKER.get("festival") is None:
                _WORKER["festival"] = FestivalSession(tmpdir)
            _WORKER["festival"].synthesize(spec.voice, spec.text, raw)
            _read_wav(raw, f"festival voice {spec.voice}")
            _sox_pitch_tempo(raw, shifted, spec.pitch, spec.speed)
        else:
            raise ValueError(f"unknown engine {spec.engine}")
        return _read_wav(shifted, "sox")
    finally:
        raw.unlink(missing_ok=True)
        shifted.unlink(missing_ok=True)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (exact low-pass at the lower Nyquist frequency)."""
    if sr_in == sr_out:
        return x
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    # Zero-pad (>= 50 ms, so the FFT's circular wrap-around stays in silence) to a length
    # that maps to a whole number of output samples and has only small prime factors.
    blocks = _smooth_at_least(-(-(len(x) + sr_in // 20) // down))
    xp = np.concatenate([x, np.zeros(blocks * down - len(x))])
    n_out = blocks * up
    spec = np.fft.rfft(xp)
    m = n_out // 2 + 1
    out = np.zeros(m, dtype=complex)
    k = min(m, len(spec))
    out[:k] = spec[:k]
    y = np.fft.irfft(out, n_out) * (n_out / len(xp))
    return y[: int(round(len(x) * sr_out / sr_in))]


def _smooth_at_least(n: int) -> int:
    """Smallest integer >= n whose prime factors are all 2, 3, 5 or 7 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def trim_silence(x: np.ndarray, sr: int, keep_s: float = EDGE_SILENCE_S,
                 below_peak_db: float = TRIM_BELOW_PEAK_DB) -> np.ndarray:
    """Cut leading/trailing silence and leave exactly ``keep_s`` seconds (zero-padded)."""
    hop = sr // 100
    n_frames = len(x) // hop
    if n_frames == 0:
        return x
    frames = x[: n_frames * hop].reshape(n_frames, hop)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    active = np.flatnonzero(db > db.max() - below_peak_db)
    start, end = active[0] * hop, min(len(x), (active[-1] + 1) * hop)
    keep = int(round(keep_s * sr))
    return np.concatenate([np.zeros(keep), x[start:end], np.zeros(keep)])


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2 power) noise of unit RMS."""
    white = rng.standard_normal(n)
    if color != "white":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        f[0] = f[1] if n > 1 else 1.0
        spec /= np.sqrt(f) if color == "pink" else f
        white = np.fft.irfft(spec, n)
    return white / (np.sqrt(np.mean(white**2)) + 1e-12)


def postprocess(audio: np.ndarray, sr: int, spec: UttSpec) -> np.ndarray:
    """Resample to 16 kHz, trim silence, set the level and add noise at the spec's SNR."""
    x = resample(audio - np.mean(audio), sr, SAMPLE_RATE)
    peak = np.max(np.abs(x)) if len(x) else 0.0
    if peak < 1e-4:
        raise SynthError("synthesizer produced silence")
    x = trim_silence(x / peak, SAMPLE_RATE) * 10 ** (spec.peak_db / 20)
    rng = np.random.default_rng(spec.noise_seed)
    if spec.snr_db is not None:
        noise = colored_noise(len(x), spec.noise_color, rng)
        snr_db = spec.snr_db
    else:  # "clean": only a faint white floor, so no clip contains exact digital silence
        noise, snr_db = colored_noise(len(x), "white", rng), CLEAN_FLOOR_SNR_DB
    x = x + noise * np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))
    peak = np.max(np.abs(x))
    if peak > 0.99:  # scale speech and noise together: keeps the SNR
        x *= 0.99 / peak
    return x


def synthesize_utterance(spec_dict: dict, wav_path: str) -> dict:
    """Worker entry point: make one wav. Returns ``{"id", "duration"}`` or ``{"id", "error"}``."""
    spec = UttSpec(**spec_dict)
    if not _WORKER:
        _worker_init(str(Path(wav_path).parent.parent.parent / ".tmp"))
    try:
        audio, sr = synthesize_raw(spec, _WORKER["tmpdir"])
        x = postprocess(audio, sr, spec)
        tmp = Path(wav_path).with_suffix(".tmp.wav")
        sf.write(tmp, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav_path)
        return {"id": spec.id, "duration": len(x) / SAMPLE_RATE}
    except Exception as e:  # reported and skipped by the caller
        return {"id": spec.id, "error": f"{type(e).__name__}: {e}"}


def _valid_wav(path: Path) -> float | None:
    """Duration of an existing, readable 16 kHz mono wav, else None."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
        return None
    return info.frames / SAMPLE_RATE


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
