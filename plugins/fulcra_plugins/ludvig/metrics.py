"""Metrics and result tables of the 3D tasks: IoU, localisation accuracy, per-scene + mean tables."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = ["iou", "localisation_hit", "accuracy", "results_table"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def iou(pred, target) -> float:
    """Intersection over union of two boolean masks of the same shape (any dims).

    Both empty counts as a perfect match (1.0), as in the NVOS/SPIn-NeRF evaluation code.
    """
    p, t = _np(pred).astype(bool), _np(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"iou: prediction {p.shape} and target {t.shape} differ in shape")
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def localisation_hit(point, boxes: Sequence[Sequence[float]] | None = None, mask=None) -> bool:
    """Whether a predicted pixel ``point`` (x, y) falls inside any box ``[x1, y1, x2, y2]`` or on ``mask``.

    LERF/LangSplat count a localisation as correct when the arg-max pixel lies in one of the boxes
    annotated for the query.
    """
    x, y = float(point[0]), float(point[1])
    if boxes is not None:
        for b in boxes:
            x1, y1, x2, y2 = (float(v) for v in b)
            if min(x1, x2) <= x <= max(x1, x2) and min(y1, y2) <= y <= max(y1, y2):
                return True
    if mask is not None:
        m = _np(mask)
        xi, yi = int(round(x)), int(round(y))
        if 0 <= yi < m.shape[0] and 0 <= xi < m.shape[1] and bool(m[yi, xi]):
            return True
    return False


def accuracy(hits: Sequence[bool]) -> float:
    """Fraction of hits (0 for an empty list)."""
    return float(np.mean(hits)) if len(hits) else 0.0


def results_table(
    per_scene: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    scale: float = 100.0,
    digits: int = 1,
    title: str = "scene",
) -> str:
    """A Markdown table of per-scene results with a final ``mean`` row, like Tables 5.1-5.5.

    Args:
        per_scene: ``{scene: {column: value}}`` (values in [0, 1] are shown ×``scale``).
        columns: column order (default: first-seen order).

    Returns:
        the table as Markdown text.
    """
    if columns is None:
        columns = []
        for row in per_scene.values():
            for c in row:
                if c not in columns:
                    columns.append(c)
    lines = ["| " + " | ".join([title, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for scene, row in per_scene.items():
        cells = [f"{row[c] * scale:.{digits}f}" if c in row and row[c] is not None else "-" for c in columns]
        lines.append("| " + " | ".join([scene, *cells]) + " |")
    means = []
    for c in columns:
        vals = [row[c] for row in per_scene.values() if c in row and row[c] is not None]
        means.append(f"{np.mean(vals) * scale:.{digits}f}" if vals else "-")
    lines.append("| " + " | ".join(["mean", *means]) + " |")
    return "\n".join(lines)
