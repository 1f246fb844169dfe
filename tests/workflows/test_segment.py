"""End to end: ``fulcra run segment`` (the CLI contract of issue 7) and ``segment_synthetic`` on a
small generated scene."""

import json

import numpy as np
import plyfile
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fulcra.cli import main
from fulcra_plugins.ludvig import iou
from fulcra_plugins.ludvig.synthetic_benchmark import scribble_from_mask
from fulcra_plugins.scenes import load_scene
from fulcra_plugins.scenes.synthetic import generate_scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield generate_scene(tmp_path_factory.mktemp("segment") / "scene", seed=2, width=64, height=48, n_ring=6, n_forward=0, density=0.2)
    torch.set_num_threads(n)


def _run(args):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["run", *args, "hooks=[]"])
    finally:
        torch.set_num_threads(n)


def _gt(scene_dir, name):
    return torch.from_numpy(np.asarray(Image.open(scene_dir / "masks" / f"{name}.png")).astype(np.int64))


def test_segment_cli_contract_and_removal(scene_dir, tmp_path):
    scene, cams, imgs = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    obj = 3  # green cylinder
    ref = max(cams, key=lambda c: int((_gt(scene_dir, c.name) == obj).sum()))
    scribble = scribble_from_mask(_gt(scene_dir, ref.name) == obj, erode=1)
    Image.fromarray(scribble.numpy().astype(np.uint8) * 255).save(tmp_path / "scribble.png")
    out = tmp_path / "out"
    args = ["segment", f"scene.ply={scene_dir / 'point_cloud.ply'}", f"scene.cameras={scene_dir / 'cameras.json'}",
            f"scene.images={scene_dir / 'images'}", "scene.backend=torch", "extractor=rgb", "extractor.patch_size=2",
            f"prompt.view={ref.name}", f"prompt.scribble={tmp_path / 'scribble.png'}", f"out={out}"]
    assert _run(args) == 0
    mask3d = np.load(out / "mask3d.npy")
    assert mask3d.dtype == bool and mask3d.shape == (scene.num_primitives,)
    assert iou(torch.from_numpy(mask3d), labels == obj) > 0.7
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(c.name for c in cams)
    m = np.asarray(Image.open(out / "masks" / f"{ref.name}.png"))
    assert set(np.unique(m)) <= {0, 255} and iou(torch.from_numpy(m > 0), _gt(scene_dir, ref.name) == obj) > 0.6
    # removed.ply: the scene without the selection; rendered, the object's pixels show what was behind it
    removed = plyfile.PlyData.read(str(out / "removed.ply"))["vertex"]
    assert removed.count == scene.num_primitives - int(mask3d.sum())
    rest, _, _ = load_scene(out / "removed.ply", scene_dir / "cameras.json", backend="torch", device="cpu")
    onehot = torch.nn.functional.one_hot(labels[~torch.from_numpy(mask3d)], 5).float()
    shown = rest.render(onehot, ref)[_gt(scene_dir, ref.name) == obj]
    covered = shown.sum(-1) > 0.5
    # before removal all these pixels showed the object; the shaded bottom of the cylinder (dark
    # green, close to the ground's look) is partly missed, so some of it remains
    assert (shown[covered].argmax(-1) == obj).float().mean() < 0.35
    behind = shown[covered].argmax(-1)
    assert (behind == 0).any() and ((behind == 0) | (behind == 1)).float().mean() > 0.6  # ground and the sphere behind
    assert (out / "overlay.png").is_file()
    # the second run reuses the uplifted features
    assert _run(args) == 0
    assert json.loads((out / "results.json").read_text())["features_resumed"] is True


def test_segment_bad_prompt_is_one_line_error(scene_dir, tmp_path, capsys):
    args = ["segment", f"scene.ply={scene_dir / 'point_cloud.ply'}", "scene.backend=torch", "prompt.view=nope",
            f"prompt.scribble={tmp_path / 'x.png'}", f"out={tmp_path / 'o'}"]
    assert _run(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("prompt.view" in line and "nope" in line for line in err)


def test_segment_synthetic_ablation(scene_dir, tmp_path):
    out = tmp_path / "syn"
    args = ["segment-synthetic", f"scene.ply={scene_dir / 'point_cloud.ply'}", "scene.backend=torch",
            "extractor.patch_size=2", "eval_views=3", f"out={out}"]
    assert _run(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["per_object"]) == {"red_sphere", "blue_cube", "green_cylinder", "yellow_cone"}
    for v in ("single_view", "uplift", "uplift_diffusion"):
        assert 0.0 <= res["mean"][f"{v}_iou3d"] <= 1.0
    assert "| mean |" in (out / "results.md").read_text()
