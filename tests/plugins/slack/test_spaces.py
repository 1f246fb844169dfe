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
