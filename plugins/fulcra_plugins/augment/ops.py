"""The SLACK transforms as batched :class:`~fulcra.interfaces.BaseAugmentationOp` plugins, by family:
:mod:`.geometric` (Shear, Translate, Rotate), :mod:`.colour` (Invert, Solarize, Posterize, the
enhance ops, Hue, Grayscale, ColorJitter), :mod:`.histogram` (AutoContrast, Equalize) and :mod:`.erase_crop`
(Cutout, RandomCrop, RandomResizedCrop), on the common base of :mod:`._base`.

Conventions (thesis app. A.2.2, Table A.2):

* ``value_range = (v0, v1)`` is the value at magnitude 0 and at magnitude 1; a magnitude ``m`` in
  [0, 1] maps linearly to ``v0 + (v1 - v0) m``. For ops whose strength decreases with their value
  the range is written high-to-low (Solarize ``(255, 0)``, Posterize ``(8, 2)``,
  RandomResizedCrop ``(1, 0.05)``) so magnitude 0 is always the weakest transform.
* Symmetric ops (Shear, Translate, Rotate, the enhance ops, Hue) get a random sign per image.
* The enhance ops (Brightness, Color, Contrast, Sharpness) map to a delta in ``[0, 0.99]``; their
  ``apply`` takes torchvision's enhancement factor ``1 + sign * delta``.
* Size-relative ops (Translate, Cutout, RandomCrop) map magnitudes to a fraction of the image side;
  their ``apply`` takes pixels, as ``torchvision.transforms.v2.functional`` does.
* Every op takes ``[B, C, H, W]`` uint8 or float and per-image values ``[B]`` (or one float), and
  returns the same dtype, device and shape. uint8 photometric results are bit-identical to
  torchvision's; geometric ops use nearest sampling with zero fill (torchvision's AutoAugment
  defaults) and RandomResizedCrop bilinear resampling.

Two fusable families let the composite applier (:mod:`.composite`) process many ops in one pass:
``kind = "lut"`` ops expose :meth:`lut` (a 256-entry table per image and channel for uint8
images), ``kind = "affine"`` ops expose :meth:`matrix` (an inverse affine matrix per image).
"""

from __future__ import annotations

from ._base import Identity, Op
from .colour import Brightness, Color, ColorJitter, Contrast, Grayscale, Hue, Invert, Posterize, Sharpness, Solarize
from .erase_crop import Cutout, RandomCrop, RandomResizedCrop
from .geometric import Rotate, ShearX, ShearY, TranslateX, TranslateY
from .histogram import AutoContrast, Equalize

__all__ = [
    "Op",
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Equalize",
    "Invert",
    "Solarize",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "Color",
    "Cutout",
    "RandomCrop",
    "RandomResizedCrop",
    "Grayscale",
    "Hue",
    "ColorJitter",
    "ALL_OPS",
]


ALL_OPS: tuple[type[Op], ...] = (
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    AutoContrast,
    Equalize,
    Invert,
    Solarize,
    Posterize,
    Contrast,
    Brightness,
    Sharpness,
    Color,
    Cutout,
    RandomCrop,
    RandomResizedCrop,
    Grayscale,
    Hue,
    ColorJitter,
)
