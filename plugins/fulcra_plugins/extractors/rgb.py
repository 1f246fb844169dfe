"""``rgb``: the image itself as features (weight-free; for demos, tests and sanity checks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import BaseExtractor

__all__ = ["RGBExtractor"]


class RGBExtractor(BaseExtractor):
    """The pixels as a 3-channel feature map, optionally average-pooled to a patch grid.

    ``patch_size=1`` returns the image at full resolution; ``patch_size=p > 1`` averages each
    ``p x p`` patch (a partial last row/column of patches averages the pixels it has), imitating the
    coarse patch grid of a foundation model (``ceil(H/p) x ceil(W/p)``). Needs no weights, so demos
    and tests run offline.

    Args:
        patch_size: side of the pooling patches in pixels (1 = no pooling).
        device: where to compute (``"cpu"``, ``"cuda"``, ``"auto"``).
        batch_size: images per step.
        cache_dir: on-disk per-view cache (``None``: none; pooling is cheap, so mostly for tests).
        progress: show a progress bar on multi-batch calls.

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] (or uint8) -> ``[B, 3, ceil(H/p), ceil(W/p)]`` float32.
    """

    name = "rgb"
    dim = 3

    param_limits = {"patch_size": {"min": 1}, "batch_size": {"min": 1}}

    def __init__(
        self,
        patch_size: int = 1,
        device: str = "cpu",
        batch_size: int = 64,
        cache_dir: str | None = None,
        progress: bool = False,
    ):
        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        if int(patch_size) < 1:
            raise ValueError(f"rgb: patch_size must be >= 1, got {patch_size}")
        self.patch_size = int(patch_size)

    def cache_params(self) -> dict:
        return {"name": self.name, "patch_size": self.patch_size}

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:  # images: [B, 3, H, W]
        p = self.patch_size
        if p == 1:
            return images.float().clone()
        # ceil_mode + count_include_pad=False: border patches average only the pixels they hold
        return F.avg_pool2d(images.float(), kernel_size=p, stride=p, ceil_mode=True, count_include_pad=False)
