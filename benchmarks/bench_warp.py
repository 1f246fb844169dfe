"""Nearest-pixel affine warp: the current kernel against another revision's, interleaved in one run.

    git archive <rev> plugins/fulcra_plugins | tar -x -C /tmp/rev
    .venv/bin/python benchmarks/bench_warp.py --old /tmp/rev/plugins/fulcra_plugins/augment/_kernels.py

Times one stage of warps as the composite applies them (128 images of 32×32 in one call, 64 images
of 224×224 one at a time), medians of interleaved repeats on one thread, and counts the output
pixels where the two revisions differ. Revisions up to 97a4285 expose ``affine_grid`` +
``warp_nearest_grid``; later ones ``warp_nearest``.

``--per-op`` adds, per affine op at 224×224 (64 images, magnitudes uniform in [0, 1], random signs;
as the composite applies one stage: the 64 matrices in one ``inverse_affine`` call, then one warp
call per image) the stage with the other revision's kernels, with the current ones,
and torchvision v2's own call for that op (``F.affine`` / ``F.rotate``, nearest, zero fill, as
``TrivialAugmentWide`` makes it; ``F.pad`` + ``F.crop`` for RandomCrop) on each ``[3, 224, 224]``
image, and RandomResizedCrop (``crop_resize_bilinear`` of each revision vs ``F.resized_crop``),
all interleaved in one run; ``identical_to_old`` says whether the current op's output equals the
other revision's kernels' on every image.
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
    ap.add_argument("--per-op", action="store_true", help="also time each affine op at 224x224 vs torchvision")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
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
        rows.append(
            {
                "shape": [B, 3, H, W],
                "old_ms": round(t_old * 1e3, 2),
                "new_ms": round(t_new * 1e3, 2),
                "new_over_old": round(t_new / t_old, 3),
                "pixels_changed": changed,
                "pixels": B * H * W,
            }
        )
        print(json.dumps(rows[-1]))
    if args.per_op:
        rows += _per_op(old, new, args.repeats)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def _per_op(old, new, repeats: int) -> list[dict]:
    """Per-image ms of each affine op at 224×224: old kernels, new kernels, torchvision v2."""
    import math

    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from fulcra_plugins.augment import BUILTIN_OPS

    NEAREST = InterpolationMode.NEAREST
    B, H, W = 64, 224, 224
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)
    out = []
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "random_crop", "random_resized_crop"):
        op = BUILTIN_OPS[name]()
        params = op.sample_params(x, torch.rand(B, generator=g), g)
        one = [{k: v[i : i + 1] for k, v in params.items()} for i in range(B)]
        if name == "random_resized_crop":
            out.append(_time_op(name, op, x, one, old, new, repeats))
            continue
        args = op.affine_args(params, H, W)  # all images' matrices in one call, as the composite does
        v = params.get("value")
        if name == "shear_x":
            tv = [lambda i: TF.affine(x[i], 0.0, [0, 0], 1.0, [math.degrees(math.atan(v[i])), 0.0], NEAREST, 0, [0, 0])]
        elif name == "shear_y":
            tv = [lambda i: TF.affine(x[i], 0.0, [0, 0], 1.0, [0.0, math.degrees(math.atan(v[i]))], NEAREST, 0, [0, 0])]
        elif name == "translate_x":
            tv = [lambda i: TF.affine(x[i], 0.0, [int(v[i]), 0], 1.0, [0.0, 0.0], NEAREST, 0)]
        elif name == "translate_y":
            tv = [lambda i: TF.affine(x[i], 0.0, [0, int(v[i])], 1.0, [0.0, 0.0], NEAREST, 0)]
        elif name == "rotate":
            tv = [lambda i: TF.rotate(x[i], float(v[i]), NEAREST, fill=0)]
        else:  # RandomCrop: torchvision's pad + crop
            tx, ty = params["tx"], params["ty"]

            def _crop(i):
                pad = int(max(abs(tx[i]), abs(ty[i])))
                return TF.crop(TF.pad(x[i], [pad]), pad - int(ty[i]), pad - int(tx[i]), H, W)

            tv = [_crop]

        def stage(mod, keep=False):
            th = mod.inverse_affine(*args)
            warp = _warp(mod)
            outs = []
            for i in range(B):
                y = warp(x[i : i + 1], th[i : i + 1])
                if keep:
                    outs.append(y)
            return outs

        fns = {
            "old": lambda: stage(old),
            "new": lambda: stage(new),
            "torchvision": lambda: [tv[0](i) is None for i in range(B)],
        }
        same = all(torch.equal(a, op.apply_params(x[i : i + 1], one[i])) for i, a in enumerate(stage(old, True)))
        out.append(_row(name, fns, B, repeats, same))
    return out


def _time_op(name, op, x, one, old, new, repeats) -> dict:
    """RandomResizedCrop: ``crop_resize_bilinear`` of each revision on each image, against
    torchvision v2's ``resized_crop(..., antialias=True)`` on the same boxes."""
    import torchvision.transforms.v2.functional as TF

    B, _, H, W = x.shape
    boxes = [tuple(p[k] for k in ("top", "left", "height", "width")) for p in one]
    ints = [tuple(int(v) for v in b) for b in boxes]

    def each(f):  # every output freed at once, as the composite copies and drops it
        for i in range(B):
            f(i)

    fns = {
        "old": lambda: each(lambda i: old.crop_resize_bilinear(x[i : i + 1], *boxes[i])),
        "new": lambda: each(lambda i: new.crop_resize_bilinear(x[i : i + 1], *boxes[i])),
        "torchvision": lambda: each(lambda i: TF.resized_crop(x[i], *ints[i], [H, W], antialias=True)),
    }
    same = all(
        torch.equal(old.crop_resize_bilinear(x[i : i + 1], *boxes[i]), op.apply_params(x[i : i + 1], one[i]))
        for i in range(B)
    )
    return _row(name, fns, B, repeats, same)


def _row(name, fns, B, repeats, same) -> dict:
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    ms = {k: statistics.median(t) / B * 1e3 for k, t in ts.items()}
    row = {
        "op": name,
        "ms_per_image": {k: round(m, 4) for k, m in ms.items()},
        "new_over_old": round(ms["new"] / ms["old"], 3),
        "torchvision_over_new": round(ms["torchvision"] / ms["new"], 2),
        "identical_to_old": same,
    }
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
