"""The SLACK transform library: 21 batched augmentation ops and the composite applier.

Each op is an ``augmentations`` plugin (entry point name = ``Op.name``); see :mod:`.ops` for the
value conventions and :mod:`.composite` for the fused per-image composition.
"""

from .composite import BUILTIN_OPS, CompositeAugment, build_ops
from .ops import (
    ALL_OPS,
    AutoContrast,
    Brightness,
    Color,
    ColorJitter,
    Contrast,
    Cutout,
    Equalize,
    Grayscale,
    Hue,
    Identity,
    Invert,
    Op,
    Posterize,
    RandomCrop,
    RandomResizedCrop,
    Rotate,
    Sharpness,
    ShearX,
    ShearY,
    Solarize,
    TranslateX,
    TranslateY,
)

__all__ = [
    "Op",
    "ALL_OPS",
    "BUILTIN_OPS",
    "CompositeAugment",
    "build_ops",
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
]
