"""Synthetic scene, load_scene, uplift through the torch backend, pruning, subsets, PCA images."""

import json

import pytest
import torch

import fulcra
from fulcra.errors import FormatError
from fulcra_plugins.scenes import SceneImages, load_scene
from fulcra_plugins.scenes.gaussians import sh_to_rgb
from fulcra_plugins.scenes.ply import read_ply
from fulcra_plugins.scenes.prune import load_features, save_subset, select_by_weight
from fulcra_plugins.scenes.synthetic import build_gaussians, generate_scene
from fulcra_plugins.scenes.viz import pca_colors, render_pca


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    torch.set_num_threads(1)
    return generate_scene(
        tmp_path_factory.mktemp("syn") / "scene", seed=3, width=48, height=36, n_ring=4, n_forward=2, density=0.15
    )


def test_synthetic_is_deterministic_and_labelled():
    a, la = build_gaussians(seed=1, density=0.1)
    b, lb = build_gaussians(seed=1, density=0.1)
    c, _ = build_gaussians(seed=2, density=0.1)
    torch.testing.assert_close(a.means, b.means)
    assert torch.equal(la, lb)
    assert not torch.allclose(a.means, c.means)
    assert set(la.unique().tolist()) == {0, 1, 2, 3, 4}  # ground + 4 objects


def test_generated_files_load_through_the_real_path(tiny_scene):
    meta = json.loads((tiny_scene / "scene.json").read_text())
    scene, cams, imgs = load_scene(tiny_scene / "point_cloud.ply", backend="torch", device="cpu")
    assert scene.num_primitives == meta["num_gaussians"]
    assert [c.name for c in cams] == meta["cameras"]["ring"] + meta["cameras"]["forward"]
    assert isinstance(imgs, SceneImages) and not imgs.missing and len(imgs) == len(cams)
    img = imgs[cams[0].name]
    assert img.shape == (3, 36, 48) and 0 <= img.min() and img.max() <= 1
    # the saved image is the scene's own rendering (up to 8-bit quantisation)
    torch.testing.assert_close(scene.render_rgb(cams[0]).clamp(0, 1), img.permute(1, 2, 0), atol=1 / 255 + 1e-4, rtol=0)
    labels = load_features(tiny_scene / "labels.safetensors", expected=scene.num_primitives)["labels"]
    assert labels.dtype == torch.int64


def test_uplift_recovers_colours_and_round_trips(tiny_scene):
    scene, cams, imgs = load_scene(tiny_scene / "point_cloud.ply", backend="torch", device="cpu")
    # feature maps at a lower resolution than the cameras are resized by the core
    views = [
        (c, torch.nn.functional.interpolate(imgs[c.name][None], scale_factor=0.5, mode="bilinear")[0]) for c in cams
    ]
    f, w = fulcra.uplift(scene, views)
    assert f.shape == (scene.num_primitives, 3) and w.shape == (scene.num_primitives,)
    g = read_ply(tiny_scene / "point_cloud.ply")
    heavy = w > w.quantile(0.5)
    true = sh_to_rgb(g.sh0[heavy]).clamp(0, 1)
    err = (f[heavy] - true).abs().mean()
    shuffled = (true[torch.randperm(len(true), generator=torch.Generator().manual_seed(0))] - true).abs().mean()
    # well-seen Gaussians get back (close to) their own colour; at 48x36 px a pixel mixes several
    # Gaussians, so the average is blurred, yet far closer than another Gaussian's colour
    assert err < 0.45 * shuffled, (err, shuffled)
    cam = cams[1]
    cover = scene.render_alpha(cam) > 0.99
    mse = ((scene.render(f, cam) - imgs[cam.name].permute(1, 2, 0))[cover] ** 2).mean()
    assert 10 * torch.log10(1 / mse) > 20


