"""End to end: ``fulcra run remove`` (text-prompted object removal, thesis §5.5) with a weight-free
text-capable extractor on a small generated scene, and the geometry baseline of ``segment``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fulcra.cli import main
from fulcra_plugins.ludvig import iou
from fulcra_plugins.scenes import load_scene
from fulcra_plugins.scenes.synthetic import generate_scene

RED = 1  # red_sphere


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("remove") / "scene", seed=2, width=64, height=48, n_ring=6, n_forward=0, density=0.2
    )


@pytest.fixture
def words(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return "_colour_words:ColourWords"


def _run(args):
    return main(["run", *args, "hooks=[]"])


def _scene_args(scene_dir):
    return [
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "scene.backend=torch",
    ]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255


def test_remove_by_text_drops_the_named_object(scene_dir, tmp_path, words):
    out = tmp_path / "out"
    args = [
        "remove",
        *_scene_args(scene_dir),
        f"extractor={words}",
        "prompt.text=the red sphere",
        "features=rgb",
        "features.patch_size=2",
        "renders=2",
        f"out={out}",
    ]
    assert _run(args) == 0
    scene, cams, _ = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    mask3d = np.load(out / "mask3d.npy")
    assert mask3d.dtype == bool and mask3d.shape == (scene.num_primitives,)
    assert iou(torch.from_numpy(mask3d), labels == RED) > 0.6
    res = json.loads((out / "results.json").read_text())
    assert res["selected"] == int(mask3d.sum()) and res["diffusion"] is True
    assert res["remaining"] == scene.num_primitives - res["selected"]
    assert res["relevancy"]["mean_selected"] > res["relevancy"]["mean_other_seen"] + 0.3
    removed = plyfile.PlyData.read(str(out / "removed.ply"))["vertex"]
    assert removed.count == scene.num_primitives - int(mask3d.sum()) < scene.num_primitives
    # the kept Gaussians are exactly the unselected ones, in PLY order
    rest, _, _ = load_scene(out / "removed.ply", scene_dir / "cameras.json", backend="torch", device="cpu")
    torch.testing.assert_close(rest.positions, scene.positions[~torch.from_numpy(mask3d)])
    # before/after renders: the red object's pixels lose their red
    assert len(res["renders"]) == 2
    for name in res["renders"]:
        before, after = _png(out / "renders" / f"{name}_before.png"), _png(out / "renders" / f"{name}_after.png")
        gt = np.asarray(Image.open(scene_dir / "masks" / f"{name}.png")) == RED
        assert gt.sum() > 20
        redness = lambda im: (im[..., 0] - im[..., 1:].mean(-1))[gt].mean()  # noqa: E731
        assert redness(before) > 0.3 and redness(after) < 0.5 * redness(before)
        assert np.abs(before - after)[~gt].mean() < np.abs(before - after)[gt].mean()
        # the relevancy heat map is hot on the object, not uniform
        heat = _png(out / "figures" / f"relevancy_{name}.png")
        f = heat.shape[1] // before.shape[1]  # enlarged for a person to read, nearest neighbour
        assert heat.shape[:2] == (before.shape[0] * f, before.shape[1] * f) and heat.std() > 0.05
        h = heat[::f, ::f]
        assert np.abs(h[gt].mean(0) - h[~gt].mean(0)).sum() > 0.2
        assert (out / "figures" / f"scores_{name}.png").is_file()
    # rerun: the finished stage is reused
    assert _run(args) == 0
    assert json.loads((out / "results.json").read_text()) == res


def test_remove_without_diffusion_with_a_tiny_clip(scene_dir, tmp_path):
    out = tmp_path / "clip"
    args = [
        "remove",
        *_scene_args(scene_dir),
        "extractor=clip",
        "extractor.tiny=true",
        "extractor.grid=4",
        "extractor.scales=[0.5,1.0]",
        "prompt.text=teddy bear",
        "diffusion=false",
        "renders=0",
        "figures=false",
        f"out={out}",
    ]
    assert _run(args) == 0  # random weights: some selection, the whole path runs on the real clip plugin
    res = json.loads((out / "results.json").read_text())
    removed = plyfile.PlyData.read(str(out / "removed.ply"))["vertex"]
    assert 0 < res["selected"] == int(np.load(out / "mask3d.npy").sum()) and removed.count == res["remaining"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["extractor=rgb", "prompt.text=red"], "cannot embed text"),
        (["prompt.text=", "extractor=__WORDS__"], "prompt.text"),
        (["prompt.text=red", "extractor=__WORDS__", "threshold=high"], "threshold"),
        (["prompt.text=red", "extractor=__WORDS__", "features=sam"], "features"),
    ],
)
def test_remove_bad_inputs_fail_in_one_line_before_writing(scene_dir, tmp_path, words, capsys, extra, needle):
    out = tmp_path / "never"
    extra = [e.replace("__WORDS__", words) for e in extra]
    assert (
        _run(
            [
                "remove",
                *_scene_args(scene_dir),
                *extra,
                *([] if any(e.startswith("features=") for e in extra) else ["features=rgb"]),
                f"out={out}",
            ]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_segment_geometry_baseline(scene_dir, tmp_path):
    _, cams, _ = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    gt = {c.name: np.asarray(Image.open(scene_dir / "masks" / f"{c.name}.png")) for c in cams}
    ref = max(cams, key=lambda c: int((gt[c.name] == RED).sum()))
    Image.fromarray((gt[ref.name] == RED).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = tmp_path / "geo"
    args = [
        "segment",
        *_scene_args(scene_dir),
        "method=geometry",
        "extractor=sam",  # never built: the geometry baseline uses no extractor
        f"prompt.view={ref.name}",
        f"prompt.mask={tmp_path / 'mask.png'}",
        f"out={out}",
    ]
    assert _run(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "geometry" and res["tuning"]["iou_2d"] > 0.9
    assert not (out / "features.safetensors").exists()
    mask3d = np.load(out / "mask3d.npy")
    assert iou(torch.from_numpy(mask3d), labels == RED) > 0.5


def test_segment_figures_draw_the_diffusion_steps(scene_dir, tmp_path):
    from fulcra_plugins.ludvig.synthetic_benchmark import scribble_from_mask

    _, cams, _ = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    gt = {c.name: np.asarray(Image.open(scene_dir / "masks" / f"{c.name}.png")) for c in cams}
    ref = max(cams, key=lambda c: int((gt[c.name] == RED).sum()))
    scribble = scribble_from_mask(torch.from_numpy(gt[ref.name] == RED), erode=1)
    Image.fromarray(scribble.numpy().astype(np.uint8) * 255).save(tmp_path / "s.png")
    out = tmp_path / "fig"
    args = [
        "segment",
        *_scene_args(scene_dir),
        "extractor.patch_size=2",
        f"prompt.view={ref.name}",
        f"prompt.scribble={tmp_path / 's.png'}",
        "figures=true",
        "figure_steps=[0,3,100]",
        f"out={out}",
    ]
    assert _run(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["figures"] == str(out / "figures") and "notes" not in res
    pics = [_png(out / "figures" / f"diffusion_t{t}.png") for t in (0, 3, 100)]
    assert all(p.shape[1] >= 480 and p.std() > 0.05 for p in pics)
    # over the (dimmed) image, the reached pixels are coloured: more of them at t = 100 than at t = 0
    f = pics[0].shape[1] // ref.width
    img = np.asarray(Image.open(scene_dir / "images" / f"{ref.name}.png").convert("RGB")).astype(np.float32) / 255
    coloured = [np.abs(p[::f, ::f] - 0.6 * img).sum(-1) > 0.05 for p in pics]
    assert coloured[0].sum() < coloured[1].sum() < coloured[2].sum()
    assert coloured[2][gt[ref.name] == RED].mean() > 0.6
