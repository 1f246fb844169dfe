"""Erase and crop ops with positional randomness: Cutout, RandomCrop, RandomResizedCrop."""

from __future__ import annotations

from typing import Sequence

import torch

from . import _kernels as K
from ._base import Op

__all__ = ["Cutout", "RandomCrop", "RandomResizedCrop"]


def _uniform(n: int, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


class Cutout(Op):
    """Zeroes a square patch (DeVries & Taylor); magnitudes map to its side as a fraction of the shorter
    image side (Table A.2: [0, 1]); the centre is uniform over the image, the patch clipped at borders.

    ``apply(images, side_px)`` cuts a centred square and equals ``F.erase(img, i, j, h, w, 0)`` on the
    same box; ``apply_params`` takes ``{"top", "left", "height", "width"}`` ``[B]`` for replay.
    """

    name = "cutout"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    @staticmethod
    def box(side: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, H: int, W: int) -> dict:
        side = side.round()
        y0 = (cy - torch.div(side, 2, rounding_mode="floor")).clamp(0, H)
        x0 = (cx - torch.div(side, 2, rounding_mode="floor")).clamp(0, W)
        y1 = (cy - torch.div(side, 2, rounding_mode="floor") + side).clamp(0, H)
        x1 = (cx - torch.div(side, 2, rounding_mode="floor") + side).clamp(0, W)
        return {"top": y0, "left": x0, "height": y1 - y0, "width": x1 - x0}

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        frac = self.magnitude_to_value(magnitude.to(torch.float64))
        n = images.shape[0]
        cy = (_uniform(n, generator, images.device) * H).floor()
        cx = (_uniform(n, generator, images.device) * W).floor()
        return self.box(frac * min(H, W), cy, cx, H, W)

    def apply(self, images, value=0.0):
        B, _, H, W = images.shape
        side = K.per_image(value, B, images.device)
        c = torch.full((B,), 0.0, dtype=torch.float64, device=images.device)
        return self.apply_params(images, self.box(side, c + H // 2, c + W // 2, H, W))

    def apply_params(self, images, params):
        B, C, H, W = images.shape
        dev = images.device
        t, l = params["top"].view(B, 1, 1), params["left"].view(B, 1, 1)
        h, w = params["height"].view(B, 1, 1), params["width"].view(B, 1, 1)
        ys = torch.arange(H, device=dev).view(1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        inside = (ys >= t) & (ys < t + h) & (xs >= l) & (xs < l + w)
        return images.masked_fill(inside.unsqueeze(1), 0)


class RandomCrop(Op):
    """Zero-pads by ``p`` pixels and crops back a random ``H×W`` window (the CIFAR default crop);
    magnitudes map to ``p`` as a fraction of the shorter side (Table A.2: [0, 0.5]).

    Fused as an integer translation. ``apply(images, p)`` crops the top-left window:
    ``F.crop(F.pad(img, [p]), 0, 0, H, W)``; ``apply_params`` takes ``{"tx", "ty"}`` shifts ``[B]``.
    """

    name = "random_crop"
    kind = "affine"
    value_range = (0.0, 0.5)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        p = (self.magnitude_to_value(magnitude.to(torch.float64)) * min(H, W)).round()
        n = images.shape[0]
        oy = (_uniform(n, generator, images.device) * (2 * p + 1)).floor()
        ox = (_uniform(n, generator, images.device) * (2 * p + 1)).floor()
        return {"tx": p - ox, "ty": p - oy}

    def apply(self, images, value=0.0):
        p = K.per_image(value, images.shape[0], images.device).round()
        return self.apply_params(images, {"tx": p, "ty": p})

    def affine_args(self, params, height, width):
        tx = params["tx"].to(torch.float64)
        z = torch.zeros_like(tx)
        return z, tx, params["ty"].to(torch.float64), z, z, z, z


class RandomResizedCrop(Op):
    """Crops a random box of area fraction ``s`` (aspect ratio log-uniform in [3/4, 4/3], uniform
    position) and resizes it back bilinearly; magnitudes map to ``s`` (Table A.2: [0.05, 1], written
    ``(1, 0.05)``: magnitude 0 keeps the whole image). Applied first in a composite when sampled.

    ``apply(images, s)`` crops the centred square-aspect box and equals ``F.resized_crop(img, top, left,
    h, w, [H, W])`` on it; ``apply_params`` takes ``{"top", "left", "height", "width"}`` ``[B]``.
    """

    name = "random_resized_crop"
    value_range = (1.0, 0.05)
    first = True

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        n = images.shape[0]
        s = self.magnitude_to_value(magnitude.to(torch.float64)).clamp(1e-4, 1.0)
        log_r = torch.log(torch.tensor(3 / 4, dtype=torch.float64)) + _uniform(n, generator, images.device) * (
            2 * torch.log(torch.tensor(4 / 3, dtype=torch.float64))
        )
        ratio = torch.exp(log_r)
        w = (torch.sqrt(s * ratio) * W).round().clamp(1, W)
        h = (torch.sqrt(s / ratio) * H).round().clamp(1, H)
        top = (_uniform(n, generator, images.device) * (H - h + 1)).floor()
        left = (_uniform(n, generator, images.device) * (W - w + 1)).floor()
        return {"top": top, "left": left, "height": h, "width": w}

    def apply(self, images, value=1.0):
        B, _, H, W = images.shape
        s = K.per_image(value, B, images.device).clamp(1e-4, 1.0)
        h = (torch.sqrt(s) * H).round().clamp(1, H)
        w = (torch.sqrt(s) * W).round().clamp(1, W)
        return self.apply_params(
            images, {"top": ((H - h) / 2).round(), "left": ((W - w) / 2).round(), "height": h, "width": w}
        )

    def apply_params(self, images, params):
        return K.crop_resize_bilinear(images, params["top"], params["left"], params["height"], params["width"])
