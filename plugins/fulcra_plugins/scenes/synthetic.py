"""The embedded default scene: a procedurally generated 3D Gaussian Splatting scene.

Four textured objects (a striped red sphere, a checkered blue cube, a green cylinder shaded along
its height, a speckled yellow cone) stand on a checkered ground plane. Each object is made of flat
Gaussians lying on its surface. Cameras: a 360-degree ring around the scene and a forward-facing set
(a small grid of parallel views, LLFF-like). Ground truth: a per-Gaussian object label, and the
rendered per-pixel label masks. Everything is written in the standard formats (``point_cloud.ply``,
``cameras.json``, ``images/*.png``), so demos and tests take the same loading path as real scenes.
Deterministic for a seed.

Folder layout written by :func:`generate_scene`::

    point_cloud.ply          3DGS PLY (degree-0 SH colours)
    cameras.json             3DGS camera list (OpenCV axes)
    images/<camera>.png      rendered RGB, the "training images"
    masks/<camera>.png       per-pixel object label (0 = ground, 1.. objects, 255 = empty)
    labels.safetensors       "labels" [N] int64, in PLY order
    scene.json               object names, camera groups, seed, sizes
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from fulcra.camera import Camera

from .cameras import write_cameras_json
from .gaussians import Gaussians, rgb_to_sh

__all__ = [
    "synthetic_ply",
    "generate_scene",
    "ensure_synthetic_scene",
    "build_gaussians",
    "build_cameras",
    "look_at",
    "OBJECTS",
    "TWIN_OBJECTS",
]

OBJECTS = ["ground", "red_sphere", "blue_cube", "green_cylinder", "yellow_cone"]
#: ``layout="twins"``: two identical speckled red spheres, 1.8 apart, on the same ground
TWIN_OBJECTS = ["ground", "sphere_left", "sphere_right"]
_VERSION = 1


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """World-to-camera ``[4, 4]`` of a camera at ``eye`` looking at ``target`` (OpenCV axes, world ``up``)."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    f = target - eye
    f = f / f.norm()
    r = torch.linalg.cross(f, up)
    r = r / r.norm()
    d = torch.linalg.cross(f, r)  # camera y points down
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = torch.stack([r, d, f])
    V[:3, 3] = -V[:3, :3] @ eye
    return V.float()


def _disc_quats(normals: torch.Tensor) -> torch.Tensor:
    """Quaternions (w, x, y, z) turning the z axis onto ``normals [M, 3]`` (flat Gaussians' thin axis)."""
    n = normals / normals.norm(dim=1, keepdim=True)
    n = torch.where(n[:, 2:3] < 0, -n, n)  # a disc is symmetric: avoid the antipodal singularity
    q = torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], 1)
    return q / q.norm(dim=1, keepdim=True)


