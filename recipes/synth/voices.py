"""The synthetic corpus's voices: the engines' voice tables and which voices each split gets.

A *voice* is one ``engine x voice x variant`` combination of the Debian synthesizers
``espeak-ng``, ``flite`` and ``festival`` (e.g. ``espeak:en-gb-x-rp+f3``, ``flite:slt``,
``festival:kal_diphone``) and is the utterance's ``speaker``. Whole voice families are held
out for dev and test (:data:`HOLDOUT_FAMILIES`), so evaluation is speaker-independent.
Used by :mod:`recipes.synth.generate` (planning) and :mod:`recipes.synth.synthesize`
(checking that the installed engines have these voices).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The corpus's splits; dev and test get the voice families in :data:`HOLDOUT_FAMILIES`.
SPLITS = ("train", "dev", "test")

#: Share of utterances per engine in every split (espeak-ng has by far the most voices,
#: flite and festival sound more natural; weighting keeps all three well represented).
#: Its keys are the engines (the default of :func:`all_voices` and :func:`split_voices`).
ENGINE_WEIGHTS = {"espeak": 0.70, "flite": 0.20, "festival": 0.10}

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
