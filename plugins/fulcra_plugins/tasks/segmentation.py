"""The ``semantic_segmentation`` task: per-pixel cross-entropy with an ignore index, mIoU, and how a
model is applied to an evaluation image (whole, or mmseg's sliding windows as the thesis evaluates)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from fulcra.errors import ConfigError

from .sliding import slide_inference

__all__ = ["SemanticSegmentation"]


class SemanticSegmentation:
    """Semantic segmentation: per-pixel cross-entropy (pixels labelled ``ignore_index`` do not count)
    and mean intersection-over-union over the classes present in prediction or ground truth.

    Args:
        ignore_index: label value of unlabelled pixels (255 as in ADE20K / VOC / Cityscapes).
        inference: ``whole`` (the model sees the whole image, resized to its input size; images of
            an evaluation batch must share a size) or ``slide`` (mmseg's slide mode: windows of
            ``crop_size`` every ``stride`` pixels, logits averaged where they overlap; images one
            at a time, any size). The thesis: ``slide`` with ``(560, 560)`` windows, stride 280.
        crop_size: window size, ``int`` or ``[h, w]``.
        stride: window step (default ``crop_size // 2``, the thesis's ``s/2``).
        window_batch: windows per forward pass in ``slide`` mode.

    Shapes: outputs ``[B, K, H, W]`` logits (resized bilinearly to the targets when they differ),
    targets ``[B, H, W]`` int64.
    """

    metric_name = "miou"

    def __init__(
        self,
        ignore_index: int = 255,
        inference: str = "whole",
        crop_size: Any = 560,
        stride: Optional[Any] = None,
        window_batch: int = 4,
    ):
        self.ignore_index = int(ignore_index)
        if inference not in ("whole", "slide"):
            raise ConfigError(
                f"tasks plugin 'semantic_segmentation': inference must be whole or slide, got {inference!r}"
            )
        self.inference = inference
        crop = [int(crop_size)] * 2 if isinstance(crop_size, (int, float)) else [int(c) for c in crop_size]
        step = [c // 2 for c in crop] if stride is None else stride
        step = [int(step)] * 2 if isinstance(step, (int, float)) else [int(s) for s in step]
        if len(crop) != 2 or len(step) != 2 or min(crop + step) <= 0:
            raise ConfigError(
                f"tasks plugin 'semantic_segmentation': crop_size {crop_size!r} and stride {stride!r} must be "
                "positive ints or [h, w] pairs"
            )
        self.crop_size, self.stride, self.window_batch = tuple(crop), tuple(step), int(window_batch)

    @property
    def per_image(self) -> bool:
        """Whether evaluation feeds images one at a time (``slide``: they may differ in size)."""
        return self.inference == "slide"

    def predict(self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` of ``images`` ``[B, 3, H, W]`` (float in [0, 1]) for evaluation:
        ``forward(images)`` in ``whole`` mode, averaged windows (:func:`slide_inference`) in ``slide``."""
        if self.inference == "whole":
            return forward(images)
        return slide_inference(forward, images, self.crop_size, self.stride, self.window_batch)

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
