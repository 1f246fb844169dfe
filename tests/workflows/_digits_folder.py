"""A folder of PNG digits (classes 0-2, 8×8 px) in the image-folder layout, for the workflow tests
that must read image files (decoded as drawn) rather than an in-memory set."""

from pathlib import Path

import numpy as np
import torch


def write_digits_folder(root: Path, n: int = 90, classes: int = 3) -> Path:
    import torchvision as tv
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    keep = np.flatnonzero(d.target < classes)[:n]
    for i in keep:
        g = torch.from_numpy((d.images[i] * 255 / 16).round().astype(np.uint8))[None].expand(3, 8, 8)
        tv.io.write_png(g.contiguous(), str(root / f"class{d.target[i]}" / f"{i:04d}.png"))
    return root
