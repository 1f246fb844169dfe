"""Op-library throughput (issue 3, item 8a): fulcra's batched TrivialAugment (Wide ranges) and SLACK's
K=3 uniform policy vs torchvision's TrivialAugmentWide applied image by image and kornia's batched
TrivialAugment, on uint8 batches. Every figure of one table comes from one run (same process,
interleaved repeats, medians).

    .venv/bin/python benchmarks/bench_augment.py --threads 1 --out bench_augment.json
    python benchmarks/bench_augment.py --device cuda --out bench_augment_cuda.json   # GPU tensors

On ``--device cuda`` every method works on GPU tensors (fulcra batched, torchvision v2 image by
image, kornia batched) and each timed call ends with ``torch.cuda.synchronize()``.

kornia is only needed for its column (``pip install kornia``); it is not a dependency of fulcra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, the calls interleaved so that load drifts on a shared
    machine hit every method alike."""
    for fn in fns.values():
        fn()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the images live")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def synced(fn):
        def call():
            out = fn()
            sync()
            return out

        return call

    import torchvision.transforms.v2 as T

    from fulcra.policy import Policy
    from fulcra_plugins.slack.baselines import TrivialAugment
    from fulcra_plugins.slack.common import SEARCH_SPACES

    try:
        from kornia.augmentation.auto import TrivialAugment as KTA
    except ImportError:
        KTA = None

    rows = []
    for shape in [(128, 3, 32, 32), (64, 3, 224, 224)]:
        B = shape[0]
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(dev)
        g = torch.Generator(device=dev).manual_seed(0)

        class _D:  # image width for TrivialAugment's pixel translations
            images = x

        ta_policy = TrivialAugment("wide").search(_D())
        ta_aug = ta_policy.augmenter()
        slack_policy = Policy.uniform(SEARCH_SPACES["all"], 3)
        slack_aug = slack_policy.augmenter()
        tv = T.TrivialAugmentWide()
        reps = args.repeats if shape[-1] == 32 else max(3, args.repeats // 2)
        fns = {
            "fulcra_trivialaugment_wide": lambda: ta_policy.augment(x, g, ta_aug),
            "fulcra_slack_uniform_K3": lambda: slack_policy.augment(x, g, slack_aug),
            "torchvision_trivialaugmentwide_per_image": lambda: [tv(x[i]) for i in range(B)],
        }
        if KTA is not None:
            kta = KTA()
            xf = x.float() / 255  # kornia works on float input
            fns["kornia_trivialaugment_batched_float"] = lambda: kta(xf)
        t = _interleaved_medians({k: synced(f) for k, f in fns.items()}, reps)
        ips = {k: B / v for k, v in t.items()}
        row = {
            "shape": list(shape),
            "threads": args.threads,
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "images_per_s": ips,
            "speedup_vs_torchvision": ips["fulcra_trivialaugment_wide"]
            / ips["torchvision_trivialaugmentwide_per_image"],
        }
        if KTA is not None:
            row["speedup_vs_kornia"] = ips["fulcra_trivialaugment_wide"] / ips["kornia_trivialaugment_batched_float"]
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
