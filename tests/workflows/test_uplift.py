"""End to end: ``fulcra run uplift`` on a generated scene through the CLI contract of issue 5."""

import json
import math

import numpy as np
import plyfile
import pytest
from safetensors.torch import load_file

from fulcra.cli import main
from fulcra_plugins.scenes import load_scene
from fulcra_plugins.scenes.synthetic import generate_scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("uplift") / "scene", seed=5, width=48, height=36, n_ring=5, n_forward=2, density=0.15
    )


def _run(args):  # one intra-op thread is set for the whole suite in tests/conftest.py
    return main(["run", "uplift", *args, "hooks=[]"])


def test_rgb_round_trip_through_the_cli(scene_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "extractor=rgb",
        "scene.backend=torch",
        "prune.keep=0.5",
        "check_views=2",
        f"out={out}",
    ]
    assert _run(args) == 0
    arrays = load_file(str(out / "features.safetensors"))
    scene, cams, imgs = load_scene(scene_dir / "point_cloud.ply", backend="torch", device="cpu")
    n = scene.num_primitives
    assert arrays["features"].shape == (n, 3) and arrays["weights"].shape == (n,)
    assert sorted(p.stem for p in (out / "pca").glob("*.png")) == sorted(c.name for c in cams)
    # RGB round trip: the uplifted colours re-render close to the training images
    for cam in cams[:2]:
        cover = scene.render_alpha(cam) > 0.99
        pred = scene.render(arrays["features"], cam)
        mse = float(((pred - imgs[cam.name].permute(1, 2, 0))[cover] ** 2).mean())
        assert 10 * math.log10(1 / mse) > 20
    results = json.loads((out / "results.json").read_text())
    assert results["roundtrip_psnr"] > 20 and results["kept"] == round(0.5 * n)
    # the pruned PLY holds the heavier half, readable as a plain 3DGS PLY
    pruned = plyfile.PlyData.read(str(out / "pruned" / "point_cloud.ply"))["vertex"]
    assert pruned.count == round(0.5 * n) and "feature_0" not in [p.name for p in pruned.properties]
    kept = load_file(str(out / "pruned" / "features.safetensors"))["index"]
    assert arrays["weights"][kept].min() >= arrays["weights"].median()
    # a second run with the same inputs resumes from the saved features
    assert _run(args) == 0
    assert json.loads((out / "results.json").read_text())["resumed"] is True


def test_colmap_cameras_and_patch_features(scene_dir, tmp_path):
    from fulcra_plugins.scenes.cameras import load_cameras, write_colmap

    write_colmap(load_cameras(scene_dir / "cameras.json"), tmp_path / "sparse" / "0", binary=True)
    out = tmp_path / "out"
    assert (
        _run(
            [
                f"scene.ply={scene_dir / 'point_cloud.ply'}",
                f"scene.cameras={tmp_path}",
                f"scene.images={scene_dir / 'images'}",
                "extractor=rgb",
                "extractor.patch_size=6",
                "pca_views=[ring_000]",
                "check_views=0",
                f"out={out}",
            ]
        )
        == 0
    )
    assert [p.name for p in (out / "pca").iterdir()] == ["ring_000.png"]
    assert load_file(str(out / "features.safetensors"))["features"].shape[1] == 3


def test_malformed_ply_is_a_one_line_error_naming_the_field(scene_dir, tmp_path, capsys):
    rec = np.zeros(
        3,
        dtype=[
            (f, "f4")
            for f in [
                "x",
                "y",
                "z",
                "f_dc_0",
                "f_dc_1",
                "f_dc_2",
                "opacity",
                "scale_0",
                "scale_1",
                "scale_2",
                "rot_0",
                "rot_1",
                "rot_2",
            ]
        ],
    )
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")]).write(str(tmp_path / "bad.ply"))
    code = _run(
        [
            f"scene.ply={tmp_path / 'bad.ply'}",
            f"scene.cameras={scene_dir / 'cameras.json'}",
            f"scene.images={scene_dir / 'images'}",
            f"out={tmp_path / 'o'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "bad.ply" in err and "'rot_3'" in err


def test_missing_images_name_the_camera(scene_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = _run(
        [f"scene.ply={scene_dir / 'point_cloud.ply'}", f"scene.images={tmp_path / 'empty'}", f"out={tmp_path / 'o'}"]
    )
    err = capsys.readouterr().err
    assert code != 0 and "no image for camera" in err and "ring_000" in err
