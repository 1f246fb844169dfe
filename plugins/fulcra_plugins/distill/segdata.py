"""``digits_seg``: an offline semantic-segmentation dataset made of scikit-learn's digits.

Each image is a ``size``×``size`` canvas holding ``per_image`` digits (each ``size/2`` wide) at random
positions on a noisy background; the label map gives ``digit + 1`` where the digit's stroke is
(intensity > 0.35), 0 for background and ``ignore_index`` on a thin band around strokes (ambiguous
anti-aliased pixels, as unlabelled borders in VOC). 11 classes. Splits follow ``digits``' split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from fulcra.errors import ConfigError

__all__ = ["DigitsSegmentation", "SegTensorDataset"]


class SegTensorDataset(TorchDataset):
    """Images ``[N, 3, H, W]`` uint8 and label maps ``[N, H, W]`` int64 in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def get_batch(self, indices):
        idx = torch.as_tensor(list(indices))
        return self.images[idx], self.labels[idx]


class DigitsSegmentation:
    """Digits pasted on canvases with per-pixel labels (offline segmentation demo and tests).

    Args:
        size: canvas side in pixels (multiple of 4, >= 16).
        per_image: digits per canvas.
        seed: seed of the split and of the layouts.
        ignore_index: label of the ambiguous band around strokes.
    """

    def __init__(self, size: int = 32, per_image: int = 2, seed: int = 0, ignore_index: int = 255):
        if size < 16 or size % 4:
            raise ConfigError(f"datasets.digits_seg: size must be a multiple of 4 and >= 16, got {size}")
        self.size, self.per_image, self.seed, self.ignore_index = (
            int(size),
            int(per_image),
            int(seed),
            int(ignore_index),
        )
        self.num_classes = 11
        self._splits = None

    def splits(self) -> dict:
        if self._splits is not None:
            return self._splits
        import fulcra

        base = fulcra.create("datasets", "digits", size=self.size // 2, seed=self.seed).splits()
        g = torch.Generator().manual_seed(self.seed + 1)
        out = {}
        for name, ds in base.items():
            imgs, labels = ds.images[:, :1].float() / 255.0, ds.labels  # [N, 1, s, s]
            n, s, S = imgs.shape[0], imgs.shape[-1], self.size
            canvas = torch.rand(n, 1, S, S, generator=g) * 0.15
            lab = torch.zeros(n, S, S, dtype=torch.long)
            for _ in range(self.per_image):
                order = torch.randperm(n, generator=g)
                ys = torch.randint(0, S - s + 1, (n,), generator=g)
                xs = torch.randint(0, S - s + 1, (n,), generator=g)
                for i in range(n):
                    d, y, x = imgs[order[i], 0], int(ys[i]), int(xs[i])
                    region = canvas[i, 0, y : y + s, x : x + s]
                    canvas[i, 0, y : y + s, x : x + s] = torch.maximum(region, d)
                    stroke = d > 0.35
                    band = (F.max_pool2d(stroke[None, None].float(), 3, 1, 1)[0, 0] > 0) & ~stroke & (d > 0.1)
                    sub = lab[i, y : y + s, x : x + s]
                    sub[stroke] = int(labels[order[i]]) + 1
                    sub[band] = self.ignore_index
            img = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
            out[name] = SegTensorDataset(img, lab)
        self._splits = out
        return out
