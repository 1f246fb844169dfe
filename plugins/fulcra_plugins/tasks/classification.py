"""The ``classification`` task: cross-entropy loss, top-1 accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Classification"]


class Classification:
    """Image classification: cross-entropy loss (optional label smoothing), top-1 accuracy.

    Args:
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).
    """

    metric_name = "accuracy"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = float(label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """``outputs`` ``[B, K]`` logits, ``targets`` ``[B]`` int64 -> scalar (or ``[B]`` with reduction='none')."""
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing, reduction=reduction)

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """Counts for one batch: ``{"correct", "count", "accuracy"}``; :meth:`reduce` pools batches."""
        correct = int((outputs.argmax(-1) == targets).sum())
        n = int(targets.numel())
        return {"correct": correct, "count": n, "accuracy": correct / max(n, 1)}

    @staticmethod
    def reduce(batch_metrics: list[dict]) -> dict:
        c = sum(m["correct"] for m in batch_metrics)
        n = sum(m["count"] for m in batch_metrics)
        return {"accuracy": c / max(n, 1), "count": n}
