"""Probing with the on-disk feature cache vs re-encoding every epoch (thesis §4.4.1, app. B.1.3).

Both paths run the real code (``fulcra_plugins.distill.training.probe_teacher``) on the same teacher:
a ViT-S/14 with DINOv2's architecture (random weights saved to a temporary file and loaded as
``weights=``, since nothing is downloaded), deterministic Resize/CenterCrop augmentation, an MLP head
on the CLS tokens of the last 3 blocks. "re-encode" runs the frozen encoder on every batch of every
epoch; "cache" encodes once into a memory-mapped file, then trains the head on it. The heads are
checked to agree (same data order, same initialisation).

    .venv/bin/python benchmarks/bench_probe_cache.py --epochs 20 --n 128 --image-size 112
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--tiny", action="store_true", help="tiny random encoder instead of the full-size architecture")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n", type=int, default=128, help="training images")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from fulcra_plugins.backbones import load_backbone
    from fulcra_plugins.data.digits import TensorImageDataset
    from fulcra_plugins.distill.teachers import ProbedTeacher
    from fulcra_plugins.distill.training import probe_teacher
    from fulcra_plugins.tasks.classification import Classification

    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(
        (torch.rand(args.n, 3, 32, 32, generator=g) * 255).to(torch.uint8), torch.randint(0, 10, (args.n,), generator=g)
    )
    task = Classification()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = None
        if not args.tiny:
            from safetensors.torch import save_file

            bb = load_backbone(args.backbone, pretrained=False)
            weights = str(tmp / "w.safetensors")
            save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, weights)
            del bb

        def teacher():
            torch.manual_seed(0)
            return ProbedTeacher(
                args.backbone, weights=weights, tiny=args.tiny, num_classes=10, n_cls=3, image_size=args.image_size
            )

        cfg = SimpleNamespace(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.0,
            augment="deterministic",
            cache=True,
        )
        res = {}
        for mode in ("cache", "re-encode"):
            t = teacher()
            cfg.cache = mode == "cache"
            t0 = time.perf_counter()
            probe_teacher(
                t,
                task,
                ds,
                out_dir=tmp / mode,
                cfg=cfg,
                device=torch.device("cpu"),
                seed=0,
                cache_root=tmp / "feature_cache",
                weights=weights,
            )
            res[mode] = {"seconds": time.perf_counter() - t0, "head": [p.detach().clone() for p in t.head.parameters()]}
        agree = max(float((a - b).abs().max()) for a, b in zip(res["cache"]["head"], res["re-encode"]["head"]))
    out = {
        "backbone": args.backbone + (" (tiny)" if args.tiny else ""),
        "images": args.n,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "threads": args.threads,
        "reencode_s": round(res["re-encode"]["seconds"], 2),
        "cache_s": round(res["cache"]["seconds"], 2),
        "speedup": round(res["re-encode"]["seconds"] / res["cache"]["seconds"], 1),
        "max_head_difference": agree,
    }
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
