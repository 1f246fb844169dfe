"""Nearest-pixel affine warp: the current kernel against another revision's, interleaved in one run.

    git archive <rev> plugins/fulcra_plugins | tar -x -C /tmp/rev
    .venv/bin/python benchmarks/bench_warp.py --old /tmp/rev/plugins/fulcra_plugins/augment/_kernels.py

Times one stage of warps as the composite applies them (128 images of 32×32 in one call, 64 images
of 224×224 one at a time), medians of interleaved repeats on one thread, and counts the output
pixels where the two revisions differ. Revisions up to 97a4285 expose ``affine_grid`` +
``warp_nearest_grid``; later ones ``warp_nearest``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _warp(mod):
    if hasattr(mod, "affine_grid"):
        return lambda x, th: mod.warp_nearest_grid(x, mod.affine_grid(th, x.shape[-2], x.shape[-1]))
    return mod.warp_nearest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the other revision's augment/_kernels.py")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    new = _load(HERE / "plugins/fulcra_plugins/augment/_kernels.py", "new_kernels")
    old = _load(args.old, "old_kernels")
    warps = {"old": _warp(old), "new": _warp(new)}
    g = torch.Generator().manual_seed(0)
    for B, H, W, per in ((128, 32, 32, 128), (64, 224, 224, 1)):
        x = torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)
        ang = torch.rand(B, generator=g, dtype=torch.float64) * 60 - 30
        z = torch.zeros(B, dtype=torch.float64)
        th = new.inverse_affine(ang, z, z, ang / 3, z)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for k, warp in warps.items():
                t = time.perf_counter()
                for a in range(0, B, per):
                    warp(x[a : a + per], th[a : a + per])
                times[k].append(time.perf_counter() - t)
        changed = sum(
            int(
                (warps["old"](x[a : a + per], th[a : a + per]) != warps["new"](x[a : a + per], th[a : a + per]))
                .any(1)
                .sum()
            )
            for a in range(0, B, per)
        )
        t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
        print(
            json.dumps(
                {
                    "shape": [B, 3, H, W],
                    "old_ms": round(t_old * 1e3, 2),
                    "new_ms": round(t_new * 1e3, 2),
                    "new_over_old": round(t_new / t_old, 3),
                    "pixels_changed": changed,
                    "pixels": B * H * W,
                }
            )
        )


if __name__ == "__main__":
    main()
