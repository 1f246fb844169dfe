"""The ``semantic_segmentation`` task: per-pixel cross-entropy with an ignore index, mIoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SemanticSegmentation"]


class SemanticSegmentation:
    """Semantic segmentation: per-pixel cross-entropy (pixels labelled ``ignore_index`` do not count)
    and mean intersection-over-union over the classes present in prediction or ground truth.

    Args:
        ignore_index: label value of unlabelled pixels (255 as in ADE20K / VOC / Cityscapes).

    Shapes: outputs ``[B, K, H, W]`` logits (resized bilinearly to the targets when they differ),
    targets ``[B, H, W]`` int64.
    """

    metric_name = "miou"

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = int(ignore_index)

    def _match(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if tuple(outputs.shape[-2:]) != tuple(targets.shape[-2:]):
            outputs = F.interpolate(outputs, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Mean cross-entropy over labelled pixels (``reduction='none'``: ``[B, H, W]``, 0 at ignored)."""
        return F.cross_entropy(
            self._match(outputs, targets), targets.long(), ignore_index=self.ignore_index, reduction=reduction
        )

    def valid_mask(self, targets: torch.Tensor) -> torch.Tensor:
        return targets != self.ignore_index

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """Per-class intersection and union counts for one batch (pooled by :meth:`reduce`)."""
        k = outputs.shape[1]
        pred = self._match(outputs, targets).argmax(1)
        valid = targets != self.ignore_index
        p, t = pred[valid], targets[valid].long()
        inter = torch.bincount(t[p == t], minlength=k)[:k]
        area_p = torch.bincount(p, minlength=k)[:k]
        area_t = torch.bincount(t.clamp(0, k - 1), minlength=k)[:k]
        union = area_p + area_t - inter
        return {
            "intersection": inter.cpu().tolist(),
            "union": union.cpu().tolist(),
            "pixels": int(valid.sum()),
            "correct": int((p == t).sum()),
        }

    @staticmethod
    def reduce(batch_metrics: list[dict]) -> dict:
        """``{"miou", "pixel_accuracy", "iou": per-class list (nan where a class never occurs)}``."""
        inter = torch.tensor([m["intersection"] for m in batch_metrics], dtype=torch.float64).sum(0)
        union = torch.tensor([m["union"] for m in batch_metrics], dtype=torch.float64).sum(0)
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))
        present = union > 0
        miou = float(iou[present].mean()) if bool(present.any()) else 0.0
        pix = sum(m["pixels"] for m in batch_metrics)
        return {
            "miou": miou,
            "pixel_accuracy": sum(m["correct"] for m in batch_metrics) / max(pix, 1),
            "iou": iou.tolist(),
        }
