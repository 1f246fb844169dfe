"""scikit-learn's bundled handwritten digits (1,797 real 8×8 images), upsampled, as a fulcra dataset.

Works offline: the data ship inside scikit-learn. Images are upsampled bilinearly to ``size`` and
replicated to 3 channels so that the same networks and transforms as for CIFAR apply.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset as TorchDataset

from fulcra.errors import ConfigError, MissingDependencyError

__all__ = ["Digits", "TensorImageDataset"]


class TensorImageDataset(TorchDataset):
    """In-memory images and labels.

    Args:
        images: ``[N, C, H, W]`` uint8: a tensor, or anything indexed like one
            (:class:`fulcra.engine.DatasetImages`).
        labels: ``[N]`` int64.

    Items are ``(image [C, H, W] uint8, label int)``. ``images``/``labels`` stay public so batched
    consumers (the search) can index them directly instead of collating item by item.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be [N,C,H,W] uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices):
        """``(images [b, C, H, W], labels [b] int64)`` in one indexing op (what stacking the items
        gives, without the per-item calls; a lazy ``images`` view decodes the batch at once)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return self.images[idx], self.labels[idx]


class Digits:
    """scikit-learn's 1,797 handwritten digits (10 classes), upsampled to ``size``×``size``, 3-channel uint8.

    Deterministic stratified-free random split for a given ``seed``: ``val_fraction`` and
    ``test_fraction`` of the images go to ``val`` and ``test``, the rest to ``train``. Offline.

    Args:
        size: output side length in pixels (bilinear upsampling of the 8×8 originals).
        seed: seed of the split permutation.
        val_fraction: fraction of images in the ``val`` split.
        test_fraction: fraction of images in the ``test`` split.
    """

    def __init__(self, size: int = 32, seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.3):
        if size < 8:
            raise ConfigError(f"datasets.digits: size must be >= 8, got {size}")
        if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"datasets.digits: need 0 <= val_fraction, 0 < test_fraction and their sum < 1, got {val_fraction}, {test_fraction}"
            )
        self.size = int(size)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.num_classes = 10
        self._splits = None

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "datasets.digits needs scikit-learn: pip install 'fulcra[science]'", extra="science"
            ) from e
        d = load_digits()
        x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
        if self.size != 8:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        y = torch.from_numpy(d.target).long()
        return x, y

    def splits(self) -> dict[str, TensorImageDataset]:
        """Returns ``{"train", "val", "test"}`` datasets of ``(image [3,size,size] uint8, label int)``."""
        if self._splits is None:
            x, y = self._load()
            n = x.shape[0]
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            n_test = int(round(self.test_fraction * n))
            n_val = int(round(self.val_fraction * n))
            test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
            self._splits = {
                "train": TensorImageDataset(x[train], y[train]),
                "val": TensorImageDataset(x[val], y[val]),
                "test": TensorImageDataset(x[test], y[test]),
            }
        return self._splits
