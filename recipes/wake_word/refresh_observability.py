"""Rewrite the observability fields of train-wakeword results files from the hours they
record, without re-running anything:

    python -m recipes.wake_word.refresh_observability recipes/wake_word/results_*.json

Every object holding ``rate_observable`` gets ``rate_observable``, ``hours_needed`` and
``note`` from :func:`kws.wakeword.observability` of its own ``negative_hours`` and
``target_fa_per_hour`` (the rule of ``python -m kws evaluate-detection``: 0.5 FA/h needs 3 h).
The measured figures (FRR, thresholds, false alarms) are left as they are.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List

from kws.wakeword import observability


def refresh(obj: Any) -> Any:
    """``obj`` (parsed JSON) with the observability fields of every object that has them
    recomputed; keys keep their order, new ones follow ``rate_observable``."""
    if isinstance(obj, list):
        return [refresh(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: refresh(v) for k, v in obj.items()}
    if "rate_observable" not in out:
        return out
    for key in ("negative_hours", "target_fa_per_hour"):
        if not isinstance(out.get(key), (int, float)):
            raise ValueError(f"an object with rate_observable has no numeric {key!r}: {sorted(out)}")
    fields = observability(out["negative_hours"], out["target_fa_per_hour"])
    rebuilt = {}
    for k, v in out.items():
        if k in fields:
            if k == "rate_observable":
                rebuilt.update(fields)
            continue
        rebuilt[k] = v
    return rebuilt


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="results JSON files, rewritten in place")
    p.add_argument("--check", action="store_true", help="only report files that would change (exit 1)")
    args = p.parse_args(argv)
    stale = []
    for f in map(Path, args.files):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: {f}: cannot read JSON ({exc})")
        try:
            new = refresh(data)
        except ValueError as exc:
            raise SystemExit(f"error: {f}: {exc}")
        if new != data or list(new) != list(data):
            stale.append(str(f))
            if not args.check:
                f.write_text(json.dumps(new, indent=1))  # as results.json is written
    print(json.dumps({"changed" if not args.check else "stale": stale}))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
