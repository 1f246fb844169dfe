"""Every bundled extractor through fulcra.testing's conformance check, built via the registry."""

import importlib.util

import pytest
import torch

import fulcra
from fulcra.testing import check_feature_extractor, check_plugin

TINY = {
    "rgb": ({"patch_size": 2}, None),
    "dinov2": (
        {"variant": "vits14_reg", "tiny": True, "n_components": 4, "resolution": 28, "crop_size": 28, "stride": 14},
        "timm",
    ),
    "clip": ({"tiny": True, "grid": 4, "scales": [0.5, 1.0]}, "open_clip"),
}
PROMPTED = {"sam": "segment_anything", "sam2": "sam2"}


def test_all_five_are_registered():
    names = set(fulcra.available("feature_extractors")) if hasattr(fulcra, "available") else set()
    assert {"rgb", "dinov2", "clip", "sam", "sam2"} <= names


@pytest.mark.parametrize("name", sorted(TINY))
def test_conformance(name):
    params, module = TINY[name]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    check_plugin("feature_extractors", name, **params)


@pytest.mark.parametrize("name", sorted(PROMPTED))
def test_conformance_prompted_via_testing_helper(name):
    """fulcra.testing passes prompts to extractors that declare needs_prompts."""
    if importlib.util.find_spec(PROMPTED[name]) is None:
        pytest.skip(f"{PROMPTED[name]} not installed")
    cls = fulcra.load_plugin("feature_extractors", name)
    assert cls.needs_prompts
    check_plugin("feature_extractors", name, **cls.conformance_params)


class _WithPrompts:
    """Feeds the centre quarter of each image as positive pixels (prompted extractors need them)."""

    def __init__(self, ext):
        self.ext, self.dim = ext, ext.dim

    def __call__(self, images):
        pos = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        h, w = images.shape[-2:]
        pos[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        return self.ext(images, positive=pos)


@pytest.mark.parametrize("name", sorted(PROMPTED))
def test_conformance_prompted(name):
    if importlib.util.find_spec(PROMPTED[name]) is None:
        pytest.skip(f"{PROMPTED[name]} not installed")
    ext = fulcra.create("feature_extractors", name, tiny=True, n_repeats=2)
    check_feature_extractor(_WithPrompts(ext))
