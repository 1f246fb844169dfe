"""The search spaces of the method, op by op, against a table transcribed from the official SLACK
code (``AugmentationsOptUMirror`` and its ImageNet / DomainNet variants): names, order and count
(CIFAR 17, ImageNet 18, DomainNet 20), so that a published policy's op index n is fulcra's op n."""

import pytest

from fulcra.policy import default_ranges
from fulcra_plugins.slack.common import SEARCH_SPACES

# official name -> fulcra name, in the official order
OFFICIAL = {
    "cifar": [
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "AutoContrast",
        "Invert",
        "Equalize",
        "Solarize",
        "Posterize",
        "ContrastMirror",
        "ColorMirror",
        "BrightnessMirror",
        "SharpnessMirror",
        "Cutout",
        "RandomCrop",
        "Identity",
    ],
    "imagenet": [
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "AutoContrast",
        "Invert",
        "Equalize",
        "Solarize",
        "Posterize",
        "ContrastMirror",
        "ColorMirror",
        "BrightnessMirror",
        "SharpnessMirror",
        "HueMirror",
        "Cutout",
        "RandomResizeCrop",
        "Identity",
    ],
    "domainnet": [
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "AutoContrast",
        "Invert",
        "Equalize",
        "Grayscale",
        "Solarize",
        "Posterize",
        "ContrastMirror",
        "ColorMirror",
        "BrightnessMirror",
        "SharpnessMirror",
        "HueMirror",
        "Cutout",
        "RandomResizeCrop",
        "RandomCrop",
        "Identity",
    ],
}
NAMES = {
    "ShearX": "shear_x",
    "ShearY": "shear_y",
    "TranslateX": "translate_x",
    "TranslateY": "translate_y",
    "Rotate": "rotate",
    "AutoContrast": "auto_contrast",
    "Invert": "invert",
    "Equalize": "equalize",
    "Grayscale": "grayscale",
    "Solarize": "solarize",
    "Posterize": "posterize",
    "ContrastMirror": "contrast",
    "ColorMirror": "color",
    "BrightnessMirror": "brightness",
    "SharpnessMirror": "sharpness",
    "HueMirror": "hue",
    "Cutout": "cutout",
    "RandomCrop": "random_crop",
    "RandomResizeCrop": "random_resized_crop",
    "Identity": "identity",
}


@pytest.mark.parametrize("space, count", [("cifar", 17), ("imagenet", 18), ("domainnet", 20)])
def test_spaces_match_the_official_order(space, count):
    assert SEARCH_SPACES[space] == [NAMES[o] for o in OFFICIAL[space]]
    assert len(SEARCH_SPACES[space]) == count


def test_every_op_of_every_space_has_its_table_a2_range():
    ranges = default_ranges(SEARCH_SPACES["all"])
    assert ranges["rotate"] == [0.0, 90.0] and ranges["shear_x"] == [0.0, 1.0] and ranges["translate_x"] == [0.0, 0.75]
    assert ranges["posterize"] == [8.0, 2.0] and ranges["solarize"] == [255.0, 0.0] and ranges["hue"] == [0.0, 0.5]
    assert ranges["random_crop"] == [0.0, 0.5] and ranges["cutout"] == [0.0, 1.0]
    assert ranges["identity"] is None and ranges["invert"] is None


# The thesis's own words (§3.4.1 "Transformation space", app. A.3.2 and Table A.2), transcribed:
# the 15 standard transforms, plus the defaults of prior work per benchmark, plus Hue ("one component
# of ColorJitter and never applied by default"), in fulcra's names.
THESIS_STANDARD_15 = [
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "auto_contrast", "equalize",
    "invert", "solarize", "posterize", "contrast", "brightness", "sharpness", "color",
]  # fmt: skip
THESIS_ADDED = {
    "cifar": {"cutout", "random_crop"},  # "Cutout and RandomCrop for CIFAR"
    # "RandomResizeCrop for ImageNet", "we add Hue"; Cutout appears in the ImageNet-100 policy (Fig. A.2)
    "imagenet": {"random_resized_crop", "hue", "cutout"},
    # "Grayscale for DomainNet"; Cutout in every domain's policy (Fig. A.3); Hue as for ImageNet
    "domainnet": {"grayscale", "hue", "cutout"},
}
# what only the official code settles (the thesis is silent): DomainNet also searches both crops
OFFICIAL_ONLY = {"cifar": set(), "imagenet": set(), "domainnet": {"random_resized_crop", "random_crop"}}
# Table A.2, "Ours" column, in each op's own units (fulcra maps magnitude 0 -> first, 1 -> second)
THESIS_TABLE_A2 = {
    "shear_x": (0.0, 1.0),
    "shear_y": (0.0, 1.0),
    "translate_x": (0.0, 0.75),
    "translate_y": (0.0, 0.75),
    "rotate": (0.0, 90.0),
    "posterize": (8.0, 2.0),  # bits kept, [2, 8]: stronger is fewer bits
    "solarize": (255.0, 0.0),  # threshold, [0, 255]: stronger is lower
    "contrast": (0.0, 0.99),  # Enhance: factor 1 ± delta
    "brightness": (0.0, 0.99),
    "sharpness": (0.0, 0.99),
    "color": (0.0, 0.99),
    "cutout": (0.0, 1.0),
    "random_crop": (0.0, 0.5),
    "random_resized_crop": (1.0, 0.05),  # scale, [0.05, 1]: stronger is smaller
}


@pytest.mark.parametrize("space", ["cifar", "imagenet", "domainnet"])
def test_spaces_are_the_thesis_pools(space):
    ops = SEARCH_SPACES[space]
    assert len(set(ops)) == len(ops)
    assert set(ops) == set(THESIS_STANDARD_15) | THESIS_ADDED[space] | OFFICIAL_ONLY[space]
    assert "hue" not in SEARCH_SPACES["cifar"]  # all official CIFAR policies are 3 x 17


@pytest.mark.parametrize("space", ["cifar", "imagenet", "domainnet"])
def test_every_range_is_table_a2(space):
    ranges = default_ranges(SEARCH_SPACES[space])
    for op in SEARCH_SPACES[space]:
        if op in THESIS_TABLE_A2:
            assert tuple(ranges[op]) == pytest.approx(THESIS_TABLE_A2[op]), op
        elif op != "hue":  # Hue: no range in the thesis; the official [0, 0.5]
            assert ranges[op] is None, op  # parameter-free
    if "hue" in SEARCH_SPACES[space]:
        assert ranges["hue"] == [0.0, 0.5]
