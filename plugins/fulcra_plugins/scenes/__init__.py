"""Gaussian Splatting scenes: formats (PLY, cameras), the ``torch`` and ``gsplat`` backends, the
embedded synthetic scene, PCA visualisation and pruning (thesis ch. 5, app. C).

The one-call entry point is :func:`load_scene` (re-exported as ``fulcra.load_scene``)::

    scene, cameras, images = load_scene("scene/point_cloud.ply", cameras="scene/cameras.json",
                                        images="data/images")
    features, weights = fulcra.uplift(scene, ((cam, extractor(images[cam.name][None])[0]) for cam in cameras))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch

from fulcra.camera import Camera
from fulcra.errors import ConfigError, FormatError

__all__ = [
    "load_scene",
    "scene_inputs",
    "find_cameras",
    "SceneImages",
    "make_scene",
    "AUTO_BACKENDS",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".webp", ".bmp", ".tif", ".tiff")


class SceneImages(Mapping):
    """Images matched to cameras by name, loaded lazily: ``images[name]`` -> ``[3, H, W]`` float in [0, 1].

    Attributes:
        folder: where the images are.
        paths: camera name -> image file.
        missing: names of cameras without an image.
    """

    def __init__(self, folder: str | Path | None, cameras: list[Camera]):
        self.folder = Path(folder).expanduser() if folder else None
        self.paths: dict[str, Path] = {}
        self.missing: list[str] = []
        self.sizes: dict[str, tuple[int, int]] = {c.name: (c.width, c.height) for c in cameras}
        if self.folder is not None and not self.folder.is_dir():
            raise FormatError(f"{self.folder}: image folder not found")
        index: dict[str, Path] = {}
        if self.folder is not None:
            for p in sorted(self.folder.iterdir()):
                if p.suffix in IMAGE_EXTENSIONS:
                    index.setdefault(p.stem, p)
        for cam in cameras:
            found = index.get(cam.name)
            rel = cam.meta.get("file")
            if found is None and rel and self.folder is not None:
                for cand in [self.folder / rel] + [self.folder / (rel + e) for e in (".png", ".jpg")]:
                    if cand.is_file():
                        found = cand
                        break
            if found is None:
                self.missing.append(cam.name)
            else:
                self.paths[cam.name] = found

    def __getitem__(self, name: str) -> torch.Tensor:  # [3, H, W]
        if name not in self.paths:
            where = self.folder or "(no image folder given)"
            raise KeyError(f"no image for camera {name!r} in {where}")
        import numpy as np
        from PIL import Image

        path = self.paths[name]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:  # truncated, corrupt, not an image
            raise FormatError(f"{path}: not a readable image ({exc})") from exc
        size = self.sizes.get(name)
        if size is not None:
            w, h = size
            ih, iw = arr.shape[:2]
            # a camera at another resolution of the same image (3DGS's -r 2) is fine; another aspect
            # ratio means the image is not this camera's, and stretching it would misplace every feature
            if abs(iw / ih - w / h) > 0.01 * (w / h):
                raise FormatError(f"{path}: image is {iw}x{ih} but camera {name!r} is {w}x{h} (another aspect ratio)")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def size_note(self) -> str | None:
        """One line when the images (checked on the first one's header) are at another resolution
        than their cameras: they are resized to the camera's size. None when the sizes agree or
        there are no images.

        Raises:
            FormatError: the first image has another aspect ratio than its camera (every image is
                checked again when it is loaded).
        """
        if not self.paths:
            return None
        from PIL import Image

        name, path = next(iter(self.paths.items()))
        try:
            with Image.open(path) as im:
                iw, ih = im.size
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: not a readable image ({exc})") from exc
        w, h = self.sizes[name]
        if (iw, ih) == (w, h):
            return None
        if abs(iw / ih - w / h) > 0.01 * (w / h):
            raise FormatError(f"{path}: image is {iw}x{ih} but camera {name!r} is {w}x{h} (another aspect ratio)")
        return f"images are {iw}x{ih} (e.g. {path.name}), cameras {w}x{h}: images are resized to the camera size"

    def verify(self) -> None:
        """Check every image file without decoding its pixels (PIL's ``verify``: structure and
        checksums, which catches truncated and corrupt PNGs); raises a FormatError naming the file."""
        from PIL import Image

        for path in self.paths.values():
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as exc:  # PIL raises several types on damaged files
                raise FormatError(f"{path}: not a readable image ({exc})") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def find_cameras(ply: Path) -> Path | None:
    """Look for the cameras of a PLY where 3DGS, nerfstudio and COLMAP put them (beside it or above)."""
    for folder in (ply.parent, ply.parent.parent, ply.parent.parent.parent):
        for name in ("cameras.json", "transforms.json", "transforms_train.json"):
            if (folder / name).is_file():
                return folder / name
        for sub in ("sparse/0", "sparse"):
            if (folder / sub / "cameras.bin").is_file() or (folder / sub / "cameras.txt").is_file():
                return folder / sub
    return None


def _default_images(cameras_path: Path) -> Path | None:
    base = cameras_path if cameras_path.is_dir() else cameras_path.parent
    for folder in (base, base.parent, base.parent.parent):
        if (folder / "images").is_dir():
            return folder / "images"
    # a 3DGS output folder records its dataset in cfg_args, a Namespace(...) repr: read it with a
    # regular expression, never by evaluating it
    import re

    cfg = base / "cfg_args"
    if cfg.is_file():
        text = cfg.read_text(errors="replace")
        src = re.search(r"source_path='([^']*)'", text)
        sub = re.search(r"images='([^']*)'", text)
        if src and (Path(src.group(1)) / (sub.group(1) if sub else "images")).is_dir():
            return Path(src.group(1)) / (sub.group(1) if sub else "images")
    return None


#: ``backend=auto``: the scenes plugins tried in order, by device type (the first that builds wins)
AUTO_BACKENDS = {"cuda": ("gsplat", "torch"), "cpu": ("torch",)}


def make_scene(backend: str = "auto", ply: str | Path = "", device: str | torch.device | None = "auto", **options):
    """Build a scenes plugin by name through the registry: ``fulcra.create("scenes", backend, ply=..., device=...)``.

    ``backend="auto"`` tries the names of :data:`AUTO_BACKENDS` for the device (``gsplat`` on CUDA
    when it is installed, else ``torch``); any other name is any installed ``scenes`` plugin, bundled
    or third-party, validated by the registry like every plugin.
    """
    import fulcra
    from fulcra.engine import select_device
    from fulcra.errors import MissingDependencyError

    dev = select_device(device)
    if backend != "auto":
        return fulcra.create("scenes", backend, ply=str(ply), device=str(dev), **options)
    names = AUTO_BACKENDS.get(dev.type, ("torch",))
    for name in names[:-1]:
        try:
            return fulcra.create("scenes", name, ply=str(ply), device=str(dev), **options)
        except MissingDependencyError:  # e.g. gsplat not installed: the next name
            continue
    return fulcra.create("scenes", names[-1], ply=str(ply), device=str(dev), **options)


def load_scene(
    ply: str | Path,
    cameras: str | Path | None = None,
    images: str | Path | None = None,
    backend: str = "auto",
    device: str | torch.device | None = "auto",
):
    """Load a trained 3DGS scene with its cameras and images.

    Args:
        ply: the 3DGS ``point_cloud.ply``.
        cameras: ``cameras.json``, a COLMAP sparse folder or ``transforms.json``; default: searched
            beside the PLY and up to three folders above.
        images: the image folder; default: ``images/`` beside the cameras (when it exists).
        backend: ``auto`` (gsplat on CUDA when installed, else torch), ``torch``, ``gsplat`` or any
            installed ``scenes`` plugin (built by :func:`make_scene` through the registry).
        device: ``auto``, ``cpu``, ``cuda``.
    Returns:
        ``(scene, cameras, images)``: the scene plugin, a list of :class:`fulcra.camera.Camera`, and a
        :class:`SceneImages` mapping camera name -> ``[3, H, W]`` float image (empty without images).
    """
    cams, imgs = scene_inputs(ply, cameras, images)
    scene = make_scene(backend, Path(ply).expanduser(), device)
    return scene, cams, imgs


def scene_inputs(
    ply: str | Path, cameras: str | Path | None = None, images: str | Path | None = None
) -> tuple[list[Camera], SceneImages]:
    """Everything of a scene but the scene itself, checked: the PLY exists (and, for a binary PLY, its
    header agrees with the file's size), the cameras load and pass :func:`~.cameras.check_cameras`,
    the image folder exists. Cheap (reads no Gaussian data): workflows call it before writing.

    Returns ``(cameras, images)`` as :func:`load_scene` does.
    """
    from .cameras import load_cameras
    from .ply import check_ply_header

    ply = Path(ply).expanduser()
    if not ply.is_file():
        raise FormatError(f"{ply}: no such PLY file")
    if ply.suffix.lower() == ".ply":
        check_ply_header(ply)
    cam_path = Path(cameras).expanduser() if cameras else find_cameras(ply)
    if cam_path is None:
        raise ConfigError(
            f"no cameras found near {ply}; pass cameras= (cameras.json, a COLMAP folder or transforms.json)"
        )
    if images is None:
        images = _default_images(cam_path)
    cams = load_cameras(cam_path, images)
    return cams, SceneImages(images, cams)
