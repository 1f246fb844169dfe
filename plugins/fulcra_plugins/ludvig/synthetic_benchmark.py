"""The embedded synthetic scene as a segmentation benchmark with ground truth (Table 5.2 ablation).

For every object of the scene: a scribble on a reference view (a cross drawn inside the object's
eroded ground-truth mask on the view where it looks largest), then three routes:

- ``single_view``: each view's own 2D features scored against the reference scribble's mean feature,
  Otsu per view; its 3D mask is the uplift of these per-view masks (a Gaussian is selected when its
  weighted vote exceeds 0.5);
- ``uplift``: the same score on the uplifted per-Gaussian features (C.1.2), Otsu in 3D;
- ``uplift_diffusion``: the uplifted scribble refined by graph diffusion (C.1.3); the 3D mask is
  ``h > 0``, the reached Gaussians (τ = 0 as for diffused scores in C.1.4).

Reported per object and on average: ``iou3d`` (the 3D mask against the per-Gaussian labels) and
``iou2d`` (the rendered 3D mask — the per-view masks for ``single_view`` — against the rendered label
masks, averaged over the evaluation views).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .metrics import iou, results_table
from .segmentation import (
    binarise_3d,
    build_refiner,
    render_scores,
    segment_diffusion,
    segment_single_view,
    segment_uplift,
)

__all__ = ["scribble_from_mask", "run_synthetic_benchmark", "VARIANTS"]

VARIANTS = ("single_view", "uplift", "uplift_diffusion")


def scribble_from_mask(mask: torch.Tensor, erode: int = 2, thickness: int = 1) -> torch.Tensor:
    """A cross-shaped scribble inside a boolean mask ``[H, W]``: the row and column through the
    centroid of the eroded mask, restricted to it (what a user draws across an object)."""
    from scipy.ndimage import binary_erosion

    m = mask.cpu().numpy().astype(bool)
    e = binary_erosion(m, iterations=erode) if erode > 0 else m
    if not e.any():
        e = m
    ys, xs = np.nonzero(e)
    cy, cx = int(np.round(ys.mean())), int(np.round(xs.mean()))
    s = np.zeros_like(m)
    s[max(cy - thickness + 1, 0) : cy + thickness, :] = True
    s[:, max(cx - thickness + 1, 0) : cx + thickness] = True
    s &= e
    if not s.any():  # a non-convex shape whose centroid falls outside it
        s[ys[len(ys) // 2], xs[len(xs) // 2]] = True
    return torch.from_numpy(s)


def run_synthetic_benchmark(
    scene,
    cameras,
    images,
    labels: torch.Tensor,
    gt_masks: dict,
    extractor,
    objects: list[str],
    out: Path,
    refiner=None,
    eval_views: int = 6,
    log: Callable[[str], None] = print,
    uplifted=None,
    center: bool = True,
) -> dict:
    """Run the benchmark; write ``results.json``, ``results.md`` and scribble PNGs under ``out``.

    Args:
        scene, cameras, images: as :func:`fulcra_plugins.scenes.load_scene` returns them (any scene plugin).
        labels: ``[N]`` per-Gaussian object label (0 = ground).
        gt_masks: camera name -> ``[H, W]`` long label image (255 = empty).
        extractor: a feature extractor plugin (2D maps of every view).
        objects: object names by label index.
        refiner: any refiners plugin, an instance or a name (default ``graph_diffusion``); only its
            ``refine`` is called.
        uplifted: the :class:`~.lifting.Uplifted` of the views (computed here, with ``center``, when None).

    Returns:
        ``{"per_object": {name: {variant_iou3d: ..., variant_iou2d: ...}}, "mean": {...}, ...}``.
    """
    import fulcra

    from .lifting import extract_map, scene_device, uplift_views

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dev = scene_device(scene)
    views = [c for c in cameras if c.name in images]
    if uplifted is None:
        uplifted = uplift_views(scene, views, images, extractor, out=None, center=center)
    features, weights = uplifted.features, uplifted.weights
    # the single-view route compares 2D maps centred like the uplifted features (the same mean); a
    # caching extractor reads them back from its cache
    mu = uplifted.mean.to(dev)[:, None, None]
    maps = {cam.name: extract_map(extractor, images[cam.name], cam, dev) - mu for cam in views}  # [D, H, W]
    log(f"uplifted {len(views)} views in {time.time() - t0:.1f}s")
    refiner = build_refiner(refiner)
    labels = labels.to(features.device)
    step = max(1, len(views) // max(eval_views, 1))
    ev = views[::step][:eval_views]
    per_object: dict = {}
    masks3d: dict = {}
    sv_views: dict = {}
    ids = [i for i in range(1, len(objects)) if bool((labels == i).any())]
    for o in ids:
        name = objects[o]
        # reference view: where the object covers the most pixels
        ref = max(views, key=lambda c: int((gt_masks[c.name] == o).sum()))
        prompt = scribble_from_mask(gt_masks[ref.name] == o)
        _save_png(prompt, out / "scribbles" / f"{name}_{ref.name}.png")
        t = time.time()
        sv = segment_single_view(maps[ref.name], prompt, [maps[c.name] for c in views])
        sv_views[o] = dict(zip([c.name for c in views], sv))
        up = segment_uplift(scene, features, ref, prompt)
        dif = segment_diffusion(scene, features, ref, prompt, "scribble", refiner, weights)
        masks3d[(o, "uplift")] = binarise_3d(up.scores)
        # h > 0: the reached nodes where P > 0 (tau = 0, as C.1.4 for diffused scores)
        masks3d[(o, "uplift_diffusion")] = binarise_3d(dif.scores, 0.0)
        per_object[name] = {"reference_view": ref.name, "seconds": round(time.time() - t, 2)}
        log(f"{name}: reference {ref.name}, {int(prompt.sum())} scribble pixels ({time.time() - t:.1f}s)")
    # single view in 3D: one uplift of every object's per-view masks (objects as channels)
    if ids:
        stacked = ((c, torch.stack([sv_views[o][c.name].float() for o in ids])) for c in views)
        votes, _ = fulcra.uplift(scene, stacked)
        for j, o in enumerate(ids):
            masks3d[(o, "single_view")] = votes[:, j] > 0.5
    # 2D evaluation: render every 3D mask on the evaluation views at once
    keys = [(o, v) for o in ids for v in ("uplift", "uplift_diffusion")]
    iou2d = {k: [] for k in [(o, v) for o in ids for v in VARIANTS]}
    if keys:
        stack = torch.stack([masks3d[k].float() for k in keys], 1)
        for cam in ev:
            img = render_scores(scene, stack, cam) > 0.5  # [H, W, K]
            gt = gt_masks[cam.name]
            for j, (o, v) in enumerate(keys):
                iou2d[(o, v)].append(iou(img[..., j].cpu(), gt == o))
            for o in ids:
                iou2d[(o, "single_view")].append(iou(sv_views[o][cam.name].cpu(), gt == o))
    for o in ids:
        name = objects[o]
        truth = labels == o
        for v in VARIANTS:
            per_object[name][f"{v}_iou3d"] = iou(masks3d[(o, v)].cpu(), truth.cpu())
            per_object[name][f"{v}_iou2d"] = float(np.mean(iou2d[(o, v)])) if iou2d[(o, v)] else None
    cols3d = [f"{v}_iou3d" for v in VARIANTS]
    cols2d = [f"{v}_iou2d" for v in VARIANTS]
    mean = {c: float(np.mean([per_object[n][c] for n in per_object])) for c in cols3d + cols2d} if per_object else {}
    best3d = max(VARIANTS, key=lambda v: mean.get(f"{v}_iou3d", -1)) if mean else None
    results = {
        "per_object": per_object,
        "mean": mean,
        "best_iou3d": best3d,
        "num_gaussians": int(features.shape[0]),
        "feature_dim": int(features.shape[1]),
        "views": len(views),
        "eval_views": [c.name for c in ev],
        "refiner": {
            "type": type(refiner).__name__,
            **{k: getattr(refiner, k) for k in ("k", "steps", "bandwidth", "anchor_fraction") if hasattr(refiner, k)},
        },
        "seconds": round(time.time() - t0, 1),
    }
    table_rows = {n: {c: per_object[n][c] for c in cols3d + cols2d} for n in per_object}
    md = [
        "# Synthetic segmentation benchmark (IoU, %)",
        "",
        "3D: the per-Gaussian mask against the labels; 2D: rendered masks against the rendered labels, "
        f"mean over {len(ev)} views.",
        "",
        results_table(table_rows, cols3d + cols2d, title="object"),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _save_png(mask: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).save(path)
