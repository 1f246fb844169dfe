"""Peak memory of building and reading a synthetic set from a folder of images: eager vs lazy.

Writes ``--n`` random PNG images (``--size`` pixels square, two classes) in the ImageFolder layout,
then, each in a fresh process (so the peaks are separate):

- ``eager``: the training images read into one tensor first and the finished set copied into
  memory (what the distill workflow and ``load_synthetic_set`` did before), then
  ``build_synthetic_set`` (Mixup, ``--factor`` × n images) and one epoch of the distillation term's
  random draws from the set;
- ``lazy``: the same through ``DatasetImages`` (sources decoded per chunk) and the memory-mapped
  ``images.npy``.

Prints, per mode, the peak resident memory (``VmHWM``, which counts the mapped file pages too),
the private (``RssAnon``) and file-backed (``RssFile``) resident memory at the end, the wall time,
and whether both sets are byte-identical.

Run:  .venv/bin/python benchmarks/bench_synthetic_memory.py --n 2000 --size 224 --factor 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status_mb(key: str = "VmHWM") -> float:
    """A field of /proc/self/status in MB: VmHWM (peak resident), RssAnon (private memory, what
    runs a machine out of memory), RssFile (mapped file pages: page cache, reclaimable, shared)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def child(mode: str, root: str, out: str, size: int, factor: float) -> None:
    import torch

    from fulcra.engine import DatasetImages, image_batches
    from fulcra_plugins.data import ImageFolder
    from fulcra_plugins.generators import Mixup, build_synthetic_set

    torch.set_num_threads(1)
    train = ImageFolder(root=root, size=size, val_fraction=0.0).splits()["train"]
    base = status_mb()
    t0 = time.perf_counter()
    if mode == "eager":
        images = torch.cat(list(image_batches(DatasetImages(train), 256)))
    else:
        images = DatasetImages(train)
    n = int(round(factor * len(train)))
    syn = build_synthetic_set(Mixup(mix_k=2), images, n, out, seed=0, batch_size=64)
    if mode == "eager":  # the set concatenated into memory, as load_synthetic_set did before
        syn = syn.clone()
    g = torch.Generator().manual_seed(0)
    total = 0
    for _ in range(-(-n // 128)):  # one epoch of the distillation term's random draws
        total += int(syn[torch.randint(0, n, (128,), generator=g)].float().sum() > 0)
    res = {
        "mode": mode,
        "train_images": len(train),
        "synthetic_images": n,
        "seconds": time.perf_counter() - t0,
        "hwm_mb_before": base,
        "hwm_mb": status_mb(),
        "rss_anon_mb_end": status_mb("RssAnon"),
        "rss_file_mb_end": status_mb("RssFile"),
        "set_mb": syn.numel() / 1e6,
    }
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--child", nargs=5, metavar=("MODE", "ROOT", "OUT", "SIZE", "FACTOR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, root, out, size, factor = a.child
        child(mode, root, out, int(size), float(factor))
        return
    import numpy as np
    import torch
    from torchvision.io import write_png

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        rng = np.random.default_rng(0)
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
        for i in range(a.n):
            img = torch.from_numpy(rng.integers(0, 256, (3, a.size, a.size), dtype=np.uint8))
            write_png(img, str(root / ("a", "b")[i % 2] / f"{i:06d}.png"), compression_level=1)
        rows = []
        for mode in ("eager", "lazy"):
            out = Path(tmp) / f"syn_{mode}"
            cmd = [sys.executable, __file__, "--child", mode, str(root), str(out), str(a.size), str(a.factor)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        same = (Path(tmp) / "syn_eager" / "images.npy").read_bytes() == (
            Path(tmp) / "syn_lazy" / "images.npy"
        ).read_bytes()
        print(json.dumps({"rows": rows, "sets_identical": same}, indent=2))


if __name__ == "__main__":
    main()
