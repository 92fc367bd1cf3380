"""Synthesizing one utterance: engine checks, the synthesizer calls and the post-processing.

:func:`check_engines` fails early, naming the missing program and its apt package, or the
voices an engine lacks (espeak-ng and flite silently fall back to a default voice).
:func:`synthesize_utterance` is the worker entry point: it runs ``espeak-ng``, ``flite`` or a
long-lived ``festival --pipe`` session (plus ``sox`` for pitch/tempo) for one
:class:`UttSpec`, then resamples to 16 kHz, trims the silence, sets the level, adds noise
(:func:`postprocess`) and writes the wav. Planning the specs and building the corpus from
them is :mod:`recipes.synth.generate`.
"""

from __future__ import annotations

import io
import math
import os
import re
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from recipes.synth.voices import ESPEAK_ACCENTS, ESPEAK_VARIANTS, FESTIVAL_VOICES, FLITE_VOICES

#: Sample rate of every wav the corpus holds.
SAMPLE_RATE = 16000

#: Post-processing.
CLEAN_FLOOR_SNR_DB = 60.0  # faint white noise floor of utterances without background noise
EDGE_SILENCE_S = 0.10  # silence kept (or padded) before and after the speech
TRIM_BELOW_PEAK_DB = 40.0  # frames this far below the loudest frame count as silence

#: program -> Debian package, per engine.
ENGINE_PROGRAMS = {
    "espeak": {"espeak-ng": "espeak-ng"},
    "flite": {"flite": "flite", "sox": "sox"},
    "festival": {"festival": "festival", "sox": "sox", "stdbuf": "coreutils"},
}


#: One planned utterance (:func:`recipes.synth.generate.plan_split` makes them): the input
#: of :func:`synthesize_utterance`, which workers get as a dict.
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
