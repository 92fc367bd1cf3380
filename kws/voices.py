"""The inventory of installed synthetic voices and the split of whole voices into training
and held-out sets. No synthesis here (see :mod:`kws.synth`).

A voice id is ``engine:voice``: ``espeak:en-gb-x-rp+f3`` (an espeak-ng accent and voice
variant), ``flite:slt``, ``festival:kal_diphone``. Voices are grouped into *families*
that sound like the same speaker: an espeak-ng variant (its timbre) in every accent, and
one recorded speaker in every engine that has it (flite ``kal``/``kal16`` and festival
``kal_diphone`` are the same person). Holding a voice out holds out its whole family, so
no held-out speaker is heard in training under another accent or engine.
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from kws.synth import Voice

__all__ = ["voice_inventory", "voice_family", "split_voices", "sample_renderings", "parse_voice_id",
           "DEFAULT_HOLD_OUT"]

#: espeak-ng variants that are not a human-sounding voice (robots, effects, test voices)
ESPEAK_EXCLUDED_VARIANTS = {"Demonic", "UniRobot", "anikaRobot", "fast", "Mr", "Mr serious", "announcer",
                            "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm"}
FLITE_EXCLUDED = {"awb_time"}  # limited domain (times of day only)
#: recorded speaker behind flite / festival voices
SPEAKERS = {"flite:kal": "kal", "flite:kal16": "kal", "flite:awb": "awb", "flite:rms": "rms",
            "flite:slt": "slt", "festival:kal_diphone": "kal", "festival:ked_diphone": "ked",
            "festival:cmu_us_slt_arctic_hts": "slt", "festival:rab_diphone": "rab",
            "festival:don_diphone": "don"}
#: held out by default: 4 espeak-ng variants (every accent) and two recorded speakers
DEFAULT_HOLD_OUT = ["espeak-variant:f2", "espeak-variant:m3", "espeak-variant:klatt2",
                    "espeak-variant:Annie", "speaker:rms", "speaker:ked"]


def parse_voice_id(vid: str) -> Tuple[str, str]:
    engine, sep, name = vid.partition(":")
    if not sep or engine not in ("espeak", "flite", "festival") or not name:
        raise ValueError(f"voice id {vid!r}: expected espeak:<accent>[+variant], flite:<voice> "
                         "or festival:<voice>")
    return engine, name


def voice_family(vid: str) -> str:
    """``espeak-variant:<variant>`` (``default`` without one) or ``speaker:<name>``."""
    engine, name = parse_voice_id(vid)
    if engine == "espeak":
        return "espeak-variant:" + (name.split("+", 1)[1] if "+" in name else "default")
    return "speaker:" + SPEAKERS.get(vid, name)


def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _espeak_voices() -> List[str]:
    if not shutil.which("espeak-ng"):
        return []
    accents = []
    for line in _run(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        cols = line.split()
        # only espeak-ng's own voices (gmw/...); mbrola (mb/...) needs extra packages
        if len(cols) >= 5 and cols[4].startswith("gmw/") and cols[1] not in accents:
            accents.append(cols[1])
    variants = []
    for line in _run(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        m = re.search(r"!v/(\S+)", line)
        if m and m.group(1) not in ESPEAK_EXCLUDED_VARIANTS and m.group(1) not in variants:
            variants.append(m.group(1))
    return [f"espeak:{a}" + (f"+{v}" if v else "")
            for a in accents for v in [""] + variants]


def _flite_voices() -> List[str]:
    if not shutil.which("flite"):
        return []
    out = _run(["flite", "-lv"])
    names = out.split(":", 1)[1].split() if ":" in out else []
    return [f"flite:{n}" for n in names if n not in FLITE_EXCLUDED]


def _festival_voices(roots: Sequence[str] = ("/usr/share/festival/voices",)) -> List[str]:
    if not shutil.which("text2wave"):
        return []
    found = []
    for root in roots:
        r = Path(root)
        if r.is_dir():
            found += [f"festival:{d.name}" for d in sorted(r.glob("*/*")) if d.is_dir()]
    return found


def voice_inventory(engines: Optional[Sequence[str]] = None) -> List[str]:
    """Every installed voice id (of ``engines``, default all three)."""
    engines = list(engines or ("espeak", "flite", "festival"))
    out: List[str] = []
    if "espeak" in engines:
        out += _espeak_voices()
    if "flite" in engines:
        out += _flite_voices()
    if "festival" in engines:
        out += _festival_voices()
    return out


def split_voices(voices: Sequence[str], hold_out: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(training voices, held-out voices). ``hold_out`` names voice ids or families; every
    voice of a held-out voice's family is held out. Raises if either side ends up empty
    or if a held-out name matches no voice."""
    families = set()
    for h in hold_out:
        fam = h if h.startswith(("espeak-variant:", "speaker:")) else voice_family(h)
        if not any(voice_family(v) == fam for v in voices):
            raise ValueError(f"held-out voice {h!r} matches none of the {len(voices)} voices in use")
        families.add(fam)
    held = [v for v in voices if voice_family(v) in families]
    train = [v for v in voices if voice_family(v) not in families]
    if not held:
        raise ValueError("no held-out voice: pass --hold-out-voices")
    if not train:
        raise ValueError("every voice is held out: nothing left to train on")
    return train, held


def sample_renderings(voices: Sequence[str], n: int, rng: random.Random,
                      rate_range: Sequence[float] = (0.75, 1.35), pitch_range: Sequence[int] = (15, 85),
                      engine_shares: Optional[Dict[str, float]] = None) -> List[Voice]:
    """``n`` renderings (voice, rate, pitch): an engine by ``engine_shares`` (among the
    engines present), then a voice of it uniformly, a rate and a pitch."""
    by_engine: Dict[str, List[str]] = {}
    for v in voices:
        by_engine.setdefault(parse_voice_id(v)[0], []).append(v)
    if not by_engine:
        raise ValueError("no voices to render with")
    shares = engine_shares or {"espeak": 0.6, "flite": 0.25, "festival": 0.15}
    engines = sorted(by_engine)
    weights = [shares.get(e, 0.1) for e in engines]
    out = []
    for _ in range(n):
        e = rng.choices(engines, weights=weights)[0]
        vid = rng.choice(by_engine[e])
        out.append(Voice(e, parse_voice_id(vid)[1], round(rng.uniform(*rate_range), 2),
                         rng.randint(int(pitch_range[0]), int(pitch_range[1]))))
    return out


def voice_id(v: Voice) -> str:
    return f"{v.engine}:{v.voice}"
