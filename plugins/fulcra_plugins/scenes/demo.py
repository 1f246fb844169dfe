"""The scenes stage of ``fulcra demo``: generate the synthetic scene, uplift RGB patch features into
it through the ``uplift`` workflow (the same path as real scenes), render PCA images, prune by
weight sums. Offline, CPU, well under a minute."""

from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["run_demo"]


def run_demo(out_dir: str | Path) -> dict:
    """Run the stage into ``out_dir``; returns the workflow's results plus paths and seconds.

    Writes ``out_dir/scene/`` (PLY, cameras.json, images/, masks/, labels) and ``out_dir/uplift/``
    (features.safetensors, pca/*.png, pruned/).
    """
    from fulcra.runner import run

    from .synthetic import generate_scene

    out_dir = Path(out_dir)
    t0 = time.time()
    threads = torch.get_num_threads()
    # the rasteriser's blocks are small: intra-op threads gain little and cost a lot on a busy CPU
    torch.set_num_threads(1)
    try:
        scene = out_dir / "scene"
        if not (scene / "scene.json").is_file():
            generate_scene(scene, seed=0, width=128, height=96, n_ring=8, n_forward=4, density=0.5)
        t_gen = time.time() - t0
        results = run(
            {
                "workflow": "uplift",
                "scene": {
                    "ply": str(scene / "point_cloud.ply"),
                    "cameras": str(scene / "cameras.json"),
                    "images": str(scene / "images"),
                    "backend": "torch",
                },
                "extractor": {"name": "rgb", "patch_size": 8},
                "prune": {"keep": 0.5},
                "check_views": 2,
                "out": str(out_dir / "uplift"),
                "device": "cpu",
            }
        )
    finally:
        torch.set_num_threads(threads)
    return {**results, "scene": str(scene), "generate_seconds": round(t_gen, 2), "seconds": round(time.time() - t0, 2)}
