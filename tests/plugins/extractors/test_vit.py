"""vit: the sliding-window + PCA extractor over any backbone; dinov2 is one setting of it."""

import json

import pytest
import torch

pytest.importorskip("timm")

import fulcra  # noqa: E402
from fulcra.errors import ConfigError  # noqa: E402
from fulcra.testing import check_plugin  # noqa: E402
from fulcra_plugins.extractors.dinov2 import DINOv2Extractor  # noqa: E402
from fulcra_plugins.extractors.vit import ViTExtractor  # noqa: E402

WIN = dict(tiny=True, resolution=42, crop_size=28, stride=14)


def images(b=2, h=30, w=40, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_dinov2_is_vit_on_the_dinov2_backbone():
    x = images()
    a = DINOv2Extractor(variant="vits14_reg", n_components=4, **WIN)
    b = fulcra.create("feature_extractors", "vit", backbone="dinov2_vits14_reg", n_components=4, **WIN)
    assert isinstance(a, ViTExtractor)
    torch.testing.assert_close(a(x), b(x))


def test_dinov2_cache_key_is_unchanged():
    # caches written before the vit extractor existed stay valid: same keys, same values, for the
    # window placement of that time (window_spacing="fixed"); the official "even" one has its own key
    e = DINOv2Extractor(variant="vits14_reg", n_components=4, window_spacing="fixed", **WIN)
    assert e.cache_params() == {
        "name": "dinov2",
        "variant": "vits14_reg",
        "weights": None,
        "tiny": True,
        "resolution": 42,
        "crop_size": 28,
        "stride": 14,
    }
    even = DINOv2Extractor(variant="vits14_reg", n_components=4, **WIN).cache_params()
    assert even == {**e.cache_params(), "window_spacing": "even"}
    v = ViTExtractor(backbone="dinov2_vits14_reg", n_components=4, **WIN)
    assert v.cache_params()["backbone"] == "dinov2_vits14_reg" and v.cache_params()["name"] == "vit"


def test_generic_timm_backbone_with_its_own_patch_size(tmp_path):
    node = {"name": "timm", "arch": "vit_small_patch16_224"}
    e = check_plugin(
        "feature_extractors", "vit", backbone=node, tiny=True, n_components=3, resolution=32, crop_size=32, stride=16
    )
    assert e.backbone.patch_size == 16 and json.loads(e.cache_params()["backbone"]) == node
    assert e(images(1, 32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(ConfigError, match=r"vit: crop_size=28 must be a positive multiple of the patch size 16"):
        ViTExtractor(backbone=node, tiny=True, resolution=42, crop_size=28, stride=14)


def test_command_line_keys_reach_the_backbone():
    from fulcra.config import apply_overrides

    cfg = apply_overrides(
        {"extractor": {"name": "dinov2"}},
        [
            "extractor=vit",
            "extractor.backbone=timm",
            "extractor.backbone.arch=vit_small_patch16_224",
            "extractor.tiny=true",
            "extractor.n_components=2",
            "extractor.resolution=32",
            "extractor.crop_size=32",
        ],
    )
    e = fulcra.create("feature_extractors", cfg["extractor"])
    assert e.backbone.name == "timm:vit_small_patch16_224" and e.dim == 2
