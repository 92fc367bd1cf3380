"""Synthetic speech from the Debian synthesizers (espeak-ng, flite, festival) for keyword
training data: many voices, rates and pitches of one text.

Each rendering is cached under ``out_dir`` by a hash of (engine, voice, settings, text),
so a recipe re-run reuses it. Output: 16 kHz mono 16-bit WAV, silence trimmed, peak
normalised to -3 dBFS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm import tqdm

from asr.audio import AudioError, load_audio, save_audio
from kws.data import speech_region

log = logging.getLogger(__name__)

ESPEAK_VOICES = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us-nyc"]
ESPEAK_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4", "Andy", "Annie", "Alex", "Alicia",
                   "Diogo", "Ed", "Gene", "Jacky", "Lee", "Linda", "Max", "Michael", "Mike",
                   "Paul", "Pedro", "Rob", "Steph", "Tweaky", "anika", "edward", "grandma",
                   "grandpa", "croak", "whisper", "female_whisper", "norbert", "quincy",
                   "shelby", "travis", "victor", "zac", "Kaukovalta", "Hugo"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
FESTIVAL_VOICES = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak | flite | festival
    voice: str
    rate: float = 1.0  # speed factor (>1 faster)
    pitch: int = 50  # espeak 0-99; flite mean f0 = 60 + pitch * 1.6 Hz; festival ignores it


def available_engines() -> List[str]:
    found = []
    if shutil.which("espeak-ng"):
        found.append("espeak")
    if shutil.which("flite"):
        found.append("flite")
    if shutil.which("text2wave"):
        found.append("festival")
    return found


def sample_voices(n: int, seed: int = 0, engines: Optional[Sequence[str]] = None,
                  rate_range: Tuple[float, float] = (0.75, 1.35)) -> List[Voice]:
    """``n`` varied voices spread over the engines that are installed (about 60% espeak-ng,
    25% flite, 15% festival, which is slow)."""
    rng = random.Random(seed)
    engines = list(engines or available_engines())
    if not engines:
        raise RuntimeError("no speech synthesizer found: install espeak-ng, flite or festival")
    share = {"espeak": 0.6, "flite": 0.25, "festival": 0.15}
    out = []
    for i in range(n):
        eng = rng.choices(engines, weights=[share[e] for e in engines])[0]
        rate = round(rng.uniform(*rate_range), 2)
        pitch = rng.randint(15, 85)
        if eng == "espeak":
            v = rng.choice(ESPEAK_VOICES)
            var = rng.choice(ESPEAK_VARIANTS)
            out.append(Voice("espeak", v + (f"+{var}" if var else ""), rate, pitch))
        elif eng == "flite":
            out.append(Voice("flite", rng.choice(FLITE_VOICES), rate, pitch))
        else:
            out.append(Voice("festival", rng.choice(FESTIVAL_VOICES), rate, pitch))
    return out


def _render(text: str, v: Voice, wav: str) -> None:
    if v.engine == "espeak":
        cmd = ["espeak-ng", "-v", v.voice, "-s", str(int(165 * v.rate)), "-p", str(v.pitch),
               "-w", wav, text]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    elif v.engine == "flite":
        f0 = 60 + v.pitch * 1.6
        cmd = ["flite", "-voice", v.voice, "--setf", f"duration_stretch={1.0 / v.rate:.3f}",
               "--setf", f"int_f0_target_mean={f0:.0f}", "-t", text, "-o", wav]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    elif v.engine == "festival":
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(text + "\n")
        try:
            cmd = ["text2wave", "-eval", f"(voice_{v.voice})", "-eval",
                   f"(Parameter.set 'Duration_Stretch {1.0 / v.rate:.3f})", "-o", wav, f.name]
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        finally:
            Path(f.name).unlink(missing_ok=True)
    else:
        raise ValueError(f"unknown synthesizer {v.engine!r}")


def synthesize(text: str, voice: Voice, out_dir: str | Path, sample_rate: int = 16000,
               pad_s: float = 0.1) -> Optional[Path]:
    """Render ``text`` with ``voice`` into ``out_dir`` (cached); None if the engine fails."""
    key = json.dumps([text, asdict(voice)], sort_keys=True)
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = Path(out_dir) / f"{voice.engine}_{name}.wav"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = str(Path(tmp) / "raw.wav")
        try:
            _render(text, voice, raw)
            wave = load_audio(raw, sample_rate)
        except (subprocess.SubprocessError, OSError, AudioError) as exc:
            log.warning("synthesis failed for %r with %s: %s", text, voice, exc)
            return None
    a, b = speech_region(wave, sample_rate, floor_db=45.0)
    pad = int(pad_s * sample_rate)
    wave = wave[max(0, a - pad):b + pad]
    peak = float(wave.abs().max())
    if peak < 1e-4:
        return None
    save_audio(path, wave * (0.7 / peak), sample_rate)
    return path


def synthesize_many(items: Sequence[Tuple[str, Voice]], out_dir: str | Path, jobs: int = 2,
                    desc: str = "synthesizing") -> List[Tuple[str, Voice, Path]]:
    """[(text, voice)] -> [(text, voice, wav path)] for the renderings that worked."""
    out = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = pool.map(lambda it: synthesize(it[0], it[1], out_dir), items)
        for (text, voice), path in tqdm(zip(items, results), total=len(items), desc=desc,
                                        mininterval=2.0):
            if path is not None:
                out.append((text, voice, path))
    return out
