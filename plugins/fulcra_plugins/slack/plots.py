"""Figures of a SLACK policy (thesis Fig. 3.3 and Fig. A.1), from the policy file's contents only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from fulcra.errors import MissingDependencyError
from fulcra.policy import Policy

__all__ = ["plot_pie", "plot_evolution"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("plots need matplotlib: pip install 'fulcra[plots]'", extra="plots") from e
    return plt


def plot_pie(policy: Policy, path: str | Path | None = None, initial_mu: float = 0.75, title: str | None = None):
    """The pie chart of thesis Fig. 3.3: slice angle = probability averaged over the K stages,
    slice radius = μ (parameter-free transforms drawn at radius 1), grey circle = ``initial_mu``.

    Returns the matplotlib figure; saves it when ``path`` is given.
    """
    plt = _pyplot()
    from matplotlib.patches import Wedge

    p = policy.probs().mean(0).numpy()
    r = [1.0 if policy.ranges.get(o) is None else float(m) for o, m in zip(policy.ops, policy.mu.tolist())]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.add_patch(plt.Circle((0, 0), initial_mu, color="0.85", zorder=0))
    cmap = plt.get_cmap("tab20")
    start = 90.0
    for i, (o, pi, ri) in enumerate(zip(policy.ops, p, r)):
        sweep = 360.0 * float(pi)
        ax.add_patch(Wedge((0, 0), ri, start, start + sweep, facecolor=cmap(i % 20), edgecolor="white", lw=0.5))
        if pi > 0.015:
            # beside its own wedge: at the wedge's mid angle, just outside its radius, aligned away
            # from the centre so long names do not run over neighbouring wedges
            mid = math.radians(start + sweep / 2)
            rr = max(ri, 0.35) + 0.06
            x, y = rr * math.cos(mid), rr * math.sin(mid)
            ax.text(x, y, f"{o} {100 * pi:.0f}%", ha="left" if x >= 0 else "right", va="center", fontsize=7)
        start += sweep
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or "policy: angle = π (mean over stages, %), radius = μ (grey: initial μ)")
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def plot_evolution(policy: Policy, history: Sequence[Any], path: str | Path | None = None):
    """Fig. A.1 (left): stacked probabilities per stage (and their mean) over search steps.

    Args:
        policy: gives the op names (legend).
        history: sequence of ``[K, N]`` probability arrays (or Policies), one per recorded step.
    """
    import numpy as np

    plt = _pyplot()
    h = np.stack([np.asarray(x.probs() if isinstance(x, Policy) else x, dtype=float) for x in history])  # [T, K, N]
    T, K, N = h.shape
    fig, axes = plt.subplots(1, K + 1, figsize=(3.2 * (K + 1), 3), sharey=True)
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i % 20) for i in range(N)]
    for k in range(K + 1):
        data = h[:, k, :] if k < K else h.mean(1)
        axes[k].stackplot(np.arange(T), data.T, colors=colors, labels=policy.ops)
        axes[k].set_title(f"stage {k + 1}" if k < K else "mean over stages")
        axes[k].set_xlim(0, max(T - 1, 1))
        axes[k].set_ylim(0, 1)
        axes[k].set_xlabel("search step (recorded)")
    axes[0].set_ylabel("probability π")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=6)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig
