"""The LUDVIG code relies on the interfaces only (refiners through ``refine``, built by name; the
package-boundary rules are tests/core/test_plugin_boundaries.py), and the one uplift routine centres
exactly as uplifting centred maps, caches per view and resumes."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import fulcra
import fulcra_plugins

ROOT = Path(fulcra_plugins.__file__).parent


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else None
            yield base, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def test_ludvig_never_names_a_concrete_refiner_or_calls_beyond_refine():
    for path in sorted((ROOT / "ludvig").glob("*.py")):
        text = path.read_text()
        assert "GraphDiffusion" not in text, f"{path.name} names GraphDiffusion"
        assert "refiner.run(" not in text, f"{path.name} calls refiner.run()"
        for module, _, line in _imports(path):
            assert not (module or "").startswith("fulcra_plugins.refiners"), f"{path.name}:{line} imports {module}"


def test_uplift_views_centres_as_uplifting_centred_maps(tiny_scene):
    from fulcra.uplift import resize_to_camera
    from fulcra_plugins.ludvig.lifting import uplift_views

    scene, cams, _, _ = tiny_scene
    g = torch.Generator().manual_seed(0)
    images = {c.name: torch.rand(3, c.height, c.width, generator=g) for c in cams}
    rgb = fulcra.create("feature_extractors", "rgb", patch_size=4)
    up = uplift_views(scene, cams, images, rgb, out=None, center=True)
    maps = {c.name: resize_to_camera(rgb(images[c.name][None])[0], c) for c in cams}
    mu = torch.stack([m.mean((1, 2)) for m in maps.values()]).mean(0)
    ref, w = fulcra.uplift(scene, ((c, maps[c.name] - mu[:, None, None]) for c in cams))
    torch.testing.assert_close(up.mean, mu)
    torch.testing.assert_close(up.weights, w)
    torch.testing.assert_close(up.features, ref, atol=1e-5, rtol=1e-4)
    plain = uplift_views(scene, cams, images, rgb, out=None, center=False)
    assert torch.count_nonzero(plain.mean) == 0 and not torch.allclose(plain.features, up.features)


def test_uplift_views_caches_and_resumes(tiny_scene, tmp_path):
    from fulcra_plugins.ludvig.lifting import uplift_views

    scene, cams, _, _ = tiny_scene
    g = torch.Generator().manual_seed(1)
    images = {c.name: torch.rand(3, c.height, c.width, generator=g) for c in cams}
    rgb = fulcra.create("feature_extractors", "rgb", patch_size=4)
    assert rgb.cache_dir is None
    a = uplift_views(scene, cams, images, rgb, out=tmp_path, ply="scene", extractor_node={"name": "rgb"}, center=True)
    assert not a.resumed and rgb.cache_dir == tmp_path / "feature_cache"
    assert len(list((tmp_path / "feature_cache").rglob("*.pt"))) == len(cams)
    b = uplift_views(scene, cams, images, rgb, out=tmp_path, ply="scene", extractor_node={"name": "rgb"}, center=True)
    assert b.resumed and torch.equal(a.features, b.features) and torch.allclose(a.mean, b.mean)
    c = uplift_views(
        scene, cams[:-1], images, rgb, out=tmp_path, ply="scene", extractor_node={"name": "rgb"}, center=True
    )
    assert not c.resumed  # other views: another fingerprint
