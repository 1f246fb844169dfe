"""A transform written against the ``AugmentationOp`` protocol alone (no fulcra base class)."""

from __future__ import annotations

import torch


class StripeSwap:
    """Swaps the two halves of every ``2·w``-pixel band of rows; magnitude -> band half-height ``w``.

    Implements exactly the documented members: ``name``, ``value_range``, ``symmetric``,
    ``apply(images, value)`` and ``__call__(images, magnitude, generator)``.
    """

    name = "stripe_swap"
    symmetric = False
    value_range: tuple[float, float] = (1.0, 6.0)

    def __init__(self, value_range: list | None = None):
        if value_range is not None:
            self.value_range = (float(value_range[0]), float(value_range[1]))

    def apply(self, images: torch.Tensor, value) -> torch.Tensor:  # [B, C, H, W] -> same
        b, _, h, _ = images.shape
        w = torch.as_tensor(value, dtype=torch.float64).expand(b).round().clamp_min(1).long()
        rows = torch.arange(h).view(1, h)
        band, pos = rows // (2 * w.view(b, 1)), rows % (2 * w.view(b, 1))
        src = band * 2 * w.view(b, 1) + (pos + w.view(b, 1)) % (2 * w.view(b, 1))
        src = torch.where(src < h, src, rows).to(images.device)  # an incomplete last band stays
        return images.gather(2, src.view(b, 1, h, 1).expand_as(images))

    def __call__(self, images: torch.Tensor, magnitude, generator=None) -> torch.Tensor:
        lo, hi = self.value_range
        m = torch.as_tensor(magnitude, dtype=torch.float64).expand(images.shape[0])
        return self.apply(images, lo + (hi - lo) * m.cpu())
