"""TrivialAugment / RandAugment with the transforms their own pipelines hard-code, as policy stages."""

from __future__ import annotations

import pytest
import torch

import fulcra
from fulcra.errors import ConfigError
from fulcra_plugins.slack.baselines import TA_OPS


def test_cifar_defaults_crop_then_cutout_after_the_ta_op():
    p = fulcra.create("policy_optimizers", "trivialaugment", variant="wide", defaults="cifar").search()
    assert p.ops == [*TA_OPS, "random_crop", "cutout"] and p.num_stages == 3
    probs = p.probs()
    torch.testing.assert_close(probs[0, :14], torch.full((14,), 1 / 14))
    assert probs[0, 14:].sum() == 0 and probs[1, 14] == 1 and probs[2, 15] == 1
    idx, mags = p.sample(64, torch.Generator().manual_seed(0))
    assert (idx[:, 0] < 14).all() and (idx[:, 1] == 14).all() and (idx[:, 2] == 15).all()
    # fixed values whatever the magnitude: 4 px of 32 padding, a 16 px square
    ops = dict(zip(p.ops, p.build_ops()))
    assert ops["random_crop"].magnitude_to_value(torch.rand(5)).tolist() == [0.125] * 5
    assert ops["cutout"].magnitude_to_value(torch.rand(5)).tolist() == [0.5] * 5
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    only_cutout = fulcra.Policy(["cutout"], torch.zeros(1, 1), torch.ones(1), {"cutout": [0.5, 0.5]}, sigma=0.0)
    y = only_cutout.augment(x, torch.Generator().manual_seed(1))
    zeros = (y[:, 0] == 0).flatten(1).sum(1)
    assert (zeros <= 256).all() and (zeros > 0).all()  # one clipped 16 x 16 square per image


def test_imagenet_defaults_random_resized_crop_first():
    p = fulcra.create("policy_optimizers", "trivialaugment", variant="ra", defaults="imagenet").search()
    assert p.ops[-2:] == ["random_resized_crop", "color_jitter"] and p.num_stages == 3
    assert p.probs()[0, -2] == 1 and p.ranges["random_resized_crop"] == [1.0, 0.08]
    # TrivialAugment's ImageNet pipeline ends with ColorJitter(0.4, 0.4, 0.4): the last stage, always
    assert p.probs()[-1, -1] == 1 and p.ranges["color_jitter"] == [0.4, 0.4]
    assert p.ranges["rotate"] == [0.0, 30.0]  # the RA ranges are kept


def test_randaugment_defaults():
    p = fulcra.create("policy_optimizers", "randaugment", defaults="cifar").search()
    assert p.num_stages == 4 and p.magnitude_mode == "fixed" and p.ops[-2:] == ["random_crop", "cutout"]
    with pytest.raises(ConfigError, match="defaults 'imagenet'"):
        fulcra.create("policy_optimizers", "randaugment", defaults="imagenet")
    with pytest.raises(ConfigError, match="defaults must be one of"):
        fulcra.create("policy_optimizers", "trivialaugment", defaults="svhn")


def test_no_defaults_is_unchanged():
    p = fulcra.create("policy_optimizers", "trivialaugment").search()
    assert p.ops == TA_OPS and p.num_stages == 1
