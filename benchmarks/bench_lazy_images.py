"""What a lazy image view costs per batch against the same images held in memory.

Writes ``--n`` smooth random images (``--size`` px, JPEG or PNG) in the ImageFolder layout, reads
them with ``slack.common.as_tensors`` both ways (``in_memory=True``: one tensor; ``False``: a
``fulcra.engine.DatasetImages`` view that decodes on access) and times drawing ``--repeats``
batches of ``--batch`` random indices from each, one thread. The batches are checked equal.

Run:  .venv/bin/python benchmarks/bench_lazy_images.py --n 512 --size 256 --format jpg
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_image_folder(root: Path, n: int, size: int, fmt: str = "jpg") -> Path:
    """``n`` smooth random ``size`` px images (``jpg`` or ``png``) in two class folders under ``root``,
    smooth so that JPEG files have a photo's size rather than noise's."""
    from torchvision.io import write_jpeg, write_png

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
    for i in range(n):
        base = torch.from_numpy(rng.integers(0, 256, (1, 3, max(1, size // 8), max(1, size // 8)), dtype=np.uint8))
        img = torch.nn.functional.interpolate(base.float(), size=(size, size), mode="bilinear")[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
        path = str(root / ("a", "b")[i % 2] / f"{i:05d}.{fmt}")
        write_jpeg(img, path, quality=90) if fmt == "jpg" else write_png(img, path)
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    from fulcra_plugins.data import ImageFolder
    from fulcra_plugins.slack.common import as_tensors

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp), a.n, a.size, a.format)
        train = ImageFolder(root=str(root), size=a.size, val_fraction=0.0).splits()["train"]
        t0 = time.perf_counter()
        eager, _ = as_tensors(train, True)
        read_s = time.perf_counter() - t0
        view, _ = as_tensors(train, False)
        g = torch.Generator().manual_seed(0)
        draws = [torch.randint(0, len(eager), (a.batch,), generator=g) for _ in range(a.repeats)]
        t0 = time.perf_counter()
        got_eager = [eager[i] for i in draws]
        mem_ms = (time.perf_counter() - t0) / a.repeats * 1e3
        t0 = time.perf_counter()
        got_view = [view[i] for i in draws]
        view_ms = (time.perf_counter() - t0) / a.repeats * 1e3
        same = all(torch.equal(x, y) for x, y in zip(got_eager, got_view))
    print(
        json.dumps(
            {
                "images": len(eager),
                "size": a.size,
                "format": a.format,
                "read_into_memory_s": read_s,
                "batch": a.batch,
                "ms_per_batch_in_memory": mem_ms,
                "ms_per_batch_view": view_ms,
                "equal": same,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
