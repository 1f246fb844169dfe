"""Negative scribbles and clicks in ``fulcra run segment`` (prompt.negative, prompt.negative_clicks)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fulcra.cli import main
from fulcra_plugins.ludvig.segmentation import segment_uplift
from fulcra_plugins.ludvig.synthetic_benchmark import scribble_from_mask
from fulcra_plugins.scenes import load_scene
from fulcra_plugins.scenes.synthetic import generate_scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("segneg") / "scene", seed=2, width=64, height=48, n_ring=6, n_forward=0, density=0.2
    )


def _gt(scene_dir, name):
    return torch.from_numpy(np.asarray(Image.open(scene_dir / "masks" / f"{name}.png")).astype(np.int64))


def _prompts(scene_dir, tmp_path, obj=3):
    _, cams, _ = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    ref = max(cams, key=lambda c: int((_gt(scene_dir, c.name) == obj).sum()))
    gt = _gt(scene_dir, ref.name)
    pos = scribble_from_mask(gt == obj, erode=1)
    neg = scribble_from_mask(gt == 0, erode=2)  # the ground
    Image.fromarray(pos.numpy().astype(np.uint8) * 255).save(tmp_path / "pos.png")
    Image.fromarray(neg.numpy().astype(np.uint8) * 255).save(tmp_path / "neg.png")
    return ref, pos, neg


def test_uplift_route_scores_what_looks_like_the_negatives_lower(scene_dir, tmp_path):
    scene, cams, imgs = load_scene(scene_dir / "point_cloud.ply", scene_dir / "cameras.json", backend="torch")
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"]
    ref, pos, neg = _prompts(scene_dir, tmp_path)
    feats = torch.nn.functional.one_hot(labels, 5).float() + 0.05  # features that tell objects apart
    plain = segment_uplift(scene, feats, ref, pos, "scribble").scores
    signed = segment_uplift(scene, feats, ref, pos, "scribble", negative=neg).scores
    ground, obj = labels == 0, labels == 3
    # relative to the object, the ground scores lower once it is a negative
    assert float(signed[ground].mean() / signed[obj].mean()) < float(plain[ground].mean() / plain[obj].mean()) - 0.1


def _args(scene_dir, tmp_path, ref, *extra):
    return [
        "run",
        "segment",
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "scene.backend=torch",
        "extractor=rgb",
        "extractor.patch_size=2",
        f"prompt.view={ref.name}",
        "hooks=[]",
        *extra,
    ]


def test_segment_with_negative_scribbles_end_to_end(scene_dir, tmp_path):
    ref, pos, neg = _prompts(scene_dir, tmp_path)
    labels = load_file(str(scene_dir / "labels.safetensors"))["labels"].numpy()
    out_p, out_n = tmp_path / "plain", tmp_path / "neg"
    base = _args(scene_dir, tmp_path, ref, f"prompt.scribble={tmp_path / 'pos.png'}", "figures=false")
    assert main([*base, f"out={out_p}"]) == 0
    assert main([*base, f"prompt.negative={tmp_path / 'neg.png'}", f"out={out_n}"]) == 0
    res = json.loads((out_n / "results.json").read_text())
    assert res["negative_pixels"] == int(neg.sum()) > 0
    assert json.loads((out_p / "results.json").read_text())["negative_pixels"] == 0
    m_p, m_n = np.load(out_p / "mask3d.npy"), np.load(out_n / "mask3d.npy")
    obj = labels == 3
    # the negatives do not lose the object and select no more of the ground than without them
    assert (m_n & obj).sum() >= 0.9 * (m_p & obj).sum() > 0
    assert (m_n & (labels == 0)).sum() <= (m_p & (labels == 0)).sum()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["prompt.negative_clicks=[[1000,2]]"], ["prompt.negative_clicks", "outside"]),
        (["prompt.negative_clicks=[[3]]"], ["prompt.negative_clicks", "[[x, y]"]),
        (["method=geometry", "prompt.negative_clicks=[[3,3]]"], ["negative prompts", "method=geometry"]),
        (["prompt.mask=MASK", "prompt.negative_clicks=[[3,3]]"], ["prompt.negative", "prompt.mask"]),
    ],
)
def test_bad_negative_prompts_are_one_line_errors(scene_dir, tmp_path, capsys, extra, words):
    ref, pos, neg = _prompts(scene_dir, tmp_path)
    extra = [e.replace("MASK", str(tmp_path / "pos.png")) for e in extra]
    prompt = [] if any(e.startswith("prompt.mask") for e in extra) else [f"prompt.scribble={tmp_path / 'pos.png'}"]
    code = main([*_args(scene_dir, tmp_path, ref, *prompt, *extra), f"out={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
