"""How much compute pruning saves in a search, at what cost to the best value found.

Why: ``escapestat optimize`` reports the censored RMST so far at checkpoints, so that a
pruner can stop trials that are already worse than most. A pruner that stops the
eventual winner early would save time and lose the answer, so both are measured.

What: the same search (the study file's ``[search]``, same sampler seed, same trial
budget, same training seed) run twice in one process, with ``pruner = "none"`` and with
``pruner = "median"`` (or ``--pruner``), each into its own temporary SQLite storage,
without the constant-only search and without the compare step. Printed per run: wall
seconds of all trials, trials pruned, the best value (log RMST at the budget) and its
median time. The last line is one JSON object.

    python benchmarks/pruning.py [STUDY.toml] [--trials N] [--pruner median|hyperband]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import optuna

from escapestat.search._search import Objective, open_search, run_search
from escapestat.search._space import build_study, load_search
from escapestat.search._storage import embedded_url, open_storage


def search_once(raw, spec, source: str, pruner: str) -> dict:
    spec = dataclasses.replace(spec, pruner=pruner)
    budget = build_study(raw, {}, source).run.max_steps
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(embedded_url(Path(tmp)))
        study = open_search(storage, "pruning", spec, budget)
        began = time.perf_counter()
        result = run_search(study, Objective(raw, spec, source, "auto"), spec.trials)
        seconds = time.perf_counter() - began
    best = result.best
    return {"pruner": pruner, "seconds": round(seconds, 1),
            "pruned": result.counts.get("pruned", 0), "complete": result.counts.get("complete", 0),
            "best_value": None if best is None else round(best.value, 4),
            "best_median": None if best is None else best.user_attrs.get("median")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default="studies/grok-search-quick.toml")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--pruner", default="median", choices=["median", "hyperband"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw, spec = load_search(Path(args.study).read_text(encoding="utf-8"), args.study)
    if args.trials:
        spec = dataclasses.replace(spec, trials=args.trials)
    print(f"{args.study}: {spec.trials} trials, sampler {spec.sampler} (seed {spec.seed}), "
          f"objective {spec.objective}, {spec.checkpoints} checkpoints")
    runs = [search_once(raw, spec, args.study, p) for p in ("none", args.pruner)]
    for r in runs:
        print(f"  pruner {r['pruner']:<9} {r['seconds']:7.1f} s   {r['pruned']} pruned, "
              f"{r['complete']} complete   best value {r['best_value']} "
              f"(median {r['best_median']})")
    saved = 1 - runs[1]["seconds"] / runs[0]["seconds"]
    same = runs[0]["best_value"] == runs[1]["best_value"]
    print(f"pruning saved {100 * saved:.0f}% of the search's wall time; best value "
          + ("the same" if same else f"{runs[0]['best_value']} without, "
                                     f"{runs[1]['best_value']} with pruning"))
    print(json.dumps({"pruning_time_saved": round(saved, 3), "runs": runs}))


if __name__ == "__main__":
    main()
