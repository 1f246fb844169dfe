"""Saved-output check for the op library's speed work: digests (sha256 of bytes, shape, dtype) of
every op's output and of whole policies, to prove a faster kernel bit-identical.

    .venv/bin/python scripts/augment_digests.py save /tmp/ref.pt     # on the old code (e.g. main)
    .venv/bin/python scripts/augment_digests.py check /tmp/ref.pt    # on the new code: exit 1 on any change

Covers each affine op (ShearX/Y, TranslateX/Y, Rotate, RandomCrop) at several values of both signs,
per-image and sampled values, uint8 and float32, sizes 1×1 to 224×224 (odd, non-square), 1 and 3
channels, batches 1/7/64, non-contiguous and channels-last inputs; ``warp_nearest`` and
``source_index`` on random matrices in four dtypes; RandomResizedCrop at four scales and sampled
boxes; every colour and histogram op (Sharpness, Color, Contrast, Brightness, Posterize, Solarize,
Invert, Hue, Grayscale, ColorJitter, Equalize, AutoContrast) at values at and beyond its range ends and
at sampled magnitudes, on random, low-contrast, constant and two-level images, 32/61/224, batches
1/7/16, 1 and 3 channels, uint8 and float32; TrivialAugment and uniform K = 1/3 policies over all ops
at 32, 61 and 224, uint8 and float. One thread; about a minute. Used for issue 17
(docs/benchmarks.md, "Compiled warps" and "Compiled colour ops").
"""

from __future__ import annotations

import hashlib
import sys

import torch

from fulcra.policy import Policy
from fulcra_plugins.augment import BUILTIN_OPS
from fulcra_plugins.augment import _kernels as K
from fulcra_plugins.slack.baselines import TrivialAugment
from fulcra_plugins.slack.common import SEARCH_SPACES


