"""``fulcra demo`` stage of LUDVIG's 3D tasks: scribble -> 3D selection -> mask PNG and removal PLY.

On the embedded synthetic scene (the uplift stage's, or generated with the same settings): RGB patch
features of a few views are uplifted, a scribble drawn inside the blue cube on one view is refined
by graph diffusion, the 3D mask is rendered over the image (``segment_overlay.png``) and the cube is
removed (``removed.ply``, rendered to ``removed.png``). CPU, well under 90 s once the scene exists.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["run_demo"]


def run_demo(out_dir: str | Path, scene_dir: str | Path | None = None, views: int = 8, obj: str = "blue_cube") -> dict:
    """Run the stage and return its summary.

    Args:
        out_dir: where to write ``segment_overlay.png``, ``removed.ply``, ``removed.png``, ``segment.json``.
        scene_dir: a synthetic scene folder (default: the ``uplift`` demo stage's ``../uplift/scene``
            when it exists, else a scene generated into ``out_dir/scene`` with the same settings).
        views: ring views uplifted from (fewer is faster).
        obj: the object to select (a name of the synthetic scene).

    Returns:
        ``{"iou3d", "iou2d", "selected", "removed_ply", "overlay_png", "seconds", ...}``.
    """
    from PIL import Image
    from safetensors.torch import load_file

    import fulcra
    from fulcra_plugins.scenes import load_scene
    from fulcra_plugins.scenes.synthetic import generate_scene

    from .interactive import Selector
    from .metrics import iou
    from .synthetic_benchmark import scribble_from_mask
    from .workflows import save_overlay

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scene_dir:
        root = Path(scene_dir)
    elif (out.parent / "uplift" / "scene" / "scene.json").is_file():
        root = out.parent / "uplift" / "scene"  # `fulcra demo` ran the uplift stage just before
    else:
        root = out / "scene"
        if not (root / "scene.json").is_file():
            generate_scene(root, seed=0, width=128, height=96, n_ring=8, n_forward=4, density=0.5)
    scene, cams, imgs = load_scene(
        root / "point_cloud.ply", root / "cameras.json", root / "images", backend="torch", device="cpu"
    )
    labels = load_file(str(root / "labels.safetensors"))["labels"]
    objects = json.loads((root / "scene.json").read_text())["objects"]
    o = objects.index(obj)
    ring = [c for c in cams if c.name.startswith("ring")] or cams
    use = ring[:: max(1, len(ring) // views)][:views]
    extractor = fulcra.create("feature_extractors", "rgb", patch_size=4)
    from fulcra.uplift import resize_to_camera

    maps = {c.name: resize_to_camera(extractor(imgs[c.name][None])[0].float(), c) for c in use}
    mu = torch.stack([m.mean((1, 2)) for m in maps.values()]).mean(0)[:, None, None]
    features, weights = fulcra.uplift(scene, ((c, maps[c.name] - mu) for c in use))
    gt = {}
    for c in use:
        with Image.open(root / "masks" / f"{c.name}.png") as im:
            gt[c.name] = torch.from_numpy(np.asarray(im).astype(np.int64))
    ref = max(use, key=lambda c: int((gt[c.name] == o).sum()))
    scribble = scribble_from_mask(gt[ref.name] == o)
    sel = Selector(
        scene, features, weights, refiner=fulcra.create("refiners", "graph_diffusion", k=16, steps=100)
    ).select(ref, scribble)
    mask2d = sel.render(ref)
    overlay = save_overlay(imgs[ref.name], mask2d, out / "segment_overlay.png", scribble)
    removed_ply = sel.save_removed(out / "removed.ply")
    with torch.no_grad():
        rgb = sel.remove().render_rgb(ref).clamp(0, 1)
    Image.fromarray((rgb.numpy() * 255 + 0.5).astype(np.uint8)).save(out / "removed.png")
    res = {
        "object": obj,
        "reference_view": ref.name,
        "views": len(use),
        "num_gaussians": scene.num_primitives,
        "selected": int(sel.mask3d.sum()),
        "iou3d": iou(sel.mask3d, labels == o),
        "iou2d": iou(mask2d, gt[ref.name] == o),
        "overlay_png": str(overlay),
        "removed_ply": str(removed_ply),
        "removed_png": str(out / "removed.png"),
        "seconds": round(time.time() - t0, 1),
    }
    res["summary"] = (
        f"scribble on {ref.name} -> {res['selected']} of {res['num_gaussians']} Gaussians selected by graph "
        f"diffusion; {obj}: 3D IoU {res['iou3d']:.3f}, 2D IoU {res['iou2d']:.3f}; "
        f"overlay {overlay.name}, removed object's scene {removed_ply.name}"
    )
    (out / "segment.json").write_text(json.dumps(res, indent=2))
    return res