def test_prune_select_and_subset(tiny_scene, tmp_path):
    w = torch.tensor([0.0, 5.0, 1.0, 3.0, 2.0])
    assert select_by_weight(w, 0.4).tolist() == [1, 3]
    assert select_by_weight(w, 3).tolist() == [1, 3, 4]
    assert select_by_weight(w, 1.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(Exception, match="keep"):
        select_by_weight(w, 0)
    scene, _, _ = load_scene(tiny_scene / "point_cloud.ply", backend="torch", device="cpu")
    n = scene.num_primitives
    feats = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    idx = torch.tensor([4, 0, 7])
    out = save_subset(scene, idx, tmp_path / "sub", features=feats)
    sub = read_ply(out / "point_cloud.ply")
    assert len(sub) == 3
    torch.testing.assert_close(sub.means, scene.gaussians.means[idx], atol=1e-6, rtol=0)
    arrays = load_features(out / "features.safetensors", expected=3)
    assert arrays["index"].tolist() == [4, 0, 7] and arrays["features"][:, 0].tolist() == [4.0, 0.0, 7.0]
    with pytest.raises(FormatError, match="count mismatch in '(index|features)'"):
        load_features(out / "features.safetensors", expected=4)


def test_pca_render(tiny_scene, tmp_path):
    scene, cams, _ = load_scene(tiny_scene / "point_cloud.ply", backend="torch", device="cpu")
    feats = torch.randn(scene.num_primitives, 7)
    cols = pca_colors(feats)
    assert cols.shape == (scene.num_primitives, 3) and cols.min() >= 0 and cols.max() <= 1
    img = render_pca(scene, feats, cams[0], path=tmp_path / "p.png", colors=cols)
    assert img.shape == (36, 48, 3) and (tmp_path / "p.png").is_file()


def test_missing_images_and_ply(tmp_path, tiny_scene):
    with pytest.raises(FormatError, match="no such PLY"):
        load_scene(tmp_path / "nope.ply")
    (tmp_path / "imgs").mkdir()
    _, cams, imgs = load_scene(tiny_scene / "point_cloud.ply", images=tmp_path / "imgs", backend="torch", device="cpu")
    assert imgs.missing == [c.name for c in cams] and len(imgs) == 0


def test_3dgs_output_layout_is_found(tmp_path, tiny_scene):
    """point_cloud/iteration_N/point_cloud.ply with cameras.json two levels up and the dataset in cfg_args."""
    import shutil

    out = tmp_path / "output"
    (out / "point_cloud" / "iteration_30000").mkdir(parents=True)
    shutil.copy(tiny_scene / "point_cloud.ply", out / "point_cloud" / "iteration_30000" / "point_cloud.ply")
    shutil.copy(tiny_scene / "cameras.json", out / "cameras.json")
    (out / "cfg_args").write_text(
        f"Namespace(eval=False, images='images', model_path='{out}', resolution=-1, sh_degree=3, source_path='{tiny_scene}', white_background=False)"
    )
    scene, cams, imgs = load_scene(
        out / "point_cloud" / "iteration_30000" / "point_cloud.ply", backend="torch", device="cpu"
    )
    assert len(cams) == 6 and not imgs.missing  # cameras are returned, never patched onto the scene


def test_backends_are_built_through_the_registry(tiny_scene):
    from fulcra.errors import UnknownPluginError
    from fulcra_plugins.scenes import AUTO_BACKENDS, make_scene
    from fulcra_plugins.scenes.torch_backend import TorchScene

    ply = tiny_scene / "point_cloud.ply"
    assert AUTO_BACKENDS["cpu"] == ("torch",) and AUTO_BACKENDS["cuda"][0] == "gsplat"
    assert type(make_scene("auto", ply, "cpu")) is TorchScene
    # the registry's validation applies to the bundled backends too: unknown options and names fail in one line
    with pytest.raises(fulcra.errors.ConfigError, match="tile_sise"):
        make_scene("torch", ply, "cpu", tile_sise=4)
    with pytest.raises(UnknownPluginError, match="torch"):
        make_scene("torhc", ply, "cpu")


def test_scene_base_imports_neither_the_generator_nor_a_backend():
    import subprocess
    import sys

    code = (
        "import sys, fulcra_plugins.scenes.base; "
        "bad = [m for m in ('fulcra_plugins.scenes.synthetic', 'fulcra_plugins.scenes.torch_backend') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
