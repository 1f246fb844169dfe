"""``fulcra pool RUN_DIR ...``: the thesis's SLACK protocol across several ``search`` runs.

Tables 3.1-3.3 report, for SLACK, "4 independent searches, each policy evaluated with 4 evaluation
runs, meaning that we report averages over 16 evaluations" (thesis §3.4.1). One ``fulcra run
slack-...`` run is one search on one train/val split (seeded by ``seed=``) followed by
``eval_seeds`` (4) trainings from scratch per method; four runs with ``seed=0..3`` are the four
splits. This command pools their ``results.json``: every method's per-seed accuracies over all runs,
mean ± 95% CI (Student's t) over the pooled values, and the number of runs and evaluations.

    for s in 0 1 2 3; do fulcra run slack-cifar10 seed=$s out=runs/c10-s$s; done
    fulcra pool runs/c10-s0 runs/c10-s1 runs/c10-s2 runs/c10-s3 --out runs/c10-table.md
"""

from __future__ import annotations

import json
from pathlib import Path

from fulcra.engine import atomic_write_text, format_mean_ci, mean_ci
from fulcra.errors import ConfigError, FormatError

__all__ = ["pool_results", "PoolCommand"]


def pool_results(run_dirs: list[str | Path]) -> dict:
    """``{method: {"values", "mean", "ci95", "n", "runs"}}`` pooled over the ``results.json`` of
    several ``search`` runs; a method missing from some runs is pooled over the runs that have it."""
    if not run_dirs:
        raise ConfigError("pool: give the output folders of the search runs to pool")
    pooled: dict[str, dict] = {}
    seen: set[Path] = set()
    for d in run_dirs:
        path = Path(d).expanduser() / "results.json"
        if path.resolve() in seen:
            raise ConfigError(f"pool: {path.parent} is given twice")
        seen.add(path.resolve())
        if not path.is_file():
            raise FormatError(f"{path}: not found (is {path.parent} a finished `fulcra run slack-...` folder?)")
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(res, dict) or not res or not all(isinstance(r, dict) and "values" in r for r in res.values()):
            raise FormatError(f"{path}: not the results.json of a search run (per method: values, mean, ci95)")
        for name, r in res.items():
            p = pooled.setdefault(name, {"values": [], "runs": 0})
            p["values"].extend(float(v) for v in r["values"])
            p["runs"] += 1
    return {name: {**mean_ci(p["values"]), "runs": p["runs"]} for name, p in pooled.items()}


def pooled_table(pooled: dict) -> str:
    """Markdown: method, test accuracy mean ± 95% CI over the pooled evaluations (in %), runs, evaluations."""
    lines = ["| method | test accuracy (%) | runs | evaluations |", "|---|---|---|---|"]
    for name, r in pooled.items():
        lines.append(f"| {name} | {format_mean_ci(r)} | {r['runs']} | {r['n']} |")
    return "\n".join(lines) + "\n"


class PoolCommand:
    """``fulcra pool RUN_DIR ... [--out FILE.md]``: one table over several search runs (4 splits x 4 runs)."""

    help = "pool the results of several `fulcra run slack-...` runs (the thesis's 4 search splits x 4 evaluation runs)"

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "runs", nargs="+", help="output folders of search runs (one per train/val split: seed=0..3)"
        )
        parser.add_argument("--out", default=None, help="also write the table (and FILE.json) here")

    def run(self, args) -> int:
        pooled = pool_results(args.runs)
        table = pooled_table(pooled)
        print(table, end="")
        if args.out:
            out = Path(args.out).expanduser()
            atomic_write_text(table, out)
            atomic_write_text(json.dumps(pooled, indent=1), out.with_suffix(".json"))
        return 0
