"""Per-op cost of the colour and histogram ops at 224×224 (issue 17): the compiled kernels, the torch
path they replace (``FULCRA_NATIVE=0``, the slow reference), optionally another revision's op library,
and torchvision v2 image by image, all interleaved in one run (medians, ms per image).

    .venv/bin/python benchmarks/bench_ops.py --threads 1 --repeats 7
    git archive <rev> plugins/fulcra_plugins | tar -x -C /tmp/rev
    .venv/bin/python benchmarks/bench_ops.py --old /tmp/rev/plugins/fulcra_plugins/augment

Each op runs on a uint8 batch ``[B, 3, S, S]`` with per-image values drawn at magnitude 0.5
(``sample_params``), both as a direct call (``apply_params``) and as one composite stage in which
every image draws that op (sampling, grouping and write-back included). The last rows time whole
TrivialAugment (Wide) and uniform K = 3 SLACK steps with and without the kernels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from bench_augment import _interleaved_medians as _medians  # this folder is on sys.path when run as a script

OPS = [
    "sharpness",
    "color",
    "contrast",
    "brightness",
    "posterize",
    "solarize",
    "invert",
    "equalize",
    "auto_contrast",
    "hue",
    "grayscale",
]


def _load_old(path: Path):
    spec = importlib.util.spec_from_file_location(
        "old_augment", path / "__init__.py", submodule_search_locations=[str(path)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_augment"] = mod
    spec.loader.exec_module(mod)
    return mod


def _torch_path(fn):
    """``fn`` with the compiled kernels switched off (FULCRA_NATIVE=0)."""

    def call():
        old = os.environ.get("FULCRA_NATIVE")
        os.environ["FULCRA_NATIVE"] = "0"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["FULCRA_NATIVE"]
            else:
                os.environ["FULCRA_NATIVE"] = old

    return call


def _tv(name):
    import torchvision.transforms.v2.functional as F

    return {
        "sharpness": F.adjust_sharpness,
        "color": F.adjust_saturation,
        "contrast": F.adjust_contrast,
        "brightness": F.adjust_brightness,
        "posterize": lambda im, v: F.posterize(im, int(v)),
        "solarize": F.solarize,
        "invert": lambda im, v: F.invert(im),
        "equalize": lambda im, v: F.equalize(im),
        "auto_contrast": lambda im, v: F.autocontrast(im),
        "hue": F.adjust_hue,
        "grayscale": lambda im, v: F.rgb_to_grayscale(im, 3),
    }[name]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--old", default=None, help="another revision's augment package folder, timed alongside")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fulcra.policy import Policy
    from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment
    from fulcra_plugins.augment import _native as N
    from fulcra_plugins.slack.baselines import TrivialAugment
    from fulcra_plugins.slack.common import SEARCH_SPACES

    if N.lib() is None:
        raise SystemExit("bench_ops: the compiled kernels are unavailable (FULCRA_NATIVE=0 or no compiler)")
    old = _load_old(Path(args.old)) if args.old else None
    B, S = args.batch, args.size
    x = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in OPS:
        op = BUILTIN_OPS[name]()
        params = op.sample_params(x, torch.full((B,), 0.5), torch.Generator().manual_seed(1))
        vals = params["value"].tolist()
        tv = _tv(name)
        comp = CompositeAugment([op])
        idx = torch.zeros(B, 1, dtype=torch.int64)
        mags = torch.full((B, 1), 0.5)
        fns = {
            "native": lambda: op.apply_params(x, params),
            "torch_path": _torch_path(lambda: op.apply_params(x, params)),
            "stage_native": lambda: comp(x, idx, mags, torch.Generator().manual_seed(2)),
            "stage_torch_path": _torch_path(lambda: comp(x, idx, mags, torch.Generator().manual_seed(2))),
            "torchvision": lambda: [tv(x[i], vals[i]) for i in range(B)],
        }
        if old is not None:
            oop = old.BUILTIN_OPS[name]()
            ocomp = old.CompositeAugment([oop])
            fns["old"] = lambda: oop.apply_params(x, params)
            fns["stage_old"] = lambda: ocomp(x, idx, mags, torch.Generator().manual_seed(2))
        assert torch.equal(fns["native"](), fns["torch_path"]()), name
        t = _medians(fns, args.repeats)
        row = {"op": name, "shape": [B, 3, S, S], "threads": args.threads}
        row["ms_per_image"] = {k: 1000 * v / B for k, v in t.items()}
        rows.append(row)
        print(json.dumps(row))

    class _D:
        images = x

    ta = TrivialAugment("wide").search(_D())
    slack = Policy.uniform(SEARCH_SPACES["all"], 3)
    augs = {"ta": ta.augmenter(), "slack": slack.augmenter()}
    import torchvision.transforms.v2 as T

    tvta = T.TrivialAugmentWide()
    fns = {
        "ta_native": lambda: ta.augment(x, torch.Generator().manual_seed(3), augs["ta"]),
        "ta_torch_path": _torch_path(lambda: ta.augment(x, torch.Generator().manual_seed(3), augs["ta"])),
        "slack_K3_native": lambda: slack.augment(x, torch.Generator().manual_seed(3), augs["slack"]),
        "slack_K3_torch_path": _torch_path(lambda: slack.augment(x, torch.Generator().manual_seed(3), augs["slack"])),
        "torchvision_trivialaugmentwide": lambda: [tvta(x[i]) for i in range(B)],
    }
    t = _medians(fns, args.repeats)
    row = {"op": "policies", "shape": [B, 3, S, S], "threads": args.threads}
    row["ms_per_image"] = {k: 1000 * v / B for k, v in t.items()}
    rows.append(row)
    print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
