"""The distillation stage of ``fulcra demo``: a small ``distill-digits`` run (about a minute on CPU).

It pre-trains its own tiny stand-in encoders on the digits images without their labels (no
foundation-model weights exist offline and it says so), probes and finetunes them, builds a Mixup
synthetic set, and scores the table's rows over two teachers, one student each, with the configured
hyperparameters (the recipe's validation grid search is off here, to stay short).
"""

from __future__ import annotations

from pathlib import Path

from fulcra.engine import format_mean_ci

__all__ = ["run_demo", "DEMO_OVERRIDES"]

DEMO_OVERRIDES = [
    "seeds=[0,1]",
    "pretrain.epochs=12",
    "pretrain.student_epochs=3",
    "probe.epochs=10",
    "train.epochs=4",
    "synthetic.factor=1",
    "student_seeds=[0]",
    "search.enabled=false",
]


def run_demo(out_dir: str | Path, hooks=None) -> dict:
    """Run the small distillation; writes ``results.json``, ``results.md`` and ``pca.png`` under
    ``out_dir``. Returns ``{"summary": table, "results": path, "pca_plot": path, ...}``."""
    import torch

    from fulcra.runner import run

    out = Path(out_dir)
    threads = torch.get_num_threads()
    # the demo's models are tiny: extra intra-op threads only synchronise (5x slower on a busy 2-core box)
    torch.set_num_threads(1)
    try:
        res = run("distill-digits", [f"out={out}", *DEMO_OVERRIDES], hooks=hooks if hooks is not None else [])
    finally:
        torch.set_num_threads(threads)
    rows = res.get("rows", {})
    summary = {"summary": res.get("table", ""), "results": str(out / "results.json")}
    if "pca_plot" in res:
        summary["pca_plot"] = res["pca_plot"]
    for key, row in rows.items():
        summary[key] = format_mean_ci(row, digits=1)
    return summary
