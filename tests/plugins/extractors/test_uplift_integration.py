"""Feature maps of every extractor feed fulcra.uplift unchanged (tiny synthetic scene, CPU)."""

import importlib.util

import pytest
import torch

import fulcra
from fulcra_plugins.extractors import iter_feature_maps

scenes = pytest.importorskip("fulcra_plugins.scenes.synthetic")


@pytest.fixture(scope="module")
def scene_and_views():
    from fulcra_plugins.scenes.torch_backend import TorchScene

    g, _ = scenes.build_gaussians(seed=0, density=0.15)
    cams = scenes.build_cameras(width=40, height=30, n_ring=3, n_forward=0)
    scene = TorchScene.from_gaussians(g, device="cpu")
    with torch.no_grad():
        images = [scene.render_rgb(c).permute(2, 0, 1).clamp(0, 1) for c in cams]  # [3, H, W]
    return scene, cams, images


CASES = {
    "rgb": ({"patch_size": 4}, None, {}),
    "dinov2": (
        {"variant": "vits14_reg", "tiny": True, "n_components": 4, "resolution": 42, "crop_size": 28, "stride": 14},
        "timm",
        {},
    ),
    "clip": ({"tiny": True, "grid": 6, "scales": [0.5, 1.0]}, "open_clip", {}),
    "sam": ({"tiny": True, "n_repeats": 2}, "segment_anything", {"positive": True}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_maps_uplift(name, scene_and_views):
    params, module, extra = CASES[name]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    scene, cams, images = scene_and_views
    ext = fulcra.create("feature_extractors", name, **params)
    kw = {}
    if extra.get("positive"):
        pos = torch.zeros(30, 40, dtype=torch.bool)
        pos[10:20, 15:25] = True
        kw["positive"] = [pos] * len(images)
    maps = dict(iter_feature_maps(ext, images, show_progress=False, **kw))
    feats, weights = fulcra.uplift(scene, ((c, maps[i]) for i, c in enumerate(cams)))
    assert feats.shape == (scene.num_primitives, ext.dim) and weights.shape == (scene.num_primitives,)
    assert torch.isfinite(feats).all() and (weights > 0).any()
