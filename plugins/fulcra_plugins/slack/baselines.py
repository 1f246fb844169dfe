"""Search-free baselines as policy optimizers: ``uniform`` (SLACK's initialisation),
``trivialaugment`` (RA and Wide ranges, Müller & Hutter 2021) and ``randaugment`` (Cubuk et al. 2020).

Each returns a fixed :class:`~fulcra.policy.Policy` without training, expressed in the same policy
model so that one applier and one file format serve all methods. TrivialAugment draws its magnitude
uniformly in [0, 1] (continuous, where torchvision picks one of 31 bins); RandAugment's magnitude is
fixed (``magnitude_mode="fixed"``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from fulcra.errors import ConfigError
from fulcra.policy import Policy, default_ranges

from .common import SEARCH_SPACES

__all__ = ["UniformPolicy", "TrivialAugment", "RandAugment", "TA_OPS"]

# torchvision's TrivialAugmentWide / RandAugment op set
TA_OPS = [
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "auto_contrast",
    "equalize",
]


def _image_width(data: Any) -> int:
    if data is None:
        return 32
    if hasattr(data, "images"):
        return int(data.images.shape[-1])
    return int(data[0][0].shape[-1])


def _ta_ranges(variant: str, width: int) -> dict:
    """Table A.2's TA (RA) and TA (Wide) ranges; translations as fractions of the width."""
    r = default_ranges(TA_OPS)
    if variant == "wide":
        r.update(
            shear_x=[0.0, 0.99],
            shear_y=[0.0, 0.99],
            translate_x=[0.0, 32.0 / width],
            translate_y=[0.0, 32.0 / width],
            rotate=[0.0, 135.0],
            posterize=[8.0, 2.0],
            solarize=[255.0, 0.0],
        )
        for o in ("brightness", "color", "contrast", "sharpness"):
            r[o] = [0.0, 0.99]
    elif variant == "ra":
        r.update(
            shear_x=[0.0, 0.3],
            shear_y=[0.0, 0.3],
            translate_x=[0.0, 150.0 / 331.0],
            translate_y=[0.0, 150.0 / 331.0],
            rotate=[0.0, 30.0],
            posterize=[8.0, 4.0],
            solarize=[255.0, 0.0],
        )
        for o in ("brightness", "color", "contrast", "sharpness"):
            r[o] = [0.0, 0.9]
    else:
        raise ConfigError(f"policy_optimizers.trivialaugment: variant must be 'wide' or 'ra', got '{variant}'")
    return r


class UniformPolicy:
    """SLACK's initial policy: K stages, uniform over the search space, every μ at ``mu``.

    Args:
        ops: transform names; empty: the ``space`` preset.
        space: search-space preset (``cifar``, ``imagenet``, ``domainnet``, ``all``).
        num_stages: K.
        mu: magnitude upper bound of every transform.
    """

    def __init__(self, ops: Optional[list] = None, space: str = "cifar", num_stages: int = 3, mu: float = 0.75):
        if not ops and space not in SEARCH_SPACES:
            raise ConfigError(
                f"policy_optimizers.uniform: unknown search space '{space}' (have {sorted(SEARCH_SPACES)})"
            )
        self.ops = [str(o) for o in ops] if ops else SEARCH_SPACES[space]
        self.num_stages, self.mu = int(num_stages), float(mu)

    def search(self, train_data=None, val_data=None, model_factory: Callable | None = None, ctx=None) -> Policy:
        return Policy.uniform(self.ops, self.num_stages, self.mu)


class TrivialAugment:
    """TrivialAugment: one transform per image, uniform over torchvision's 14, magnitude uniform.

    Args:
        variant: ``wide`` (TrivialAugmentWide's ranges) or ``ra`` (RandAugment's ranges).
    """

    def __init__(self, variant: str = "wide"):
        _ta_ranges(variant, 32)
        self.variant = variant

    def search(self, train_data=None, val_data=None, model_factory: Callable | None = None, ctx=None) -> Policy:
        r = _ta_ranges(self.variant, _image_width(train_data))
        return Policy(TA_OPS, torch.zeros(1, len(TA_OPS)), torch.ones(len(TA_OPS)), r, sigma=0.0)


class RandAugment:
    """RandAugment: ``num_ops`` uniformly chosen transforms, fixed magnitude ``magnitude / (bins - 1)``.

    Args:
        num_ops: transforms per image (N).
        magnitude: magnitude index (M) out of ``num_magnitude_bins - 1``.
        num_magnitude_bins: torchvision's bin count (31).
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31):
        if not 0 <= magnitude < num_magnitude_bins:
            raise ConfigError(f"policy_optimizers.randaugment: magnitude must be in [0, {num_magnitude_bins - 1}]")
        self.num_ops, self.magnitude, self.bins = int(num_ops), int(magnitude), int(num_magnitude_bins)

    def search(self, train_data=None, val_data=None, model_factory: Callable | None = None, ctx=None) -> Policy:
        r = _ta_ranges("ra", _image_width(train_data))
        m = max(self.magnitude / (self.bins - 1), 1e-6)
        return Policy(
            TA_OPS,
            torch.zeros(self.num_ops, len(TA_OPS)),
            torch.full((len(TA_OPS),), m),
            r,
            sigma=0.0,
            magnitude_mode="fixed",
        )
