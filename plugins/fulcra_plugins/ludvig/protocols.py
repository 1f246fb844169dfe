"""Evaluation protocols of the datasets the thesis reports, read from their published layouts.

- **NVOS** (Ren et al. 2022, on LLFF scenes), as distributed for SA3D/LUDVIG::

      <root>/reference_image/<scene>/<image>.(JPG|png)   the reference view (its stem names the camera)
      <root>/scribbles/<scene>/*pos*.png                positive scribbles on it (*neg*.png: negatives)
      <root>/masks/<scene>/<image>.(JPG|png)            the target view
      <root>/masks/<scene>/<image>_mask.png             its ground-truth mask

- **SPIn-NeRF** (Mirzaei et al. 2023): ``<root>/<scene>/<image>.png`` masks for every labelled frame
  (``*_cutout*``/``*_pseudo*`` variants and JSON files are ignored); the first frame's mask is the
  reference, all frames are targets. Masks are matched to cameras by stem, else as the official code
  does (sorted order, orchids skipping its 15th camera; truck/lego by the name after ``_``).

- **LERF** as extended by LangSplat (``lerf_ovs/label``): ``<root>/<scene>/frame_XXXXX.json`` with
  ``{"info": {"name", "width", "height"}, "objects": [{"category", "bbox": [x1, y1, x2, y2],
  "segmentation": [[x, y], ...]}]}``; a query's target is the union of its objects.

Each reader returns plain data (:class:`SegmentationCase`, :class:`LocalisationCase`); the
``evaluate_*`` functions take a ``predict`` callable, so any method can be scored, and return the
per-scene numbers that :func:`~.metrics.results_table` lays out like Tables 5.1-5.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fulcra.errors import FormatError

from .metrics import iou, localisation_hit

__all__ = [
    "SegmentationCase",
    "LocalisationQuery",
    "LocalisationCase",
    "read_nvos",
    "read_spinnerf",
    "spinnerf_camera_names",
    "read_lerf",
    "evaluate_segmentation",
    "evaluate_localisation",
    "evaluate_lerf_segmentation",
]

_IMG = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


def _mask(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if size is not None and im.size != size:
                im = im.resize(size, Image.NEAREST)
            arr = np.asarray(im)
    except OSError as exc:
        raise FormatError(f"{path}: unreadable mask image ({exc})") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].max(-1)
    return torch.from_numpy(arr > (arr.max() / 2 if arr.max() > 1 else 0))


@dataclass
class SegmentationCase:
    """One scene of a multi-view segmentation benchmark.

    Attributes:
        scene: scene name.
        reference: the reference camera (image stem).
        positive: ``[H, W]`` bool scribbles or reference mask on it.
        negative: ``[H, W]`` bool negative scribbles (NVOS), or None.
        kind: ``scribble`` (NVOS) or ``mask`` (SPIn-NeRF).
        targets: camera name -> ``[H, W]`` bool ground-truth mask.
    """

    scene: str
    reference: str
    positive: torch.Tensor
    kind: str
    targets: dict = field(default_factory=dict)
    negative: torch.Tensor | None = None


def _scenes(root: Path, sub: str = "") -> list[str]:
    base = root / sub if sub else root
    if not base.is_dir():
        raise FormatError(f"{base}: folder not found")
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def read_nvos(root: str | Path, scenes: list[str] | None = None) -> list[SegmentationCase]:
    """Read the NVOS layout (see module docstring). Raises :class:`FormatError` naming a missing file."""
    root = Path(root).expanduser()
    cases = []
    for scene in scenes or _scenes(root, "masks"):
        ref_dir, scr_dir, mask_dir = (
            root / "reference_image" / scene,
            root / "scribbles" / scene,
            root / "masks" / scene,
        )
        for d in (ref_dir, scr_dir, mask_dir):
            if not d.is_dir():
                raise FormatError(f"{d}: NVOS folder missing for scene {scene!r}")
        refs = [p for p in sorted(ref_dir.iterdir()) if p.suffix in _IMG]
        if not refs:
            raise FormatError(f"{ref_dir}: no reference image")
        pos = [p for p in sorted(scr_dir.iterdir()) if "pos" in p.name and p.suffix in _IMG]
        neg = [p for p in sorted(scr_dir.iterdir()) if "neg" in p.name and p.suffix in _IMG]
        if not pos:
            raise FormatError(f"{scr_dir}: no positive scribble (a *pos*.png file)")
        positive = torch.stack([_mask(p) for p in pos]).any(0)
        negative = torch.stack([_mask(p, positive.shape[::-1]) for p in neg]).any(0) if neg else None
        targets = {}
        for p in sorted(mask_dir.iterdir()):
            if p.suffix in _IMG and not p.stem.endswith("_mask"):
                gt = mask_dir / f"{p.stem}_mask.png"
                if not gt.is_file():
                    raise FormatError(f"{gt}: ground-truth mask of target {p.name} missing")
                targets[p.stem] = _mask(gt)
        if not targets:
            raise FormatError(f"{mask_dir}: no target image with a *_mask.png")
        cases.append(SegmentationCase(scene, refs[0].stem, positive, "scribble", targets, negative))
    return cases


def spinnerf_camera_names(scene: str, masks: list[str], cameras: list[str]) -> list[str]:
    """The camera of each SPIn-NeRF mask (file names in sorted order), as the official evaluation pairs
    them (``utils/data.py``, ``spinnerf_paths``), unless every mask's stem already is a camera name:

    - ``truck`` / ``lego`` scenes: the mask ``<prefix>_<name>.<ext>`` belongs to camera ``<name>``;
    - otherwise the sorted camera names, in order, with ``orchids`` skipping its 15th camera (index
      14, a frame without a mask).

    Raises :class:`FormatError` when there are more masks than cameras to pair them with."""
    stems = [Path(m).stem for m in masks]
    if all(s in cameras for s in stems):
        return stems
    if "truck" in scene or "lego" in scene:
        names = [m.split("_")[1].split(".")[0] if "_" in m else Path(m).stem for m in masks]
        missing = [n for n in names if n not in cameras]
        if missing:
            raise FormatError(f"{scene}: SPIn-NeRF mask names map to no camera: {', '.join(missing[:5])}")
        return names
    cams = sorted(cameras)
    if "orchids" in scene:
        cams = cams[:14] + cams[15:]
    if len(cams) < len(masks):
        raise FormatError(
            f"{scene}: {len(masks)} SPIn-NeRF masks but only {len(cams)} cameras to pair them with in sorted order"
        )
    return cams[: len(masks)]


def read_spinnerf(
    root: str | Path, scenes: list[str] | None = None, cameras: dict[str, list[str]] | None = None
) -> list[SegmentationCase]:
    """Read SPIn-NeRF masks: the first frame's mask is the reference, every frame is a target.

    Args:
        cameras: optional scene -> camera names; masks are paired with cameras by
            :func:`spinnerf_camera_names` (by stem when they match, else the official rule: sorted
            order with the orchids skip, or the truck/lego file-name mapping). Without it, masks are
            named by their stems.
    """
    root = Path(root).expanduser()
    cases = []
    for scene in scenes or _scenes(root):
        d = root / scene
        if not d.is_dir():
            raise FormatError(f"{d}: SPIn-NeRF mask folder of scene {scene!r} not found")
        files = [
            p for p in sorted(d.iterdir()) if p.suffix in _IMG and "_cutout" not in p.stem and "_pseudo" not in p.stem
        ]
        if not files:
            raise FormatError(f"{d}: no SPIn-NeRF mask")
        names = [p.stem for p in files]
        if cameras and cameras.get(scene):
            names = spinnerf_camera_names(scene, [p.name for p in files], list(cameras[scene]))
        targets = {n: _mask(p) for n, p in zip(names, files)}
        cases.append(SegmentationCase(scene, names[0], targets[names[0]], "mask", targets))
    return cases


@dataclass
class LocalisationQuery:
    """A text query on one image: its boxes and the union of its polygons (a ``[H, W]`` mask)."""

    text: str
    boxes: list
    mask: torch.Tensor


@dataclass
class LocalisationCase:
    """One annotated frame of the LERF/LangSplat evaluation."""

    scene: str
    image: str  # camera name (image stem)
    width: int
    height: int
    queries: list


def read_lerf(root: str | Path, scenes: list[str] | None = None) -> list[LocalisationCase]:
    """Read LangSplat's extended LERF labels (``lerf_ovs/label``)."""
    from PIL import Image, ImageDraw

    root = Path(root).expanduser()
    out = []
    for scene in scenes or _scenes(root):
        files = sorted((root / scene).glob("*.json"))
        if not files:
            raise FormatError(f"{root / scene}: no frame_*.json annotation")
        for f in files:
            try:
                data = json.loads(f.read_text())
                info = data["info"]
                w, h = int(info["width"]), int(info["height"])
                name = Path(info.get("name", f.stem)).stem
                objs = data["objects"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise FormatError(f"{f}: malformed LERF annotation ({type(exc).__name__}: {exc})") from exc
            by_cat: dict = {}
            for i, o in enumerate(objs):
                if "category" not in o or "bbox" not in o:
                    raise FormatError(f"{f}: objects[{i}] lacks 'category' or 'bbox'")
                q = by_cat.setdefault(o["category"], {"boxes": [], "mask": Image.new("L", (w, h), 0)})
                q["boxes"].append([float(v) for v in o["bbox"]])
                poly = o.get("segmentation") or []
                if len(poly) >= 3:
                    ImageDraw.Draw(q["mask"]).polygon([tuple(map(float, p)) for p in poly], fill=1)
                else:
                    x1, y1, x2, y2 = q["boxes"][-1]
                    ImageDraw.Draw(q["mask"]).rectangle([x1, y1, x2, y2], fill=1)
            queries = [
                LocalisationQuery(t, v["boxes"], torch.from_numpy(np.asarray(v["mask"]) > 0)) for t, v in by_cat.items()
            ]
            out.append(LocalisationCase(scene, name, w, h, queries))
    return out


def evaluate_segmentation(
    cases: list[SegmentationCase],
    predict: Callable[[SegmentationCase, str], torch.Tensor],
    include_reference: bool = False,
) -> dict:
    """IoU per scene: ``predict(case, camera_name) -> [H, W] bool`` for every target (resized nearest).

    Returns ``{scene: {"iou": mean over targets, "n": count}}``.
    """
    res = {}
    for case in cases:
        vals = []
        for name, gt in case.targets.items():
            if name == case.reference and not include_reference:
                continue
            pred = torch.as_tensor(predict(case, name)).bool()
            if pred.shape != gt.shape:
                pred = (
                    torch.nn.functional.interpolate(pred[None, None].float(), size=gt.shape, mode="nearest")[0, 0] > 0.5
                )
            vals.append(iou(pred, gt))
        res[case.scene] = {"iou": float(np.mean(vals)) if vals else float("nan"), "n": len(vals)}
    return res


def evaluate_localisation(
    cases: list[LocalisationCase], locate: Callable[[LocalisationCase, list[str]], torch.Tensor]
) -> dict:
    """Localisation accuracy per scene: ``locate(case, texts) -> [Q, 2]`` (x, y) pixels; a hit is a
    point inside one of the query's boxes. Returns ``{scene: {"accuracy", "n"}}``."""
    hits: dict = {}
    for case in cases:
        texts = [q.text for q in case.queries]
        pts = torch.as_tensor(locate(case, texts)).reshape(len(texts), 2)
        for q, p in zip(case.queries, pts.tolist()):
            hits.setdefault(case.scene, []).append(localisation_hit(p, q.boxes))
    return {s: {"accuracy": float(np.mean(h)), "n": len(h)} for s, h in hits.items()}


def evaluate_lerf_segmentation(
    cases: list[LocalisationCase], segment: Callable[[LocalisationCase, list[str]], torch.Tensor]
) -> dict:
    """LERF segmentation IoU per scene: ``segment(case, texts) -> [Q, H, W]`` bool against the polygons."""
    vals: dict = {}
    for case in cases:
        texts = [q.text for q in case.queries]
        masks = torch.as_tensor(segment(case, texts)).bool()
        for q, m in zip(case.queries, masks):
            vals.setdefault(case.scene, []).append(iou(m, q.mask))
    return {s: {"iou": float(np.mean(v)), "n": len(v)} for s, v in vals.items()}
