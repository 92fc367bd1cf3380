"""Command line: ``python -m active_learning {score,select,simulate,loop,queue}``.

score: one JSON line per clip, ``{"id", "score"}`` (higher = more worth labeling), plus
``"hypothesis"`` (the best hypothesis's text) from the scorers that decode, written as
batches finish into ``OUT.tmp``, renamed to ``OUT`` once all are scored (the arguments are
checked first: a refused run leaves an existing ``OUT`` alone). select: the chosen clips as
a manifest (the labeling queue), each with ``meta.al_score`` and, where its score row has
one, ``meta.hypothesis``; a JSON summary on stdout. simulate: the active-learning loop with
the pool's own transcripts as labels, for several strategies and seeds (results.jsonl,
results.md and a plot in --out). loop: the same loop labeled by people through the queue
(it stops until the selected clips are labeled; rerun it then). queue: the labeling queue web app
and its database (``queue --help``).

Known errors (a missing checkpoint, data folder or manifest, an unknown corpus, a bad
argument or config field) end the command with one line ``error: ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _score(args) -> int:
    import torch

    from active_learning.pool import score_pool_file
    from active_learning.scorers import ScoringConfig, build_scorer
    from asr.corpora import load_corpus

    # everything that can refuse the arguments runs before --out is touched
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    torch.set_num_threads(args.threads)
    cfg = ScoringConfig(method=args.method, head=args.head, nbest=args.nbest, beam=args.beam,
                        params=args.params, egl_length_norm=args.egl_length_norm,
                        confidence_length_norm=args.confidence_length_norm, seed=args.seed,
                        batch_seconds=args.batch_seconds)
    model, tokenizer, sample_rate = None, None, 16000
    if args.method != "random":
        if not args.model:
            raise ValueError(f"--model is needed for --method {args.method}")
        from asr.checkpoint import load_model

        model, tokenizer, model_cfg = load_model(args.model)
        sample_rate = model_cfg.sample_rate
    scorer = build_scorer(model, cfg, tokenizer)
    corpus = load_corpus(args.corpus, args.data, split=args.split)
    utts = corpus[: args.limit] if args.limit else list(corpus)
    counts = score_pool_file(scorer, utts, args.out, sample_rate, cfg.batch_seconds,
                             progress=not args.no_progress)
    if not args.limit:  # the entries the corpus reader left out; with --limit, only its clips count
        counts["skipped"] += len(corpus.rejected)
    print(json.dumps({"out": args.out, "method": args.method, **counts}))
    return 0


def _select(args) -> int:
    from active_learning.pool import read_score_rows, selected_for_labeling
    from active_learning.select import SelectionConfig, select_clips
    from asr.corpora import load_corpus
    from asr.data import write_manifest

    rows = read_score_rows(args.scores)
    utts = load_corpus(args.corpus, args.data, split=args.split)
    chosen = select_clips(utts, {uid: r["score"] for uid, r in rows.items()},
                          SelectionConfig(hours=args.hours, speaker_decay=args.speaker_decay))
    write_manifest(selected_for_labeling(chosen, rows), args.out)
    print(json.dumps({"out": args.out, "selected": len(chosen),
                      "hours": round(sum(u.duration for u, _ in chosen) / 3600.0, 4),
                      "budget_hours": args.hours, "candidates": len(rows)}))
    return 0


def _loop(args) -> int:
    from active_learning.loop import Loop, load_loop_config

    cfg = load_loop_config(args.config, args.set)
    wanted = "simulate" if args.command == "simulate" else "queue"
    if cfg.labels != wanted:
        raise SystemExit(f"{args.config}: labels is {cfg.labels!r}; `{args.command}` needs labels: {wanted}")
    only = [s for s in (args.only or "").split(",") if s]
    rows = Loop(cfg, args.out).run(progress=not args.no_progress, only=only or None)
    print(json.dumps({"out": args.out, "rounds_finished": len(rows),
                      "results": str(Path(args.out) / "results.jsonl")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from active_learning.gradients import PARAMETER_SUBSETS
    from active_learning.scorers import EGL_LENGTH_NORMS, SCORERS

    p = argparse.ArgumentParser(prog="python -m active_learning")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score a pool of unlabeled clips")
    s.add_argument("--model", help="checkpoint (not needed for --method random)")
    s.add_argument("--corpus", required=True, help="corpus reader name (e.g. manifest)")
    s.add_argument("--data", required=True, help="corpus directory or manifest")
    s.add_argument("--split")
    s.add_argument("--method", required=True, choices=SCORERS.names())
    s.add_argument("--out", required=True, help="JSON lines: id, score (and hypothesis, but from random)")
    s.add_argument("--head", help="model head (default: the first)")
    s.add_argument("--nbest", type=int, default=4)
    s.add_argument("--beam", type=int, default=8)
    s.add_argument("--params", default="all",
                   help=f"EGL parameters: {', '.join(PARAMETER_SUBSETS)} or comma-separated name prefixes")
    s.add_argument("--egl-length-norm", default="none", choices=EGL_LENGTH_NORMS)
    s.add_argument("--confidence-length-norm", default="tokens", choices=("tokens", "none"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-seconds", type=float, default=30.0)
    s.add_argument("--limit", type=int, help="score only the first N clips the corpus reader kept "
                   "(skipped then counts only those of them that could not be scored)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_score)

    t = sub.add_parser("select", help="pick clips under a budget of audio hours")
    t.add_argument("--scores", required=True, help="output of `score`")
    t.add_argument("--corpus", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--split")
    t.add_argument("--hours", type=float, required=True)
    t.add_argument("--speaker-decay", type=float, default=1.0,
                   help="diversity: scale a clip's score by this per clip of its speaker already chosen")
    t.add_argument("--out", required=True, help="manifest of the chosen clips")
    t.set_defaults(func=_select)

    for name, text in (("simulate", "the active-learning loop, labels from the pool's own transcripts"),
                       ("loop", "the active-learning loop, labels from people through the queue")):
        lp = sub.add_parser(name, help=text)
        lp.add_argument("--config", required=True, help="loop YAML (active_learning.loop.LoopConfig)")
        lp.add_argument("--out", required=True, help="run folder; rerunning continues it")
        lp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
        lp.add_argument("--only", metavar="STRATEGY[,STRATEGY]",
                        help="run only these of the config's strategies (split a run across processes)")
        lp.add_argument("--no-progress", action="store_true")
        lp.set_defaults(func=_loop)

    from active_learning.queue.cli import add_queue_parser

    add_queue_parser(sub)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:  # as `python -m asr` does
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
