"""PLY and camera formats: round trips, conventions, and malformed files named by field."""

import json
import struct

import numpy as np
import plyfile
import pytest
import torch

from fulcra.camera import Camera
from fulcra.errors import FormatError
from fulcra_plugins.scenes.cameras import (
    load_cameras,
    write_cameras_json,
    write_colmap,
    write_transforms_json,
)
from fulcra_plugins.scenes.gaussians import Gaussians
from fulcra_plugins.scenes.ply import read_ply, write_ply
from fulcra_plugins.scenes.synthetic import build_cameras, look_at


def gaussians(n=20, deg=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=q / q.norm(dim=1, keepdim=True),
        scales=torch.rand(n, 3, generator=g) * 0.1 + 0.01,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        sh0=torch.randn(n, 3, generator=g),
        shN=torch.randn(n, (deg + 1) ** 2 - 1, 3, generator=g),
    )


def test_ply_round_trip_and_inria_layout(tmp_path):
    g = gaussians(deg=2)
    path = write_ply(g, tmp_path / "pc.ply")
    raw = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in raw.properties]
    # exactly the 3DGS properties, in the order the INRIA code writes them (viewer compatible)
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [
        f"f_rest_{i}" for i in range(24)
    ] + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # stored as logit opacity and log scale; f_rest channel-major
    np.testing.assert_allclose(raw["opacity"], torch.logit(g.opacities).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(raw["scale_1"], torch.log(g.scales[:, 1]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(raw["f_rest_8"], g.shN[:, 0, 1].numpy())  # green channel, first coefficient
    back = read_ply(path)
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name), rtol=1e-5, atol=1e-6)
    assert back.sh_degree == 2


def _write_raw(path, fields, n=4, values=None):
    rec = np.zeros(n, dtype=[(f, "f4") for f in fields])
    for f in fields:
        rec[f] = 0.5
    for f, v in (values or {}).items():
        rec[f] = v
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")]).write(str(path))
    return path


BASE = [
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
    "rot_3",
]


def test_ply_missing_property(tmp_path):
    p = _write_raw(tmp_path / "a.ply", [f for f in BASE if f != "scale_1"])
    with pytest.raises(FormatError, match=r"a\.ply.*'scale_1'"):
        read_ply(p)


def test_ply_f_rest_count_mismatch(tmp_path):
    p = _write_raw(tmp_path / "b.ply", BASE + [f"f_rest_{i}" for i in range(10)])
    with pytest.raises(FormatError, match=r"b\.ply.*f_rest count mismatch"):
        read_ply(p)


def test_ply_non_finite(tmp_path):
    p = _write_raw(tmp_path / "c.ply", BASE, values={"opacity": np.array([0, np.nan, 0, 0])})
    with pytest.raises(FormatError, match=r"c\.ply.*non-finite.*'opacity'.*Gaussian 1"):
        read_ply(p)


def test_ply_truncated_and_missing_element(tmp_path):
    path = write_ply(gaussians(), tmp_path / "d.ply")
    data = path.read_bytes()
    (tmp_path / "t.ply").write_bytes(data[: len(data) - 100])
    with pytest.raises(FormatError, match=r"t\.ply"):
        read_ply(tmp_path / "t.ply")
    rec = np.zeros(3, dtype=[("x", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "face")]).write(str(tmp_path / "e.ply"))
    with pytest.raises(FormatError, match=r"e\.ply.*missing element 'vertex'"):
        read_ply(tmp_path / "e.ply")


def _same(a: list, b: list):
    assert [c.name for c in a] == [c.name for c in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x.viewmat, y.viewmat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.K, y.K)
        assert (x.width, x.height) == (y.width, y.height)


@pytest.mark.parametrize("fmt", ["cameras.json", "colmap-bin", "colmap-txt", "transforms"])
def test_camera_round_trips(tmp_path, fmt):
    cams = build_cameras(64, 48, n_ring=4, n_forward=2)
    cams[1].K[0, 2] += 3.0  # an off-centre principal point survives every format
    if fmt == "cameras.json":
        src = write_cameras_json(cams, tmp_path / "cameras.json")
    elif fmt.startswith("colmap"):
        src = write_colmap(cams, tmp_path / "sparse" / "0", binary=fmt.endswith("bin"))
        src = tmp_path  # the scene folder: sparse/0 is found
    else:
        src = write_transforms_json(cams, tmp_path / "transforms.json")
    got = load_cameras(src)
    want = sorted(cams, key=lambda c: c.name) if fmt.startswith("colmap") else cams
    _same(got, want)


def test_transforms_nerf_synthetic_opengl_axes(tmp_path):
    from PIL import Image

    (tmp_path / "train").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "r_0.png")
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [0, 0, 4]  # OpenGL camera at z = 4 looking down -z at the origin
    (tmp_path / "transforms.json").write_text(
        json.dumps(
            {"camera_angle_x": 0.6911, "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w_gl.tolist()}]}
        )
    )
    (cam,) = load_cameras(tmp_path / "transforms.json")
    assert (cam.width, cam.height, cam.name) == (40, 30, "r_0")
    assert abs(cam.K[0, 0].item() - 0.5 * 40 / np.tan(0.5 * 0.6911)) < 1e-3
    origin = cam.viewmat @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert origin[2] > 0 and abs(origin[0]) < 1e-5  # in front of the camera in OpenCV axes (z forward)


def test_colmap_rejects_other_models_by_name(tmp_path):
    (tmp_path / "cameras.txt").write_text("1 OPENCV 64 48 50 50 32 24 0.1 0 0 0\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n")
    with pytest.raises(FormatError, match="unsupported camera model 'OPENCV'"):
        load_cameras(tmp_path)
    with open(tmp_path / "cameras.bin", "wb") as fh:  # binary: model id 2 = SIMPLE_RADIAL
        fh.write(struct.pack("<QiiQQ4d", 1, 1, 2, 64, 48, 50, 32, 24, 0.1))
    with open(tmp_path / "images.bin", "wb") as fh:
        fh.write(struct.pack("<Qi7di", 1, 1, 1, 0, 0, 0, 0, 0, 0, 1) + b"a.png\x00" + struct.pack("<Q", 0))
    with pytest.raises(FormatError, match=r"cameras\.bin.*'SIMPLE_RADIAL'"):
        load_cameras(tmp_path)


def test_malformed_camera_files_name_the_field(tmp_path):
    (tmp_path / "c.json").write_text(
        json.dumps([{"img_name": "a", "width": 4, "height": 4, "position": [0, 0, 0], "fx": 1, "fy": 1}])
    )
    with pytest.raises(FormatError, match=r"c\.json: camera 0: missing field 'rotation'"):
        load_cameras(tmp_path / "c.json")
    (tmp_path / "t.json").write_text(
        json.dumps(
            {
                "fl_x": 10,
                "w": 4,
                "h": 4,
                "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0, 0, 0]] * 3 + [[0, 0, 0, float("nan")]]}],
            }
        )
    )
    with pytest.raises(FormatError, match=r"t\.json: frames\[0\]: non-finite value in field 'transform_matrix'"):
        load_cameras(tmp_path / "t.json")
    (tmp_path / "u.json").write_text(
        json.dumps(
            {
                "fl_x": 10,
                "w": 4,
                "h": 4,
                "k1": 0.2,
                "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
            }
        )
    )
    with pytest.raises(FormatError, match="'k1' is non-zero"):
        load_cameras(tmp_path / "u.json")
    with open(tmp_path / "cameras.bin", "wb") as fh:
        fh.write(struct.pack("<Qii", 1, 1, 1))  # truncated record
    with pytest.raises(FormatError, match=r"cameras\.bin: truncated"):
        load_cameras(tmp_path)


def test_look_at_is_opencv():
    V = look_at((0.0, -5.0, 0.0), (0.0, 0.0, 0.0))
    cam = Camera(V, torch.eye(3), 2, 2)
    p = V @ torch.tensor([0.0, 0.0, 1.0, 1.0])  # a point above the target: y down means negative y
    assert p[1] < 0 and p[2] > 0
    torch.testing.assert_close(cam.center, torch.tensor([0.0, -5.0, 0.0]), atol=1e-5, rtol=0)


def test_view_dependent_colour_degree_one():
    """SH degree 1, evaluated as 3DGS does: c = C0 sh0 - C1 y sh1 + C1 z sh2 - C1 x sh3 + 0.5."""
    g = gaussians(n=3, deg=1)
    center = torch.tensor([0.5, -2.0, 1.0])
    d = g.means - center
    d = d / d.norm(dim=1, keepdim=True)
    C0, C1 = 0.28209479177387814, 0.4886025119029199
    want = (
        C0 * g.sh0 - C1 * d[:, 1:2] * g.shN[:, 0] + C1 * d[:, 2:3] * g.shN[:, 1] - C1 * d[:, 0:1] * g.shN[:, 2] + 0.5
    ).clamp_min(0)
    torch.testing.assert_close(g.colors_from(center), want)


def test_transforms_rejects_fisheye(tmp_path):
    (tmp_path / "transforms.json").write_text(
        json.dumps(
            {
                "camera_model": "OPENCV_FISHEYE",
                "fl_x": 10,
                "w": 4,
                "h": 4,
                "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
            }
        )
    )
    with pytest.raises(FormatError, match="unsupported camera_model 'OPENCV_FISHEYE'"):
        load_cameras(tmp_path)


def _cam_entry(**over):
    e = {
        "id": 0,
        "img_name": "a",
        "width": 8,
        "height": 6,
        "position": [0, 0, 0],
        "rotation": np.eye(3).tolist(),
        "fx": 5.0,
        "fy": 5.0,
    }
    e.update(over)
    return e


@pytest.mark.parametrize(
    "entries, match",
    [
        ([_cam_entry(width="abc")], r"camera 0: field 'width' must be a positive integer number of pixels, got 'abc'"),
        ([_cam_entry(height=0)], r"camera 0: field 'height' must be a positive integer"),
        ([_cam_entry(width=-4)], r"camera 0: field 'width' must be a positive integer"),
        ([_cam_entry(fx=0.0)], r"camera 0 \('a'\): focal lengths must be positive, got fx=0"),
        (
            [_cam_entry(rotation=[[1, 0.2, 0], [0, 1, 0], [0, 0, 1]])],
            r"camera 0 \('a'\): field 'rotation' is not a rotation",
        ),
        ([_cam_entry(rotation=np.diag([1.0, 1.0, -1.0]).tolist())], r"camera 0 .*is not a rotation .*det = -1"),
        ([_cam_entry(), _cam_entry(id=1, position=[1, 0, 0])], r"cameras 0 and 1 share the image name 'a'"),
    ],
)
def test_cameras_json_values_that_would_render_garbage_are_refused(tmp_path, entries, match):
    (tmp_path / "cameras.json").write_text(json.dumps(entries))
    with pytest.raises(FormatError, match=r"cameras\.json: " + match):
        load_cameras(tmp_path / "cameras.json")


def test_ply_header_undercounting_its_data_is_refused(tmp_path):
    g = gaussians()
    path = write_ply(g, tmp_path / "a.ply")
    raw = path.read_bytes()
    n = len(g)
    (tmp_path / "short.ply").write_bytes(
        raw.replace(f"element vertex {n}\n".encode(), f"element vertex {n - 1}\n".encode())
    )
    with pytest.raises(
        FormatError, match=rf"short\.ply: vertex count mismatch: the header says {n - 1} but the file holds"
    ):
        read_ply(tmp_path / "short.ply")
    assert len(read_ply(path)) == n
