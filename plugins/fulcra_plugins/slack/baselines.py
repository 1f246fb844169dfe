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


# The transforms TrivialAugment's training pipelines hard-code around the random op (Table A.2,
# "Default" rows): CIFAR pads by 4 px (0.125 of 32) and crops back, flips, and cuts a 16 px square
# (0.5 of 32) at the end; ImageNet (and DomainNet "ImageNet") starts with RandomResizedCrop of area
# in [0.08, 1], flips and applies ColorJitter(0.4, 0.4, 0.4) (the color_jitter op, last: photometric
# and flip-invariant, so its place after the flip does not matter). A fixed value is a range [v, v];
# a drawn one a range of magnitude U(0, 1).
# Each becomes a stage with probability 1 on its op; the flip is the workflow's ``flip=true``.
_DEFAULTS = {
    "none": ([], []),
    "cifar": ([], [("random_crop", [0.125, 0.125]), ("cutout", [0.5, 0.5])]),
    "imagenet": ([("random_resized_crop", [1.0, 0.08])], [("color_jitter", [0.4, 0.4])]),
}


def _with_defaults(
    ranges: dict, n_random: int, defaults: str, plugin: str, mu: float = 1.0
) -> tuple[list, torch.Tensor, torch.Tensor, dict]:
    """``(ops, logits [K, N], mu [N], ranges)``: ``n_random`` stages uniform over TA_OPS, wrapped in
    the hard-coded stages of ``defaults`` (before: applied first; after: applied last)."""
    if defaults not in _DEFAULTS:
        raise ConfigError(f"policy_optimizers.{plugin}: defaults must be one of {sorted(_DEFAULTS)}, got '{defaults}'")
    before, after = _DEFAULTS[defaults]
    fixed = [*before, *after]
    ops = [*TA_OPS, *(o for o, _ in fixed)]
    r = dict(ranges)
    r.update({o: list(v) for o, v in fixed})
    n = len(ops)
    ninf = float("-inf")

    def one_hot(op):
        row = torch.full((n,), ninf)
        row[ops.index(op)] = 0.0
        return row

    uniform = torch.cat([torch.zeros(len(TA_OPS)), torch.full((n - len(TA_OPS),), ninf)])
    rows = [one_hot(o) for o, _ in before] + [uniform] * n_random + [one_hot(o) for o, _ in after]
    mus = torch.full((n,), float(mu))
    mus[len(TA_OPS) :] = 1.0  # fixed values come from their [v, v] range; drawn ones from U(0, 1)
    return ops, torch.stack(rows), mus, r


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
        defaults: the transforms TrivialAugment's own pipelines hard-code: ``none``; ``cifar``
            (the TA op, then RandomCrop with 4 px padding, then Cutout of 16 px, on 32 px images;
            Table 3.1's "3 total, 2 hard-coded" with the flip); ``imagenet`` (RandomResizedCrop of
            area [0.08, 1] first, ColorJitter(0.4, 0.4, 0.4) last). The horizontal flip is the
            workflow's ``flip=true``.
    """

    def __init__(self, variant: str = "wide", defaults: str = "none"):
        _ta_ranges(variant, 32)
        _with_defaults({}, 1, defaults, "trivialaugment")
        self.variant, self.defaults = variant, defaults

    def search(self, train_data=None, val_data=None, model_factory: Callable | None = None, ctx=None) -> Policy:
        r = _ta_ranges(self.variant, _image_width(train_data))
        ops, logits, mu, r = _with_defaults(r, 1, self.defaults, "trivialaugment")
        return Policy(ops, logits, mu, r, sigma=0.0)


class RandAugment:
    """RandAugment: ``num_ops`` uniformly chosen transforms, fixed magnitude ``magnitude / (bins - 1)``.

    Args:
        num_ops: transforms per image (N).
        magnitude: magnitude index (M) out of ``num_magnitude_bins - 1``.
        num_magnitude_bins: torchvision's bin count (31).
        defaults: ``none`` or ``cifar`` (RandomCrop 4 px and Cutout 16 px after the N ops, as
            TrivialAugment's CIFAR pipeline; the flip is the workflow's).
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, defaults: str = "none"):
        if not 0 <= magnitude < num_magnitude_bins:
            raise ConfigError(f"policy_optimizers.randaugment: magnitude must be in [0, {num_magnitude_bins - 1}]")
        if defaults == "imagenet":
            # a fixed magnitude cannot draw RandomResizedCrop's area: not expressible in this model
            raise ConfigError(
                "policy_optimizers.randaugment: defaults 'imagenet' needs a drawn crop area; use "
                "trivialaugment (variant ra) with defaults=imagenet, or defaults 'cifar' / 'none'"
            )
        _with_defaults({}, 1, defaults, "randaugment")
        self.num_ops, self.magnitude, self.bins = int(num_ops), int(magnitude), int(num_magnitude_bins)
        self.defaults = defaults

    def search(self, train_data=None, val_data=None, model_factory: Callable | None = None, ctx=None) -> Policy:
        r = _ta_ranges("ra", _image_width(train_data))
        m = max(self.magnitude / (self.bins - 1), 1e-6)
        ops, logits, mu, r = _with_defaults(r, self.num_ops, self.defaults, "randaugment", mu=m)
        return Policy(ops, logits, mu, r, sigma=0.0, magnitude_mode="fixed")