def collect() -> dict:
    """Every output's digest, keyed by what produced it."""
    torch.set_num_threads(1)

    def digest(t):
        t = t.contiguous()
        return (tuple(t.shape), str(t.dtype), hashlib.sha256(t.numpy().tobytes()).hexdigest())

    def imgs(b, c, h, w, seed, dtype):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)
        if dtype == torch.float32:
            x = x.float() / 255
        return x

    out = {}
    WARPS = {
        "shear_x": [0.0, 0.1, -0.3, 0.5, -1.0, 1.0, 0.77],
        "shear_y": [0.0, 0.1, -0.3, 0.5, -1.0, 1.0, 0.77],
        "translate_x": [0.0, 1.0, -3.0, 7.5, -20.0, 100.0, 0.5, 300.0],
        "translate_y": [0.0, 1.0, -3.0, 7.5, -20.0, 100.0, 0.5, 300.0],
        "rotate": [0.0, 1.0, -5.0, 30.0, -45.0, 90.0, -90.0, 180.0, 13.7],
        "random_crop": [0.0, 1.0, 4.0, 17.0],
    }
    sizes = [(32, 32), (61, 61), (224, 224), (17, 40), (1, 1), (2, 3)]
    for name, vals in WARPS.items():
        op = BUILTIN_OPS[name]()
        for h, w in sizes:
            for b in ([1, 7, 64] if h < 224 else [1, 7]) + ([64] if (h, w) == (224, 224) else []):
                if b == 64 and (h, w) == (224, 224) and name not in ("rotate", "shear_x"):
                    continue
                for c in (1, 3):
                    for dt in (torch.uint8, torch.float32):
                        x = imgs(b, c, h, w, h * 7 + w + b + c, dt)
                        for v in vals:
                            out[(name, h, w, b, c, str(dt), v)] = digest(op.apply(x, v))
                        # per-image values
                        g = torch.Generator().manual_seed(b + h)
                        pv = (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * max(abs(t) for t in vals)
                        if name == "random_crop":
                            pv = pv.abs()
                        out[(name, h, w, b, c, str(dt), "per_image")] = digest(op.apply(x, pv))
                        # sampled params through apply_params
                        mags = torch.rand(b, generator=g)
                        p = op.sample_params(x, mags, g)
                        out[(name, h, w, b, c, str(dt), "sampled")] = digest(op.apply_params(x, p))
    # non-contiguous input
    x = imgs(4, 3, 64, 64, 3, torch.uint8)
    xs = x[:, :, ::2, 1::2]
    for name in WARPS:
        out[(name, "noncontig")] = digest(BUILTIN_OPS[name]().apply(xs, 0.4 if name.startswith("shear") else 5.0))
        out[(name, "channels_last")] = digest(
            BUILTIN_OPS[name]().apply(x.to(memory_format=torch.channels_last), 0.4 if name.startswith("shear") else 5.0)
        )
    # direct warp_nearest with random matrices
    g = torch.Generator().manual_seed(11)
    for h, w in sizes:
        for dt in (torch.uint8, torch.float32, torch.float64, torch.int16):
            x = imgs(5, 3, h, w, 1, torch.uint8).to(dt)
            ang = torch.rand(5, generator=g, dtype=torch.float64) * 360 - 180
            z = torch.rand(5, generator=g, dtype=torch.float64) * 40 - 20
            th = K.inverse_affine(ang, z, -z, ang / 4, ang / 5, z / 3, z / 2)
            out[("warp_nearest", h, w, str(dt))] = digest(K.warp_nearest(x, th))
            out[("source_index", h, w, str(dt))] = digest(K.source_index(th, h, w))
    # RandomResizedCrop and crop_resize_bilinear
    rrc = BUILTIN_OPS["random_resized_crop"]()
    for h, w in sizes:
        for b in (1, 7):
            for c in (1, 3):
                for dt in (torch.uint8, torch.float32):
                    x = imgs(b, c, h, w, b * c + h, dt)
                    for s in (1.0, 0.5, 0.08, 0.05):
                        out[("rrc", h, w, b, c, str(dt), s)] = digest(rrc.apply(x, s))
                    g = torch.Generator().manual_seed(h + b + c)
                    p = rrc.sample_params(x, torch.rand(b, generator=g), g)
                    out[("rrc", h, w, b, c, str(dt), "sampled")] = digest(rrc.apply_params(x, p))
    # colour and histogram ops (compiled colour kernels): values at and beyond the range ends, low-contrast,
    # constant and two-level images for the histogram ops, sampled magnitudes through apply_params
    COLOURS = {
        "sharpness": [0.0, 0.01, 0.37, 1.0, 1.5, 1.99, 2.5],
        "color": [0.0, 0.01, 0.37, 1.0, 1.5, 1.99, 2.5],
        "contrast": [0.0, 0.01, 0.37, 1.0, 1.5, 1.99, 2.5],
        "brightness": [0.0, 0.01, 0.37, 1.0, 1.5, 1.99, 2.5],
        "posterize": [8, 7, 5, 2, 1, 0],
        "solarize": [255, 256, 254.5, 128, 1, 0, 0.3],
        "invert": [0],
        "hue": [-0.5, -0.1, 0, 0.25, 0.5],
        "grayscale": [0],
        "color_jitter": [0, 0.2, 0.4],
        "equalize": [0],
        "auto_contrast": [0],
    }
    for h, w in ((32, 32), (61, 61), (224, 224)):
        for b in (1, 7, 16):
            for c in (1, 3):
                x = imgs(b, c, h, w, h * 100 + b * 10 + c, torch.uint8)
                if b > 3:
                    x[1] = x[1] // 4 + 60  # low contrast
                    x[2] = 77  # constant
                    x[3] = x[3] // 128 * 255  # two levels
                for dt in (torch.uint8, torch.float32):
                    xi = x.float() / 255 if dt == torch.float32 else x
                    for name, vals in COLOURS.items():
                        if c == 1 and name in ("color", "hue", "grayscale", "color_jitter"):
                            continue  # 3-channel ops
                        op = BUILTIN_OPS[name]()
                        for v in vals:
                            out[(name, h, w, b, c, str(dt), v)] = digest(op.apply(xi, v))
                        g = torch.Generator().manual_seed(b + h)
                        p = op.sample_params(xi, torch.linspace(0, 1, b), g)
                        out[(name, h, w, b, c, str(dt), "sampled")] = digest(op.apply_params(xi, p))
    # policies
    for h, w, B in ((32, 32, 128), (61, 61, 16), (224, 224, 16)):
        for dt in (torch.uint8, torch.float32):
            x = imgs(B, 3, h, w, 5, dt)

            class _D:
                images = x

            pols = {
                "ta": TrivialAugment("wide").search(_D()),
                "u1": Policy.uniform(SEARCH_SPACES["all"], 1),
                "u3": Policy.uniform(SEARCH_SPACES["all"], 3),
            }
            for pn, pol in pols.items():
                for seed in (0, 1):
                    g = torch.Generator().manual_seed(seed)
                    out[("policy", pn, h, w, B, str(dt), seed)] = digest(pol.augment(x, g))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("save", "check"):
        print(__doc__)
        return 2
    mode, path = argv
    out = collect()
    if mode == "save":
        torch.save(out, path)
        print(f"saved {len(out)} output digests to {path}")
        return 0
    ref = torch.load(path, weights_only=True)
    if ref.keys() != out.keys():
        print(f"{path}: a different set of outputs ({len(ref)} saved, {len(out)} now)")
        return 1
    bad = [k for k in ref if ref[k] != out[k]]
    print(f"compared {len(ref)} outputs; differing: {len(bad)}")
    for k in bad[:20]:
        print("DIFF", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
