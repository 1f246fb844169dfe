"""A third party's scene and refiner (tests/example_plugin: ``point_splats``, ``neighbour_vote``),
written only against the interfaces, run in ``uplift``, ``segment`` and ``segment-synthetic`` end to end
(``example``: the shared fixture of tests/conftest.py that installs the distribution)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fulcra
from fulcra.cli import main
from fulcra.interfaces import AdjointScene, AlphaScene, EditableScene, RGBScene, SceneRepresentation
from fulcra.testing import check_plugin


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    from fulcra_plugins.scenes.synthetic import generate_scene

    return generate_scene(
        tmp_path_factory.mktemp("tp") / "scene", seed=2, width=40, height=30, n_ring=5, n_forward=0, density=0.15
    )


def _scene_args(scene_dir):
    return [
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "scene.backend=point_splats",
    ]


def _scribble(scene_dir, tmp_path, obj=3):
    from fulcra_plugins.ludvig.synthetic_benchmark import scribble_from_mask

    cams = json.loads((scene_dir / "scene.json").read_text())["cameras"]["ring"]
    gts = {c: np.asarray(Image.open(scene_dir / "masks" / f"{c}.png")).astype(np.int64) for c in cams}
    ref = max(cams, key=lambda c: int((gts[c] == obj).sum()))
    scribble = scribble_from_mask(torch.from_numpy(gts[ref] == obj), erode=1)
    Image.fromarray(scribble.numpy().astype(np.uint8) * 255).save(tmp_path / "scribble.png")
    return ref, tmp_path / "scribble.png"


def test_the_scene_has_only_the_interface_and_conforms(example, scene_dir):
    scene = check_plugin("scenes", "point_splats", ply=str(scene_dir / "point_cloud.ply"), device="cpu")
    assert isinstance(scene, SceneRepresentation)
    assert not any(isinstance(scene, p) for p in (EditableScene, AlphaScene, RGBScene, AdjointScene))
    check_plugin("refiners", "neighbour_vote")


def test_uplift_into_a_third_party_scene(example, scene_dir, tmp_path, capsys):
    out = tmp_path / "up"
    assert (
        main(
            [
                "run",
                "uplift",
                *_scene_args(scene_dir),
                "extractor=rgb",
                "prune.keep=0.5",
                "check_views=2",
                f"out={out}",
                "hooks=[progress]",
            ]
        )
        == 0
    )
    arrays = load_file(str(out / "features.safetensors"))
    scene = fulcra.create("scenes", "point_splats", ply=str(scene_dir / "point_cloud.ply"), device="cpu")
    assert arrays["features"].shape == (scene.num_primitives, 3) and float(arrays["weights"].max()) > 0
    res = json.loads((out / "results.json").read_text())
    # the uplifted colours re-render close to the images through the third party's own renderer
    assert res["roundtrip_psnr"] > 15
    assert not (out / "pruned").exists() and "EditableScene" in res["notes"][0]
    # the note reaches the person through the fulcra_message hook (printed by `progress`)
    lines = [l for l in capsys.readouterr().err.splitlines() if "EditableScene" in l]
    assert len(lines) == 1 and lines[0].startswith("[fulcra] uplift: prune.keep skipped")


def test_segment_with_third_party_scene_and_refiner(example, scene_dir, tmp_path, capsys):
    ref, scribble = _scribble(scene_dir, tmp_path)
    out = tmp_path / "seg"
    assert (
        main(
            [
                "run",
                "segment",
                *_scene_args(scene_dir),
                "extractor=rgb",
                "extractor.patch_size=2",
                "refiner=neighbour_vote",
                "refiner.k=6",
                f"prompt.view={ref}",
                f"prompt.scribble={scribble}",
                f"out={out}",
                "hooks=[progress]",
            ]
        )
        == 0
    )
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    mask3d = np.load(out / "mask3d.npy")
    assert mask3d.dtype == bool and mask3d.shape == labels.shape and 0 < mask3d.sum() < mask3d.size
    # the selection is mostly the scribbled object (green cylinder, label 3)
    assert float((labels[torch.from_numpy(mask3d)] == 3).float().mean()) > 0.5
    cams = json.loads((scene_dir / "scene.json").read_text())["cameras"]["ring"]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted(cams)
    res = json.loads((out / "results.json").read_text())
    assert "removed" not in res and not (out / "removed.ply").exists()
    lines = [l for l in capsys.readouterr().err.splitlines() if "removal needs" in l]
    assert len(lines) == 1 and "point_splats" not in lines[0] and "PointSplatScene" in lines[0]
    assert res["notes"] == [lines[0].split("segment: ", 1)[1]]


@pytest.mark.parametrize("backend", ["torch", "point_splats"])
def test_segment_synthetic_with_third_party_refiner(example, scene_dir, tmp_path, backend):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "run",
                "segment-synthetic",
                f"scene.ply={scene_dir / 'point_cloud.ply'}",
                f"scene.backend={backend}",
                "refiner=neighbour_vote",
                "eval_views=2",
                f"out={out}",
                "hooks=[]",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["refiner"]["type"] == "NeighbourVote"
    assert res["per_object"] and all(0.0 <= v["uplift_diffusion_iou3d"] <= 1.0 for v in res["per_object"].values())
    assert res["mean"]["uplift_diffusion_iou3d"] > (
        0.4 if backend == "torch" else 0.2
    )  # the region grown from the scribbles finds the objects


def test_python_api_with_third_party_scene_and_refiner(example, scene_dir):
    from fulcra_plugins.ludvig import Selector
    from fulcra_plugins.scenes import SceneImages
    from fulcra_plugins.scenes.cameras import load_cameras

    scene = fulcra.create("scenes", "point_splats", ply=str(scene_dir / "point_cloud.ply"), device="cpu")
    cams = load_cameras(scene_dir / "cameras.json")
    imgs = SceneImages(scene_dir / "images", cams)
    features, weights = fulcra.uplift(scene, ((c, imgs[c.name]) for c in cams))
    assert features.shape == (scene.num_primitives, 3) and bool((weights > 0).any())
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    gt = torch.from_numpy(np.asarray(Image.open(scene_dir / "masks" / f"{cams[0].name}.png")).astype(np.int64))
    obj = int(torch.mode(gt[(gt > 0) & (gt < 255)]).values)
    seen = weights > 0
    centred = torch.where(seen[:, None], features - features[seen].mean(0), features)
    sel = Selector(scene, centred, weights, refiner=fulcra.create("refiners", "neighbour_vote", k=6)).select(
        cams[0], gt == obj
    )
    assert 0 < int(sel.mask3d.sum()) < scene.num_primitives
    assert float((labels[sel.mask3d] == obj).float().mean()) > 0.5
    assert sel.render(cams[1]).shape == (cams[1].height, cams[1].width)
    with pytest.raises(TypeError, match=r"PointSplatScene cannot be edited.*EditableScene"):
        sel.remove()
