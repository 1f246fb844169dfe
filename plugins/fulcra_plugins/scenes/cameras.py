"""Camera formats: the 3DGS ``cameras.json``, COLMAP sparse models (binary and text) and
``transforms.json`` (NeRF-synthetic and nerfstudio), read into :class:`fulcra.camera.Camera`
(world-to-camera ``viewmat``, OpenCV axes, pixel centres at +0.5), plus writers for each format.

A camera's ``name`` is the stem of its image file, which is how images are matched to cameras.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from fulcra.camera import Camera
from fulcra.errors import FormatError

__all__ = [
    "load_cameras",
    "read_cameras_json",
    "write_cameras_json",
    "read_colmap",
    "write_colmap",
    "read_transforms_json",
    "write_transforms_json",
    "COLMAP_MODELS",
]

# COLMAP camera model id -> (name, number of params); only the pinhole ones are accepted.
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_MODEL_IDS = {name: (i, n) for i, (name, n) in COLMAP_MODELS.items()}
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _intrinsics(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def load_cameras(path: str | Path, images: str | Path | None = None) -> list[Camera]:
    """Cameras from a 3DGS ``cameras.json``, a COLMAP sparse folder or a ``transforms.json``, checked
    (:func:`check_cameras`): positive sizes and focal lengths, rotations that are rotations, no two
    cameras with one image name.

    Args:
        path: a ``.json`` file (3DGS list or transforms dict), a COLMAP model folder
            (``cameras.bin``/``images.bin`` or the ``.txt`` pair), or a folder holding
            ``sparse/0``, ``sparse``, ``cameras.json`` or ``transforms.json``.
        images: image folder, used by NeRF-synthetic ``transforms.json`` files that give no size.
    Returns:
        cameras in file order.
    Raises:
        FormatError: one line naming the file, the camera and the field.
    """
    path = Path(path).expanduser()
    return check_cameras(_load_cameras(path, images), path)


def check_cameras(cameras: list[Camera], source: str | Path) -> list[Camera]:
    """Refuse camera sets that would render garbage without an error: a size or focal length that is
    not positive, a world-to-camera rotation that is not orthonormal with determinant 1 (tolerance
    1e-4: files store rotations with float precision), two cameras with the same image name (views
    would be matched to the wrong images)."""
    seen: dict[str, int] = {}
    for i, cam in enumerate(cameras):
        where = f"{source}: camera {i} ({cam.name!r})"
        if cam.width <= 0 or cam.height <= 0:
            raise FormatError(f"{where}: width and height must be positive, got {cam.width}x{cam.height}")
        K = cam.K.double()
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise FormatError(
                f"{where}: focal lengths must be positive, got fx={float(K[0, 0]):g}, fy={float(K[1, 1]):g}"
            )
        R = cam.viewmat[:3, :3].double()
        err = float((R.T @ R - torch.eye(3, dtype=torch.float64)).abs().max())
        if err > 1e-4 or float(torch.linalg.det(R)) < 0:
            raise FormatError(
                f"{where}: field 'rotation' is not a rotation (|RᵀR - I| = {err:.2g}, det = "
                f"{float(torch.linalg.det(R)):.3g})"
            )
        if cam.name in seen:
            raise FormatError(f"{source}: cameras {seen[cam.name]} and {i} share the image name {cam.name!r}")
        seen[cam.name] = i
    return cameras


def _load_cameras(path: Path, images: str | Path | None = None) -> list[Camera]:
    if path.is_dir():
        for cand in ("cameras.bin", "cameras.txt"):
            if (path / cand).is_file():
                return read_colmap(path)
        for sub in ("sparse/0", "sparse", "colmap/sparse/0"):
            if (path / sub / "cameras.bin").is_file() or (path / sub / "cameras.txt").is_file():
                return read_colmap(path / sub)
        for cand in ("cameras.json", "transforms.json", "transforms_train.json"):
            if (path / cand).is_file():
                return _load_cameras(path / cand, images)
        raise FormatError(f"{path}: no cameras.json, transforms.json or COLMAP model (cameras.bin/.txt) in this folder")
    if not path.is_file():
        raise FormatError(f"{path}: no such camera file or folder")
    if path.suffix.lower() != ".json":
        if path.name in ("cameras.bin", "images.bin", "cameras.txt", "images.txt"):
            return read_colmap(path.parent)
        raise FormatError(f"{path}: unknown camera format (expected cameras.json, transforms.json or a COLMAP folder)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON ({exc})") from exc
    if isinstance(data, list):
        return read_cameras_json(path, data)
    if isinstance(data, dict) and "frames" in data:
        return read_transforms_json(path, images, data)
    raise FormatError(f"{path}: neither a 3DGS cameras.json (a list) nor a transforms.json (a dict with 'frames')")


# ----------------------------------------------------------------------------------- 3DGS cameras.json
def read_cameras_json(path: str | Path, data: list | None = None) -> list[Camera]:
    """The 3DGS ``cameras.json``: entries ``{id, img_name, width, height, position, rotation, fx, fy}``
    where ``rotation`` (3x3, camera-to-world) and ``position`` (camera centre) are in OpenCV axes."""
    path = Path(path)
    if data is None:
        data = json.loads(path.read_text())
    cams = []
    for i, entry in enumerate(data):
        where = f"{path}: camera {i}"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: expected an object")
        for key in ("img_name", "width", "height", "position", "rotation", "fx", "fy"):
            if key not in entry:
                raise FormatError(f"{where}: missing field '{key}'")
        R = _finite(where, "rotation", entry["rotation"], (3, 3))
        t = _finite(where, "position", entry["position"], (3,))
        fx, fy = (float(_finite(where, k, entry[k], ())) for k in ("fx", "fy"))
        w, h = (_size(where, k, entry[k]) for k in ("width", "height"))
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R, t
        cx, cy = float(entry.get("cx", w / 2)), float(entry.get("cy", h / 2))
        cams.append(
            Camera(
                torch.from_numpy(np.linalg.inv(c2w)).float(),
                _intrinsics(fx, fy, cx, cy),
                w,
                h,
                Path(str(entry["img_name"])).stem,
            )
        )
    return cams


def write_cameras_json(cameras: list[Camera], path: str | Path) -> Path:
    """Write cameras in the 3DGS ``cameras.json`` layout (principal point kept as ``cx``/``cy``)."""
    out = []
    for i, cam in enumerate(cameras):
        c2w = torch.linalg.inv(cam.viewmat.double()).numpy()
        out.append(
            {
                "id": i,
                "img_name": cam.name,
                "width": cam.width,
                "height": cam.height,
                "position": c2w[:3, 3].tolist(),
                "rotation": c2w[:3, :3].tolist(),
                "fy": float(cam.K[1, 1]),
                "fx": float(cam.K[0, 0]),
                "cx": float(cam.K[0, 2]),
                "cy": float(cam.K[1, 2]),
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return path


def _size(where: str, key: str, value) -> int:
    """An image size in pixels: a positive integer (``640`` or ``640.0``, not ``"abc"`` or ``0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise FormatError(f"{where}: field '{key}' must be a positive integer number of pixels, got {value!r}")
    return int(value)


def _finite(where: str, key: str, value, shape: tuple) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: field '{key}' is not numeric") from exc
    if arr.shape != shape:
        raise FormatError(f"{where}: field '{key}' must have shape {list(shape)}, got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise FormatError(f"{where}: non-finite value in field '{key}'")
    return arr


# ----------------------------------------------------------------------------------------------- COLMAP
def _qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    K = (
        np.array(
            [
                [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
                [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
                [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
                [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
            ]
        )
        / 3.0
    )
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def _colmap_intrinsics(where: str, model: str, params: np.ndarray) -> torch.Tensor:
    if model == "PINHOLE":
        fx, fy, cx, cy = params
    elif model == "SIMPLE_PINHOLE":
        fx, cx, cy = params
        fy = fx
    else:
        raise FormatError(
            f"{where}: unsupported camera model '{model}' (only PINHOLE and SIMPLE_PINHOLE; undistort the images "
            "first, e.g. with colmap image_undistorter)"
        )
    if not np.isfinite(params).all():
        raise FormatError(f"{where}: non-finite value in camera params")
    return _intrinsics(float(fx), float(fy), float(cx), float(cy))


class _Reader:
    def __init__(self, path: Path):
        self.path, self.buf, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise FormatError(f"{self.path}: truncated file while reading {what}")
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def string(self, what: str) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise FormatError(f"{self.path}: truncated file while reading {what}")
        s = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return s


def _read_colmap_cameras_bin(path: Path) -> dict:
    r = _Reader(path)
    (num,) = r.read("Q", "the camera count")
    cams = {}
    for _ in range(num):
        cam_id, model_id, w, h = r.read("iiQQ", "a camera record")
        if model_id not in COLMAP_MODELS:
            raise FormatError(f"{path}: camera {cam_id}: unknown camera model id {model_id}")
        model, nparams = COLMAP_MODELS[model_id]
        params = np.array(r.read("d" * nparams, f"the params of camera {cam_id}"))
        cams[cam_id] = (model, int(w), int(h), params)
    return cams


def _read_colmap_images_bin(path: Path) -> list:
    r = _Reader(path)
    (num,) = r.read("Q", "the image count")
    out = []
    for _ in range(num):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("idddddddi", "an image record")
        name = r.string(f"the name of image {image_id}")
        (npts,) = r.read("Q", f"the point count of image {image_id}")
        r.pos += npts * 24  # x, y (double) + point3D id (int64): not needed for rendering
        if r.pos > len(r.buf):
            raise FormatError(f"{path}: truncated file in the 2D points of image {image_id}")
        out.append((image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), cam_id, name))
    return out


def _read_colmap_cameras_txt(path: Path) -> dict:
    cams = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4:
            raise FormatError(f"{path}: line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        model = parts[1]
        try:
            cams[int(parts[0])] = (model, int(parts[2]), int(parts[3]), np.array([float(p) for p in parts[4:]]))
        except ValueError as exc:
            raise FormatError(f"{path}: line {lineno}: {exc}") from exc
        if model in _MODEL_IDS and len(parts) - 4 != _MODEL_IDS[model][1]:
            raise FormatError(
                f"{path}: line {lineno}: camera model {model} takes {_MODEL_IDS[model][1]} params, got {len(parts) - 4}"
            )
    return cams


def _read_colmap_images_txt(path: Path) -> list:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        parts = lines[i].split()
        if len(parts) < 10:
            raise FormatError(
                f"{path}: image line '{lines[i][:60]}': expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"
            )
        try:
            vals = [float(p) for p in parts[1:8]]
        except ValueError as exc:
            raise FormatError(f"{path}: image {parts[0]}: {exc}") from exc
        out.append((int(parts[0]), np.array(vals[:4]), np.array(vals[4:]), int(parts[8]), " ".join(parts[9:])))
        i += 2  # the next line lists the 2D points (possibly empty)
    return out


def read_colmap(folder: str | Path) -> list[Camera]:
    """Cameras of a COLMAP sparse model folder (``cameras.bin`` + ``images.bin``, or the ``.txt`` pair),
    sorted by image name. Only PINHOLE and SIMPLE_PINHOLE models are accepted."""
    folder = Path(folder)
    if (folder / "cameras.bin").is_file():
        cams_path, imgs_path = folder / "cameras.bin", folder / "images.bin"
        cams = _read_colmap_cameras_bin(cams_path)
        if not imgs_path.is_file():
            raise FormatError(f"{imgs_path}: missing (a COLMAP model needs cameras.bin and images.bin)")
        images = _read_colmap_images_bin(imgs_path)
    else:
        cams_path, imgs_path = folder / "cameras.txt", folder / "images.txt"
        if not cams_path.is_file() or not imgs_path.is_file():
            raise FormatError(f"{folder}: a COLMAP model needs cameras.bin/images.bin or cameras.txt/images.txt")
        cams = _read_colmap_cameras_txt(cams_path)
        images = _read_colmap_images_txt(imgs_path)
    out = []
    for _image_id, q, t, cam_id, name in sorted(images, key=lambda rec: rec[4]):
        if cam_id not in cams:
            raise FormatError(f"{imgs_path}: image {name!r} refers to camera_id {cam_id} absent from {cams_path.name}")
        model, w, h, params = cams[cam_id]
        K = _colmap_intrinsics(f"{cams_path}: camera {cam_id}", model, params)
        if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) == 0:
            raise FormatError(f"{imgs_path}: image {name!r}: non-finite or zero qvec/tvec")
        V = np.eye(4)
        V[:3, :3], V[:3, 3] = _qvec_to_rotmat(q), t
        out.append(Camera(torch.from_numpy(V).float(), K, w, h, Path(name).stem, meta={"file": name}))
    return out


def write_colmap(cameras: list[Camera], folder: str | Path, binary: bool = True, ext: str = ".png") -> Path:
    """Write cameras as a COLMAP sparse model (one PINHOLE camera per image; no 3D points)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, cam in enumerate(cameras, 1):
        V = cam.viewmat.double().numpy()
        fx, fy, cx, cy = (float(v) for v in (cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]))
        recs.append(
            (i, _rotmat_to_qvec(V[:3, :3]), V[:3, 3], (fx, fy, cx, cy), cam, cam.meta.get("file", cam.name + ext))
        )
    if binary:
        with open(folder / "cameras.bin", "wb") as fh:
            fh.write(struct.pack("<Q", len(recs)))
            for i, _, _, params, cam, _ in recs:
                fh.write(struct.pack("<iiQQ", i, 1, cam.width, cam.height) + struct.pack("<4d", *params))
        with open(folder / "images.bin", "wb") as fh:
            fh.write(struct.pack("<Q", len(recs)))
            for i, q, t, _, _, name in recs:
                fh.write(struct.pack("<i7di", i, *q, *t, i) + name.encode() + b"\x00" + struct.pack("<Q", 0))
    else:
        (folder / "cameras.txt").write_text(
            "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
            + "".join(
                f"{i} PINHOLE {c.width} {c.height} {' '.join(repr(p) for p in params)}\n"
                for i, _, _, params, c, _ in recs
            )
        )
        (folder / "images.txt").write_text(
            "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
            + "".join(
                f"{i} {' '.join(repr(float(v)) for v in (*q, *t))} {i} {name}\n\n" for i, q, t, _, _, name in recs
            )
        )
    return folder


# ------------------------------------------------------------------------------------- transforms.json
def _image_size(folder: Path, file_path: str) -> tuple[int, int] | None:
    from PIL import Image

    base = (folder / file_path).resolve()
    for cand in [base] + [base.with_name(base.name + e) for e in (".png", ".jpg", ".jpeg")]:
        if cand.is_file():
            with Image.open(cand) as im:
                return im.size
    return None


def read_transforms_json(path: str | Path, images: str | Path | None = None, data: dict | None = None) -> list[Camera]:
    """NeRF-synthetic (``camera_angle_x``) and nerfstudio (``fl_x, fl_y, cx, cy, w, h``, possibly per
    frame) ``transforms.json``. Poses are camera-to-world in OpenGL axes and converted to OpenCV."""
    path = Path(path)
    if data is None:
        data = json.loads(path.read_text())
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FormatError(f"{path}: missing or empty field 'frames'")
    cams = []
    for i, frame in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if "file_path" not in frame:
            raise FormatError(f"{where}: missing field 'file_path'")
        if "transform_matrix" not in frame:
            raise FormatError(f"{where}: missing field 'transform_matrix'")
        field = {**data, **frame}  # per-frame intrinsics override the shared ones
        model = str(field.get("camera_model", "OPENCV")).upper()
        if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
            raise FormatError(f"{where}: unsupported camera_model '{model}' (only pinhole cameras)")
        dist = [k for k in ("k1", "k2", "k3", "k4", "p1", "p2") if abs(float(field.get(k, 0.0))) > 0]
        if dist:
            raise FormatError(f"{where}: distortion coefficient '{dist[0]}' is non-zero; undistort the images first")
        w, h = field.get("w"), field.get("h")
        if w is None or h is None:
            size = _image_size(Path(images) if images else path.parent, frame["file_path"])
            if size is None:
                raise FormatError(f"{where}: no 'w'/'h' and image {frame['file_path']!r} not found to read its size")
            w, h = size
        w, h = int(w), int(h)
        if "fl_x" in field or "fl_y" in field:
            fx = float(field.get("fl_x", field.get("fl_y")))
            fy = float(field.get("fl_y", fx))
        elif "camera_angle_x" in field:
            fx = 0.5 * w / math.tan(0.5 * float(field["camera_angle_x"]))
            fy = 0.5 * h / math.tan(0.5 * float(field["camera_angle_y"])) if "camera_angle_y" in field else fx
        else:
            raise FormatError(f"{where}: missing field 'fl_x' or 'camera_angle_x'")
        cx, cy = float(field.get("cx", w / 2)), float(field.get("cy", h / 2))
        if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
            raise FormatError(f"{where}: non-finite intrinsics")
        c2w = torch.from_numpy(_finite(where, "transform_matrix", frame["transform_matrix"], (4, 4))).float()
        c2w = c2w @ _OPENGL_TO_OPENCV  # flip the camera's y and z axes
        cams.append(
            Camera(
                torch.linalg.inv(c2w),
                _intrinsics(fx, fy, cx, cy),
                w,
                h,
                Path(frame["file_path"]).stem,
                meta={"file": frame["file_path"]},
            )
        )
    return cams


def write_transforms_json(
    cameras: list[Camera],
    path: str | Path,
    image_dir: str = "images",
    ext: str = ".png",
    per_frame_intrinsics: bool = True,
) -> Path:
    """Write a nerfstudio-style ``transforms.json`` (OpenGL axes, per-frame ``fl_x, fl_y, cx, cy, w, h``)."""
    frames = []
    for cam in cameras:
        c2w = torch.linalg.inv(cam.viewmat.double()) @ _OPENGL_TO_OPENCV.double()
        f = {"file_path": f"{image_dir}/{cam.name}{ext}", "transform_matrix": c2w.tolist()}
        if per_frame_intrinsics:
            f.update(
                fl_x=float(cam.K[0, 0]),
                fl_y=float(cam.K[1, 1]),
                cx=float(cam.K[0, 2]),
                cy=float(cam.K[1, 2]),
                w=cam.width,
                h=cam.height,
            )
        frames.append(f)
    path = Path(path)
    path.write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}, indent=1))
    return path
