"""``tasks`` plugins of the 3D tasks: what is scored and how (IoU; localisation accuracy)."""

from __future__ import annotations

import numpy as np
import torch

from .localisation import localise
from .metrics import iou

__all__ = ["MultiviewSegmentation", "OpenVocabLocalisation"]


class MultiviewSegmentation:
    """Multi-view segmentation (NVOS, SPIn-NeRF, §5.4.1): binary masks scored by IoU.

    ``outputs``: scores ``[..., H, W]`` (or per-Gaussian ``[N]``) in [0, 1]; ``targets``: boolean masks
    of the same shape. ``metric`` thresholds the scores at ``threshold`` and gives the IoU of each
    leading item averaged (``iou``); ``reduce`` averages batches. ``loss`` is the binary cross-entropy.

    Args:
        threshold: score threshold of a positive pixel (or Gaussian).
    """

    metric_name = "iou"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy(outputs.float().clamp(1e-6, 1 - 1e-6), targets.float())

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        if outputs.shape != targets.shape:
            raise ValueError(
                f"multiview_segmentation: outputs {list(outputs.shape)} and targets {list(targets.shape)} differ"
            )
        pred = outputs > self.threshold
        if pred.ndim <= 2:
            return {"iou": iou(pred, targets), "n": 1}
        flat_p, flat_t = pred.reshape(-1, *pred.shape[-2:]), targets.reshape(-1, *targets.shape[-2:])
        vals = [iou(p, t) for p, t in zip(flat_p, flat_t)]
        return {"iou": float(np.mean(vals)), "n": len(vals)}

    def reduce(self, metrics: list[dict]) -> dict:
        n = sum(m.get("n", 1) for m in metrics)
        return {"iou": sum(m["iou"] * m.get("n", 1) for m in metrics) / max(n, 1), "n": n}


class OpenVocabLocalisation:
    """Open-vocabulary localisation (LERF as extended by LangSplat, §5.4.2): accuracy of the arg-max pixel.

    ``outputs``: rendered relevancies ``[Q, H, W]`` (one map per query); ``targets``: ``[Q, H, W]`` bool,
    the union of the query's annotated boxes. A query is localised when the arg-max of its relevancy,
    after a mean filter of size ``kernel``, falls inside its target. ``loss``: cross-entropy of the
    pixel-softmax of the relevancy against the target region (a differentiable proxy).

    Args:
        kernel: mean-filter size before the arg-max (5 in the thesis).
    """

    metric_name = "accuracy"

    def __init__(self, kernel: int = 5):
        self.kernel = int(kernel)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(outputs.float().flatten(1), dim=1)
        t = targets.float().flatten(1)
        return -(logp * t).sum(1).div(t.sum(1).clamp_min(1)).mean()

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        if outputs.ndim != 3 or outputs.shape != targets.shape:
            raise ValueError(
                f"open_vocab_localisation: outputs and targets must both be [Q, H, W], got "
                f"{list(outputs.shape)} and {list(targets.shape)}"
            )
        xy = localise(outputs.permute(1, 2, 0), self.kernel)  # [Q, 2]
        hits = [bool(targets[q, int(y), int(x)]) for q, (x, y) in enumerate(xy.tolist())]
        return {"accuracy": float(np.mean(hits)) if hits else 0.0, "n": len(hits)}

    def reduce(self, metrics: list[dict]) -> dict:
        n = sum(m.get("n", 1) for m in metrics)
        return {"accuracy": sum(m["accuracy"] * m.get("n", 1) for m in metrics) / max(n, 1), "n": n}