def build_gaussians(seed: int = 0, density: float = 1.0, layout: str = "default") -> tuple[Gaussians, torch.Tensor]:
    """The scene's Gaussians and their object labels ``[N]`` (indices into :data:`OBJECTS`, or
    :data:`TWIN_OBJECTS` for ``layout="twins"``).

    Args:
        seed: random seed (positions jitter, textures).
        density: multiplies the number of Gaussians (1.0: about 17,000).
        layout: ``default`` (four different objects) or ``twins`` (two identical objects: features
            cannot tell them apart, only 3D geometry can).
    """
    if layout not in ("default", "twins"):
        raise ValueError(f"synthetic scene: layout must be default or twins, got {layout!r}")
    g = torch.Generator().manual_seed(seed)
    parts = []  # (points, normals, colours, area per point, label)

    def rnd(*shape):
        return torch.rand(*shape, generator=g)

    # ground: a jittered grid on z = 0, 3x3 checkerboard of two greys per unit square
    side = int(round(64 * math.sqrt(density)))
    u = (torch.arange(side) + 0.5) / side * 5.0 - 2.5
    gx, gy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten(), torch.zeros(side * side)], 1)
    pts[:, :2] += (rnd(side * side, 2) - 0.5) * (5.0 / side) * 0.5
    check = ((torch.floor(pts[:, 0] * 1.5) + torch.floor(pts[:, 1] * 1.5)) % 2)[:, None]
    col = 0.35 + 0.3 * check + 0.03 * rnd(len(pts), 1)
    parts.append(
        (
            pts,
            torch.tensor([[0.0, 0.0, 1.0]]).expand(len(pts), 3),
            col.expand(-1, 3) * torch.tensor([1.0, 0.97, 0.9]),
            25.0 / len(pts),
            0,
        )
    )

    def count(area):
        return int(area * 1100 * density)

    if layout == "twins":
        for label, cx in ((1, -0.9), (2, 0.9)):
            c, r = torch.tensor([cx, 0.0, 0.5]), 0.5
            m = count(4 * math.pi * r * r)
            d = torch.randn(m, 3, generator=g)
            d = d / d.norm(dim=1, keepdim=True)
            speck = (rnd(m, 1) < 0.1).float()
            col = torch.tensor([0.85, 0.12, 0.1]) * (1 - speck) + torch.tensor([0.95, 0.7, 0.6]) * speck
            parts.append((c + r * d, d, col, 4 * math.pi * r * r / m, label))
        return _assemble(parts, rnd)

    # red sphere with latitude stripes
    c, r = torch.tensor([-0.9, -0.5, 0.55]), 0.55
    m = count(4 * math.pi * r * r)
    d = torch.randn(m, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    stripe = (torch.floor((d[:, 2] + 1) * 4) % 2)[:, None]
    col = torch.tensor([0.85, 0.1, 0.1]) * (1 - 0.45 * stripe) + torch.tensor([0.1, 0.1, 0.1]) * stripe
    parts.append((c + r * d, d, col, 4 * math.pi * r * r / m, 1))

    # blue cube with a checker on its faces
    c, h = torch.tensor([0.9, -0.6, 0.42]), 0.42
    m_face = count(4 * h * h)
    pts, nrm = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = (rnd(m_face, 3) * 2 - 1) * h
            p[:, axis] = sign * h
            n = torch.zeros(m_face, 3)
            n[:, axis] = sign
            pts.append(p)
            nrm.append(n)
    p, n = torch.cat(pts), torch.cat(nrm)
    check = ((torch.floor(p[:, 0] / h * 2) + torch.floor(p[:, 1] / h * 2) + torch.floor(p[:, 2] / h * 2)) % 2)[:, None]
    col = torch.tensor([0.15, 0.3, 0.9]) * (1 - check) + torch.tensor([0.55, 0.75, 1.0]) * check
    parts.append((c + p, n, col, 4 * h * h / m_face, 2))

    # green cylinder, shaded along its height, with a cap
    c, r, hgt = torch.tensor([0.1, 0.9, 0.0]), 0.32, 1.0
    m = count(2 * math.pi * r * hgt)
    th, zz = rnd(m) * 2 * math.pi, rnd(m) * hgt
    n = torch.stack([torch.cos(th), torch.sin(th), torch.zeros(m)], 1)
    p = n * r + torch.stack([torch.zeros(m), torch.zeros(m), zz], 1)
    mc = count(math.pi * r * r)
    rr, tc = r * torch.sqrt(rnd(mc)), rnd(mc) * 2 * math.pi
    pc = torch.stack([rr * torch.cos(tc), rr * torch.sin(tc), torch.full((mc,), hgt)], 1)
    p, n = torch.cat([p, pc]), torch.cat([n, torch.tensor([[0.0, 0.0, 1.0]]).expand(mc, 3)])
    shade = p[:, 2:3] / hgt
    col = torch.tensor([0.05, 0.35, 0.08]) + shade * torch.tensor([0.35, 0.55, 0.3])
    parts.append((c + p, n, col, 2 * math.pi * r * r * (hgt / r + 0.5) / (m + mc), 3))

    # speckled yellow cone
    c, r, hgt = torch.tensor([-0.9, 0.95, 0.0]), 0.4, 0.85
    slant = math.sqrt(r * r + hgt * hgt)
    m = count(math.pi * r * slant)
    t, th = torch.sqrt(rnd(m)), rnd(m) * 2 * math.pi  # sqrt: uniform over the lateral surface
    rad = r * t
    p = torch.stack([rad * torch.cos(th), rad * torch.sin(th), hgt * (1 - t)], 1)
    n = torch.stack([torch.cos(th) * hgt / slant, torch.sin(th) * hgt / slant, torch.full((m,), r / slant)], 1)
    speck = (rnd(m, 1) < 0.15).float()
    col = torch.tensor([0.95, 0.8, 0.1]) * (1 - speck) + torch.tensor([0.5, 0.25, 0.05]) * speck
    parts.append((c + p, n, col, math.pi * r * slant / m, 4))

    return _assemble(parts, rnd)


def _assemble(parts, rnd) -> tuple[Gaussians, torch.Tensor]:
    """Flat, slightly overlapping discs on the parts' surfaces: ``(points, normals, colours, area per
    point, label)`` each."""
    means, quats, scales, colors, labels = [], [], [], [], []
    for p, n, col, area, label in parts:
        k = len(p)
        s = math.sqrt(area) * 0.6  # neighbouring discs overlap so surfaces look closed
        sc = torch.full((k, 3), s) * (0.8 + 0.4 * rnd(k, 1))
        sc[:, 2] = s * 0.08  # flat along the normal
        means.append(p)
        quats.append(_disc_quats(n))
        scales.append(sc)
        colors.append(col.clamp(0, 1))
        labels.append(torch.full((k,), label, dtype=torch.long))
    colors_t = torch.cat(colors)
    n_all = len(colors_t)
    gauss = Gaussians(
        means=torch.cat(means).float(),
        quats=torch.cat(quats).float(),
        scales=torch.cat(scales).float(),
        opacities=(0.85 + 0.12 * rnd(n_all)).float(),
        sh0=rgb_to_sh(colors_t).float(),
    )
    return gauss, torch.cat(labels)


def build_cameras(
    width: int = 160, height: int = 120, n_ring: int = 12, n_forward: int = 6, fov_deg: float = 55.0
) -> list[Camera]:
    """A 360-degree ring (``ring_000``...) and a forward-facing grid (``front_000``...) of pinhole cameras."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    target = (0.0, 0.0, 0.35)
    cams = []
    for i in range(n_ring):
        a = 2 * math.pi * i / n_ring
        eye = (4.2 * math.cos(a), 4.2 * math.sin(a), 2.0 + 0.3 * math.sin(3 * a))
        cams.append(Camera(look_at(eye, target), K, width, height, f"ring_{i:03d}"))
    cols = max(1, math.ceil(n_forward / 2))
    for i in range(n_forward):
        dx = (i % cols - (cols - 1) / 2) * 0.35
        dz = (i // cols - 0.5) * 0.3
        eye = (dx, -4.4, 1.6 + dz)
        # parallel viewing directions, as in forward-facing (LLFF) captures
        cams.append(Camera(look_at(eye, (dx, 0.0, 0.35 + dz)), K, width, height, f"front_{i:03d}"))
    return cams


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def generate_scene(
    out_dir: str | Path,
    seed: int = 0,
    width: int = 160,
    height: int = 120,
    n_ring: int = 12,
    n_forward: int = 6,
    density: float = 1.0,
    layout: str = "default",
) -> Path:
    """Generate the synthetic scene into ``out_dir`` (written to a temporary folder, then renamed).

    Returns:
        ``out_dir``, holding the layout described in the module docstring.
    """
    from safetensors.torch import save_file

    from .ply import write_ply
    from .torch_backend import TorchScene

    out_dir = Path(out_dir)
    gauss, labels = build_gaussians(seed, density, layout)
    objects = TWIN_OBJECTS if layout == "twins" else OBJECTS
    cams = build_cameras(width, height, n_ring, n_forward)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        write_ply(gauss, tmp / "point_cloud.ply")
        write_cameras_json(cams, tmp / "cameras.json")
        save_file({"labels": labels}, str(tmp / "labels.safetensors"))
        scene = TorchScene.from_gaussians(gauss, device="cpu")
        onehot = torch.nn.functional.one_hot(labels, len(objects)).float()
        for cam in cams:
            rgb = scene.render_rgb(cam).clamp(0, 1)
            _save_png((rgb * 255 + 0.5).to(torch.uint8).numpy(), tmp / "images" / f"{cam.name}.png")
            lab = scene.render(onehot, cam)
            mask = torch.where(lab.sum(-1) > 0.5, lab.argmax(-1), torch.full(lab.shape[:2], 255))
            _save_png(mask.to(torch.uint8).numpy(), tmp / "masks" / f"{cam.name}.png")
        meta = {
            "version": _VERSION,
            "seed": seed,
            "objects": objects,
            "layout": layout,
            "num_gaussians": len(gauss),
            "width": width,
            "height": height,
            "density": density,
            "cameras": {
                "ring": [c.name for c in cams if c.name.startswith("ring")],
                "forward": [c.name for c in cams if c.name.startswith("front")],
            },
        }
        (tmp / "scene.json").write_text(json.dumps(meta, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_synthetic_scene(root: str | Path | None = None, seed: int = 0, **options) -> Path:
    """The synthetic scene for these settings, generated on first use and reused afterwards.

    Args:
        root: folder to keep it in; default ``$FULCRA_CACHE/scenes`` or ``~/.cache/fulcra/scenes``.
        seed, options: as :func:`generate_scene`.
    Returns:
        the scene folder (``root/synthetic-<hash of the settings>``).
    """
    if root is None:
        root = Path(os.environ.get("FULCRA_CACHE", Path.home() / ".cache" / "fulcra")) / "scenes"
    key = json.dumps({"v": _VERSION, "seed": seed, **options}, sort_keys=True)
    folder = Path(root) / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if not (folder / "scene.json").is_file():
        generate_scene(folder, seed=seed, **options)
    return folder


def synthetic_ply(density: float = 0.05, seed: int = 0, root: str | Path | None = None) -> Path:
    """Only the Gaussians of the synthetic scene, as an INRIA 3DGS PLY (no images; cheap), generated on
    first use. What the bundled scene plugins' ``conformance_params`` build from.

    Args:
        density: as :func:`build_gaussians` (0.05: a few hundred Gaussians).
        root: as :func:`ensure_synthetic_scene`.
    Returns:
        ``root/synthetic-gaussians-<hash>.ply``.
    """
    from .ply import write_ply

    if root is None:
        root = Path(os.environ.get("FULCRA_CACHE", Path.home() / ".cache" / "fulcra")) / "scenes"
    key = json.dumps({"v": _VERSION, "seed": seed, "density": density}, sort_keys=True)
    path = Path(root) / f"synthetic-gaussians-{hashlib.sha1(key.encode()).hexdigest()[:10]}.ply"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".ply", dir=path.parent)
        os.close(fd)
        try:
            write_ply(build_gaussians(seed, density)[0], tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path
