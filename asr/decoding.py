"""Decoding options of a trained model: its saved ``decoding`` defaults (head, search, beam,
closed vocabulary, test-time warps, LM fusion), each overridable, resolved into the
keyword arguments of :meth:`asr.model.ASRModel.decode`. The CLI, the benches and the
recipes all decode through this, so a shipped model decodes the same way everywhere."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from asr.config import ExperimentConfig
from asr.search.attention import refuse_beam_only_options
from asr.text import Tokenizer, normalize_text


def read_texts(path: str | Path) -> List[str]:
    """Transcripts from a manifest (.jsonl) or a plain text file, one sentence a line."""
    path = str(path)
    if path.endswith(".jsonl"):
        from asr.data import read_manifest

        return [u.text for u in read_manifest(path)]
    return [line.strip() for line in open(path, encoding="utf-8") if line.strip()]


@lru_cache(maxsize=4)
def _cached_lm(kind: str, texts_path: str, mtime: float, order: int, tokenizer_key: str, tokenizer):
    from asr.lm import build_lm

    return build_lm(kind, (normalize_text(t) for t in read_texts(texts_path)), order, tokenizer)


def load_lm(kind: str, texts_path: str | Path, order: int, tokenizer: Tokenizer):
    """The fusion LM built from a text file, built once per process for the same inputs."""
    import json

    p = Path(texts_path).resolve()
    return _cached_lm(kind, str(p), p.stat().st_mtime, order,
                      json.dumps(tokenizer.to_dict(), sort_keys=True), tokenizer)


@lru_cache(maxsize=4)
def _cached_neural_lm(path: str, mtime: float):
    from asr.neural_lm import LSTMLM

    return LSTMLM.load(path)


def load_neural_lm(path: str | Path, tokenizer: Tokenizer):
    """The rescoring LM saved at ``path``, loaded once per process; refused, naming the
    file, when it was trained for another tokenizer than ``tokenizer``."""
    p = Path(path).resolve()
    if not p.is_file():
        raise FileNotFoundError(f"{path}: rescoring LM not found")
    lm = _cached_neural_lm(str(p), p.stat().st_mtime)
    if lm.tokenizer.to_dict() != tokenizer.to_dict():
        raise ValueError(f"{path}: the LM was trained for another tokenizer than the ASR "
                         "model's (train it with python -m asr lm --model THAT_MODEL)")
    return lm


def _needs_nbest(rescoring: str, nbest: Optional[int]) -> None:
    """Refuse a second pass (``rescoring`` says which) that would have no N-best list to
    re-rank: with ``nbest`` < 2 it would change nothing, yet be reported as used."""
    if (nbest or 1) < 2:
        raise ValueError(f"{rescoring} needs an N-best list: give nbest > 1 (--nbest), "
                         f"not {nbest}")


def decoding_options(model, tokenizer: Tokenizer, cfg: ExperimentConfig, model_path: str | Path,
                     plain: bool = False, head: Optional[str] = None, method: Optional[str] = None,
                     beam: Optional[int] = None, vocab: Optional[Sequence[str]] = None,
                     warps: Optional[Sequence[float]] = None, lm_texts: Optional[str] = None,
                     lm_kind: Optional[str] = None, lm_order: Optional[int] = None,
                     lm_weight: Optional[float] = None, length_bonus: Optional[float] = None,
                     no_lm: bool = False, hotwords: Optional[Sequence[str]] = None,
                     hotword_boost: float = 2.0, ctc_weight: Optional[float] = None,
                     rescore: Optional[str] = None, rescore_weight: Optional[float] = None,
                     nbest: Optional[int] = None, token_min_logp: Optional[float] = None,
                     beam_prune_logp: Optional[float] = None, rescore_lm: Optional[str] = None,
                     rescore_lm_weight: Optional[float] = None,
                     length_norm: Optional[float] = None, end_window: Optional[int] = None,
                     end_margin: Optional[float] = None) -> Dict:
    """``head``, ``method`` and search options: each given value, else the model's saved
    default (none of them with ``plain``; for a ``head`` other than the saved default head,
    that head's entry in ``other_heads``, if any).
    A relative saved ``lm_texts`` is found beside the checkpoint ``model_path``; ``no_lm``
    drops the saved LM. ``hotwords``: phrases
    boosted by ``hotword_boost`` per token (through the LM-fusion interface); ``ctc_weight``:
    joint CTC/attention decoding (``attention_beam`` only; refused for another search);
    ``rescore``: an attention head re-ranking the N-best
    list (``nbest`` hypotheses, > 1) with ``rescore_weight`` (these four also saved; a
    weight of 0 keeps the first pass's ranking); ``rescore_lm``: a neural LM file
    (``python -m asr lm``) re-ranking the N-best list with ``rescore_lm_weight`` (needs
    ``nbest`` > 1); ``token_min_logp`` and ``beam_prune_logp``: the CTC prefix beam's
    pruning; ``length_norm``, ``end_window`` and ``end_margin``: the attention beam's
    length normalisation and end detection (``attention_beam`` only, like ``ctc_weight``;
    all three also saved, None there: the search's defaults)."""
    from asr.evaluate import vocab_search

    saved = cfg.decoding if not plain else type(cfg.decoding)()
    if head and head != (saved.head or next(iter(model.heads))):
        # the saved search, beam, LM, vocabulary and warps say how the saved head decodes;
        # another head starts from its own saved defaults, else from its search's
        saved = saved.other_heads.get(head) or type(cfg.decoding)()
    head = head or saved.head
    method = method or saved.method
    options: Dict = {}
    beam = beam or saved.beam
    if beam:
        options.update(beam=beam)
    if vocab:
        phrases = list(vocab)
    else:  # the saved vocabulary, unless an open search was asked for by name
        phrases = saved.vocabulary if method is None or method.endswith("_vocab") else []
    if phrases:
        phrases = [p for p in dict.fromkeys(normalize_text(t) for t in phrases) if p]
        options.update(vocabulary=[tokenizer.encode(p) for p in phrases])
        method = method or vocab_search(model, head)
    warps = warps if warps is not None else saved.warps
    if warps:
        options.update(warps=list(warps))
    if lm_texts is None and saved.lm_texts and not no_lm:
        lm_texts = Path(saved.lm_texts)
        if not lm_texts.is_absolute():  # shipped beside the checkpoint
            lm_texts = Path(model_path).resolve().parent / lm_texts
        if not lm_texts.is_file():
            raise FileNotFoundError(f"{lm_texts}: the LM texts named in {model_path}'s decoding "
                                    "defaults are missing (--no-lm decodes without the LM)")
    if lm_texts:
        pick = lambda given, default: default if given is None else given
        options.update(
            lm_score=load_lm(pick(lm_kind, saved.lm_kind), lm_texts, pick(lm_order, saved.lm_order),
                             tokenizer),
            lm_weight=pick(lm_weight, saved.lm_weight),
            length_bonus=pick(length_bonus, saved.length_bonus))
    if hotwords:
        from asr.search.biasing import with_biasing

        phrases = [p for p in dict.fromkeys(normalize_text(t) for t in hotwords) if p]
        options = with_biasing(options, [tokenizer.encode(p) for p in phrases], hotword_boost)
    given = {"ctc_weight": ctc_weight, "rescore": rescore, "rescore_weight": rescore_weight,
             "nbest": nbest, "token_min_logp": token_min_logp, "beam_prune_logp": beam_prune_logp,
             "length_norm": length_norm, "end_window": end_window, "end_margin": end_margin}
    for key, value in given.items():
        value = value if value is not None else getattr(saved, key)
        if value is not None:
            options[key] = value
    refuse_beam_only_options(model.search_method(head, method), options)
    if options.get("rescore"):
        _needs_nbest(f"rescoring with the head {options['rescore']!r} (--rescore)",
                     options.get("nbest"))
    if rescore_lm:
        _needs_nbest(f"rescoring with the LM {rescore_lm}", options.get("nbest"))
        options.update(rescore_lm=load_neural_lm(rescore_lm, tokenizer),
                       rescore_lm_weight=0.5 if rescore_lm_weight is None else rescore_lm_weight)
    return {"head": head, "method": method, **options}


def with_saved_decoding(cfg: ExperimentConfig, model, out_path: str | Path,
                        head: Optional[str] = None, make_default: bool = False,
                        **fields) -> ExperimentConfig:
    """``cfg`` with the saved decoding of ``head`` (default: the saved default head) made
    exactly ``fields`` (:class:`asr.config.DecodingConfig` fields; absent ones take their
    defaults), for a checkpoint to be written at ``out_path``. With ``make_default``,
    ``head`` becomes the model's default head and the former default's decoding moves to
    ``other_heads``. An LM text in the checkpoint's folder is saved by name (it travels
    with the checkpoint), any other as an absolute path; a missing file, an unknown head, a
    search the head lacks, an option of another search (``ctc_weight``, ``length_norm``,
    ``end_window``, ``end_margin`` without ``attention_beam``) or a rescoring head that is not an attention head is refused,
    naming it, and so is a rescoring head without ``nbest`` > 1."""
    import dataclasses

    decoding = cfg.decoding
    default_head = decoding.head or next(iter(model.heads))
    head = head or default_head
    if head not in model.heads:
        raise ValueError(f"head {head!r}: the model has {list(model.heads)}")
    method = fields.get("method")
    if method and method not in model.heads[head].search_methods:
        raise ValueError(f"search {method!r}: head {head!r} decodes with "
                         f"{model.heads[head].search_methods}")
    refuse_beam_only_options(model.search_method(head, method), fields)
    if fields.get("rescore"):
        model.rescoring_head(fields["rescore"])
        _needs_nbest(f"rescoring with the head {fields['rescore']!r} (--rescore)",
                     fields.get("nbest"))
    if fields.get("lm_texts"):
        lm = Path(fields["lm_texts"]).resolve()
        if not lm.is_file():
            raise FileNotFoundError(f"{fields['lm_texts']}: LM texts not found")
        beside = lm.parent == Path(out_path).resolve().parent
        fields["lm_texts"] = lm.name if beside else str(lm)
    fields.pop("head", None)
    entry = type(decoding)(**fields)
    others = {k: v for k, v in decoding.other_heads.items() if k != head}
    if head == default_head:
        new = dataclasses.replace(entry, head=decoding.head, other_heads=others)
    elif make_default:
        others[default_head] = dataclasses.replace(decoding, head=None, other_heads={})
        new = dataclasses.replace(entry, head=head, other_heads=others)
    else:
        new = dataclasses.replace(decoding, other_heads={**others, head: entry})
    return dataclasses.replace(cfg, decoding=new)
