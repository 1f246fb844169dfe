"""The embedded synthetic scene as a segmentation benchmark with ground truth (Table 5.2 ablation).

For every object of the scene: a scribble on a reference view (a cross drawn inside the object's
eroded ground-truth mask on the view where it looks largest), then four routes, all under the
same reference-view protocol (:mod:`.reference`, the thesis's and the official evaluation's):

- ``geometry``: the reference mask (the scribble without one) uplifted from the reference view and
  rendered on the others, no features (:mod:`.baselines`, Table 5.2's "geometry only");
- ``single_view``: each view's own 2D features scored against the reference scribble's mean
  feature (no 3D); its 2D threshold is chosen on the reference view's own score map, its 3D mask
  is the uplift of the per-view masks, binarised at the threshold chosen on the reference view;
- ``uplift``: the same score on the uplifted per-Gaussian features (C.1.2);
- ``uplift_diffusion``: the uplifted scribble refined by graph diffusion (C.1.3), its two
  bandwidths grid-searched on the reference view (the NVOS grid, scribbles).

The reference mask is the reference view's ground-truth mask (``reference="ground_truth"``: the
SPIn-NeRF protocol, or NVOS with a perfect SAM) or none (``reference="none"``: the fallback rules,
:data:`.reference.FALLBACKS`). Reported per object and on average: ``iou3d`` (the 3D selection
against the per-Gaussian labels) and ``iou2d`` (the protocol's 2D masks against the rendered label
masks, averaged over evaluation views other than the reference view).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .metrics import iou, results_table
from .segmentation import build_refiner

__all__ = ["scribble_from_mask", "run_synthetic_benchmark", "VARIANTS"]

VARIANTS = ("geometry", "single_view", "uplift", "uplift_diffusion")


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
    reference: str = "ground_truth",
    search: bool = True,
) -> dict:
    """Run the benchmark; write ``results.json``, ``results.md`` and scribble PNGs under ``out``.

    Args:
        scene, cameras, images: as :func:`fulcra_plugins.scenes.load_scene` returns them (any scene plugin).
        labels: ``[N]`` per-Gaussian object label (0 = ground).
        gt_masks: camera name -> ``[H, W]`` long label image (255 = empty).
        extractor: a feature extractor plugin (2D maps of every view).
        objects: object names by label index.
        refiner: any refiners plugin, an instance or a name (default ``graph_diffusion``); only its
            ``refine`` is called (and, for a TunableRefiner, ``tuning_grid``/``with_params``).
        uplifted: the :class:`~.lifting.Uplifted` of the views (computed here, with ``center``, when None).
        reference: ``ground_truth`` (tune on the reference view's true mask) or ``none`` (fallback rules).
        search: grid-search the refiner's bandwidths on the reference mask.

    Returns:
        ``{"per_object": {name: {variant_iou3d: ..., variant_iou2d: ..., tuning}}, "mean": {...}, ...}``.
    """
    import fulcra

    from . import reference as R
    from .lifting import extract_map, scene_device, uplift_views
    from .segmentation import feature_scorer, segment_with_reference

    if reference not in ("ground_truth", "none"):
        raise ValueError(f"reference must be ground_truth or none, got {reference!r}")
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
    per_object: dict = {}
    masks3d: dict = {}
    masks2d: dict = {}  # (object, variant) -> camera name -> [H, W] bool
    ids = [i for i in range(1, len(objects)) if bool((labels == i).any())]
    for o in ids:
        name = objects[o]
        # reference view: where the object covers the most pixels
        ref = max(views, key=lambda c: int((gt_masks[c.name] == o).sum()))
        truth2d = gt_masks[ref.name] == o
        prompt = scribble_from_mask(truth2d)
        target = truth2d if reference == "ground_truth" else None
        source = "ground truth of the reference view"
        _save_png(prompt, out / "scribbles" / f"{name}_{ref.name}.png")
        t = time.time()
        tunings = {}
        for variant, method in (("uplift", "uplift"), ("uplift_diffusion", "diffusion")):
            seg, tuning = segment_with_reference(
                scene,
                ref,
                prompt,
                "scribble",
                method,
                features=features,
                weights=weights,
                refiner=refiner,
                target=target,
                reference=source,
                search=search,
            )
            masks3d[(o, variant)] = R.mask_3d(seg.scores, tuning)
            masks2d[(o, variant)] = (seg.scores, tuning)
            tunings[variant] = tuning.as_dict()
        # single view: P learnt on the reference view's own 2D features, applied to each view's map
        D = maps[ref.name].shape[0]
        P = feature_scorer(maps[ref.name].reshape(D, -1).T, prompt.flatten(), "scribble")
        sv = {c.name: rescale_map(P(maps[c.name].reshape(D, -1).T).reshape(maps[c.name].shape[1:])) for c in views}
        if target is not None:
            t2, v2 = R.best_threshold(sv[ref.name], target)
        else:
            t2, v2 = (li_or_half(sv[ref.name]), None)
        sv_masks = {k: v > t2 for k, v in sv.items()}
        votes, _ = fulcra.uplift(scene, ((c, sv_masks[c.name].float()) for c in views))
        votes = votes[:, 0]
        if target is not None:
            t3, v3 = R.choose_threshold_3d(scene, votes, ref, target)
            sv_tuning = R.Tuning(source, float(t2), float(t3), round(v2, 4), round(float(v3), 4))
            masks3d[(o, "single_view")] = R.mask_3d(votes, t3)
        else:
            sv_tuning = R.Tuning(R.FALLBACKS["single_view"], float(t2), 0.5)
            masks3d[(o, "single_view")] = votes > 0.5
        tunings["single_view"] = sv_tuning.as_dict()
        masks2d[(o, "single_view")] = sv_masks
        # geometry only (Table 5.2): the reference mask (without one, the scribble) uplifted from the
        # reference view and rendered everywhere, no features (fulcra_plugins.ludvig.baselines)
        from .baselines import segment_geometry

        geo, geo_tuning = segment_geometry(
            scene, ref, prompt if target is None else target, target=target, reference=source
        )
        masks3d[(o, "geometry")] = R.mask_3d(geo.scores, geo_tuning)
        masks2d[(o, "geometry")] = (geo.scores, geo_tuning)
        tunings["geometry"] = geo_tuning.as_dict()
        per_object[name] = {
            "reference_view": ref.name,
            "seconds": round(time.time() - t, 2),
            "tuning": tunings,
        }
        log(
            f"{name}: reference {ref.name}, {int(prompt.sum())} scribble pixels, diffusion "
            f"{tunings['uplift_diffusion']['params'] or 'defaults'} ({time.time() - t:.1f}s)"
        )
    for o in ids:
        name = objects[o]
        truth = labels == o
        ref_name = per_object[name]["reference_view"]
        others = [c for c in views if c.name != ref_name]
        step = max(1, len(others) // max(eval_views, 1))
        ev = others[::step][:eval_views]
        per_object[name]["eval_views"] = [c.name for c in ev]
        for v in VARIANTS:
            per_object[name][f"{v}_iou3d"] = iou(masks3d[(o, v)].cpu(), truth.cpu())
            vals = []
            for cam in ev:
                if v == "single_view":
                    m = masks2d[(o, v)][cam.name]
                else:
                    scores, tuning = masks2d[(o, v)]
                    m = R.mask_2d(scene, scores, cam, tuning)
                vals.append(iou(m.cpu(), gt_masks[cam.name] == o))
            per_object[name][f"{v}_iou2d"] = float(np.mean(vals)) if vals else None
    cols3d = [f"{v}_iou3d" for v in VARIANTS]
    cols2d = [f"{v}_iou2d" for v in VARIANTS]
    mean = {c: float(np.mean([per_object[n][c] for n in per_object])) for c in cols3d + cols2d} if per_object else {}
    best3d = max(VARIANTS, key=lambda v: mean.get(f"{v}_iou3d", -1)) if mean else None
    params = getattr(refiner, "resolved", None)
    results = {
        "per_object": per_object,
        "mean": mean,
        "best_iou3d": best3d,
        "reference": reference,
        "num_gaussians": int(features.shape[0]),
        "feature_dim": int(features.shape[1]),
        "views": len(views),
        "refiner": {"type": type(refiner).__name__, **(params("scribble") if callable(params) else {})},
        "seconds": round(time.time() - t0, 1),
    }
    table_rows = {n: {c: per_object[n][c] for c in cols3d + cols2d} for n in per_object}
    ref_words = (
        "thresholds (and the diffusion's bandwidths) chosen by IoU with the reference view's ground-truth mask"
        if reference == "ground_truth"
        else "no reference mask: the fallback rules of fulcra_plugins.ludvig.reference"
    )
    md = [
        "# Synthetic segmentation benchmark (IoU, %)",
        "",
        f"Reference-view protocol, {ref_words}. 3D: the per-Gaussian selection against the labels; "
        f"2D: the protocol's masks against the rendered labels, mean over up to {eval_views} views other "
        "than the reference.",
        "",
        results_table(table_rows, cols3d + cols2d, title="object"),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def rescale_map(x: torch.Tensor) -> torch.Tensor:
    from .thresholds import rescale

    return rescale(x.float())


def li_or_half(x: torch.Tensor) -> float:
    from .thresholds import li

    return li(x) if float(x.max()) > float(x.min()) else 0.5


def _save_png(mask: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).save(path)
