"""Geometric ops: Shear, Translate, Rotate — one nearest-pixel warp each, fused by the composite."""

from __future__ import annotations

from typing import Sequence

import torch

from . import _kernels as K
from ._base import Op

__all__ = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]


class _Affine(Op):
    kind = "affine"
    symmetric = True

    def _apply(self, images, params):  # pragma: no cover - apply_params handles affine ops
        return K.warp_nearest(images, self.matrix(params, images.shape[-2], images.shape[-1]))


class ShearX(_Affine):
    """Horizontal shear by factor ``v`` (Table A.2: [0, 1], random sign).

    ``apply(images, v)`` equals ``F.affine(img, angle=0, translate=[0, 0], scale=1,
    shear=[degrees(atan(v)), 0], center=[0, 0])``, nearest, zero fill (torchvision's AutoAugment call).
    """

    name = "shear_x"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return z, z, z, K.atan_degrees(v), z, z - width * 0.5, z - height * 0.5


class ShearY(_Affine):
    """Vertical shear by factor ``v`` (Table A.2: [0, 1], random sign); ``shear=[0, degrees(atan(v))]``."""

    name = "shear_y"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return z, z, z, z, K.atan_degrees(v), z - width * 0.5, z - height * 0.5


class _Translate(_Affine):
    axis = 0

    def sample_params(self, images, magnitude, generator):
        frac = super().sample_params(images, magnitude, generator)["value"]
        side = images.shape[-1] if self.axis == 0 else images.shape[-2]
        return {"value": frac.to(torch.float64) * side}

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return (z, v, z, z, z, z, z) if self.axis == 0 else (z, z, v, z, z, z, z)


class TranslateX(_Translate):
    """Horizontal translation; magnitudes map to a fraction of the width (Table A.2: [0, 0.75]),
    ``apply(images, pixels)`` equals ``F.affine(img, 0, [pixels, 0], 1, [0, 0])``, zero fill."""

    name = "translate_x"
    value_range = (0.0, 0.75)
    axis = 0

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


class TranslateY(_Translate):
    """Vertical translation; magnitudes map to a fraction of the height (Table A.2: [0, 0.75]),
    ``apply(images, pixels)`` equals ``F.affine(img, 0, [0, pixels], 1, [0, 0])``, zero fill."""

    name = "translate_y"
    value_range = (0.0, 0.75)
    axis = 1

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


class Rotate(_Affine):
    """Rotation in degrees (Table A.2: [0, 90], random sign); ``apply(images, deg)`` equals
    ``F.rotate(img, deg)`` (about the centre, nearest, zero fill)."""

    name = "rotate"
    value_range = (0.0, 90.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return -v, z, z, z, z, z, z
