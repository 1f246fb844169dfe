"""The SLACK stage of ``fulcra demo``: a tiny search + evaluation on the offline digits, < 60 s on CPU."""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_demo"]

DEMO_CONFIG = {
    "workflow": "search",
    "data": {"name": "digits", "size": 12},
    "model": {"name": "small_cnn", "width": 8},
    "optimizer": {"name": "slack", "space": "cifar", "pretrain_steps": 40, "rounds": 2, "retrain_steps": 5,
                  "unrolled_steps": 8, "batch_size": 32, "b_aug": 4, "lower_lr": 0.05, "upper_lr": 5.0,
                  "kl_weight": 0.004, "checkpoint_every": 10},
    "baselines": ["uniform", {"name": "trivialaugment", "variant": "wide"}],
    "include_no_augmentation": False,
    "eval_seeds": 2,
    "eval_epochs": 2,
    "eval_batch_size": 64,
    "eval_lr": 0.05,
}


def run_demo(out_dir: str | Path, hooks=None) -> dict:
    """Search a policy on digits and evaluate it beside two baselines; writes ``policy.json``,
    ``policy.png``, ``results.json`` under ``out_dir``. Returns the workflow's results."""
    from fulcra.runner import run

    cfg = dict(DEMO_CONFIG, out=str(Path(out_dir)))
    return run(cfg, [], hooks=hooks if hooks is not None else [])
