"""Training on image files: decoding each batch in the loop against decoding ahead in workers.

Writes ``--n`` smooth random JPEG images (``--size`` px) in the ImageFolder layout and trains the
same small CNN with :class:`fulcra.engine.Trainer` for ``--steps`` steps, the model on one thread,
from (a) the images read into one tensor, (b) a :class:`fulcra.engine.DatasetImages` view decoded
in the loop (``workers=0``) and (c) the view decoded ahead by each of ``--workers`` processes.
``--model cnn`` is a small network whose step costs about what decoding a batch costs here;
``--model linear`` computes next to nothing, so the loop runs as fast as batches are decoded.
Methods alternate over ``--repeats`` runs; medians. Every run must end with the same weights.

Run:  .venv/bin/python benchmarks/bench_prefetch.py --n 1024 --size 224 --batch 128 --steps 32 --workers 1 2
      (and the same with ``--model linear``; on a GPU machine ``--device cuda --workers 2 4 8``,
      where the step computes on the GPU and decoding is the CPU's whole share of it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":  # next to no compute: the loop is as fast as its batches arrive
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 2))
    return nn.Sequential(  # light, so that decoding is a visible share of a step on one thread
        nn.Conv2d(3, 16, 5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def _train(images, labels, steps: int, batch: int, workers: int, kind: str, device: str) -> tuple[float, dict]:
    from fulcra.engine import Trainer
    from fulcra_plugins.data.digits import TensorImageDataset

    trainer = Trainer(
        _model(kind),
        TensorImageDataset(images, labels),
        lambda m, x, y: nn.functional.cross_entropy(m(x), y),
        max_steps=steps,
        batch_size=batch,
        lr=0.05,
        seed=3,
        batch_transform=lambda x, y, g: ((x.float() - 127.5) / 64.0, y),
        workers=workers,
        device=device,
    )
    t0 = time.perf_counter()
    model = trainer.fit()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, {k: v.cpu() for k, v in model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", choices=["cnn", "linear"], default="cnn")
    ap.add_argument("--device", default="cpu", help="where the model trains (cuda: the decoding-bound regime)")
    a = ap.parse_args()
    from bench_lazy_images import write_image_folder

    from fulcra.engine import DatasetImages
    from fulcra_plugins.data import ImageFolder
    from fulcra_plugins.slack.common import as_tensors

    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp), a.n, a.size, "jpg")
        train = ImageFolder(root=str(root), size=a.size, val_fraction=0.0).splits()["train"]
        eager, labels = as_tensors(train, True)
        view, _ = as_tensors(train, False)
        assert isinstance(view, DatasetImages)
        methods = {"in_memory": (eager, 0), "view_workers_0": (view, 0)}
        methods.update({f"view_workers_{w}": (view, w) for w in a.workers})
        times: dict[str, list[float]] = {k: [] for k in methods}
        ref = None
        same, diff = True, 0.0
        for _ in range(a.repeats):
            for name, (images, workers) in methods.items():
                s, state = _train(images, labels, a.steps, a.batch, workers, a.model, a.device)
                times[name].append(s)
                ref = ref or state
                same &= all(torch.equal(ref[k], state[k]) for k in ref)
                diff = max(diff, max(float((ref[k].float() - state[k].float()).abs().max()) for k in ref))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "images": a.n,
                "size": a.size,
                "batch": a.batch,
                "steps": a.steps,
                "model": a.model,
                "device": a.device,
                "cpus": os.cpu_count(),
                "ms_per_step": {k: v / a.steps * 1e3 for k, v in med.items()},
                "speedup_vs_view_workers_0": {k: med["view_workers_0"] / v for k, v in med.items()},
                "same_weights": same,
                # on CUDA, atomics in some backward kernels (adaptive pooling) vary the last bits
                "max_weight_difference": diff,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
