"""Dataset plugins backed by torchvision: ``imagefolder``, ``cifar10``, ``cifar100``.

Nothing is ever downloaded: CIFAR must already be on disk under ``root`` (torchvision's layout), and a
missing directory is a one-line error naming the path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from fulcra.errors import ConfigError, DataNotFoundError, FormatError, MissingDependencyError

from .digits import TensorImageDataset

__all__ = ["ImageFolder", "Cifar10", "Cifar100", "decode_rgb"]


def _torchvision():
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError(
            "this dataset needs torchvision: pip install 'fulcra[vision]'", extra="vision"
        ) from e
    return torchvision


def decode_rgb(path: str) -> torch.Tensor:
    """``[3, H, W]`` uint8 RGB of the image file ``path``, by torchvision's decoder (libjpeg-turbo,
    libpng, libwebp); Pillow where a torchvision without ``io.decode_image`` is installed (its
    JPEG decode may differ by a level here and there).

    Raises:
        FormatError: naming the file, when it cannot be decoded as an image.
    """
    tv = _torchvision()
    decode = getattr(tv.io, "decode_image", None)
    try:
        if decode is not None:
            return decode(path, mode=tv.io.ImageReadMode.RGB)
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (RuntimeError, OSError) as e:
        raise FormatError(f"{path}: cannot be decoded as an image ({str(e).splitlines()[0]})") from e


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    return perm[n_val:], perm[:n_val]


class _Subset(TorchDataset):
    def __init__(self, base, indices):
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self):
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` int64, without decoding any image."""
        return self.base.labels[torch.as_tensor(self.indices, dtype=torch.int64)]

    def __getitem__(self, i):
        return self.base[self.indices[i]]


class _FolderItems(TorchDataset):
    """Decodes image files to ``[3, size, size]`` uint8 (resize of the shorter side + centre crop)."""

    def __init__(self, samples: list[tuple[str, int]], size: int):
        self.samples, self.size = samples, size

    def __len__(self):
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` int64, without decoding any image."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def __getitem__(self, i):
        from torchvision.transforms.v2 import functional as F

        path, label = self.samples[i]
        img = decode_rgb(path)
        img = F.center_crop(F.resize(img, self.size, antialias=True), [self.size, self.size])
        return img, int(label)


class ImageFolder:
    """ImageNet-style folder: ``root/<split>/<class>/*.jpg`` when ``root/train`` exists, else
    ``root/<class>/*.jpg`` split deterministically into train/val/test with ``seed``.

    Args:
        root: dataset directory.
        size: images are resized (shorter side) and centre-cropped to ``size``×``size``, uint8.
        seed: seed of the split when the folder has no split directories.
        val_fraction: fraction for ``val`` (and again for ``test``) when splitting a flat folder.
    """

    def __init__(self, root: str = "", size: int = 224, seed: int = 0, val_fraction: float = 0.1):
        if not root:
            raise DataNotFoundError("datasets.imagefolder: set root= to the image folder")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(f"datasets.imagefolder: root directory not found: {self.root}")
        self.size, self.seed, self.val_fraction = int(size), int(seed), float(val_fraction)
        split_dirs = [d for d in ("train", "val", "test") if (self.root / d).is_dir()]
        self._classes = sorted(
            p.name for p in ((self.root / "train") if split_dirs else self.root).iterdir() if p.is_dir()
        )
        if not self._classes:
            raise ConfigError(f"datasets.imagefolder: no class directories in {self.root}")
        self.num_classes = len(self._classes)
        self._split_dirs = split_dirs

    def _scan(self, d: Path) -> list[tuple[str, int]]:
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
        out = []
        for ci, c in enumerate(self._classes):
            if (d / c).is_dir():
                out += [(str(p), ci) for p in sorted((d / c).iterdir()) if p.suffix.lower() in exts]
        return out

    def splits(self) -> dict:
        if self._split_dirs:
            res = {s: _FolderItems(self._scan(self.root / s), self.size) for s in self._split_dirs}
            if "val" not in res:
                tr, va = _split_indices(len(res["train"]), self.val_fraction, self.seed)
                base = res["train"]
                res["train"], res["val"] = _Subset(base, tr), _Subset(base, va)
            res.setdefault("test", res["val"])
            return res
        items = _FolderItems(self._scan(self.root), self.size)
        rest, test = _split_indices(len(items), self.val_fraction, self.seed)
        tr, va = _split_indices(len(rest), self.val_fraction, self.seed + 1)
        return {"train": _Subset(items, rest[tr]), "val": _Subset(items, rest[va]), "test": _Subset(items, test)}


class _Cifar:
    _cls_name = "CIFAR10"
    _folder = "cifar-10-batches-py"
    num_classes = 10

    def __init__(self, root: str = "~/data", seed: int = 0, val_fraction: float = 0.1):
        self.root = Path(root).expanduser()
        self.seed, self.val_fraction = int(seed), float(val_fraction)
        if not (self.root / self._folder).is_dir():
            raise DataNotFoundError(
                f"datasets.{self._cls_name.lower()}: {self.root / self._folder} not found; "
                f"download {self._cls_name} there yourself (fulcra never downloads data)"
            )

    def _load(self, train: bool) -> TensorImageDataset:
        tv = _torchvision()
        ds = getattr(tv.datasets, self._cls_name)(str(self.root), train=train, download=False)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # [N,3,32,32] uint8
        return TensorImageDataset(x, torch.as_tensor(ds.targets))

    def splits(self) -> dict:
        train, test = self._load(True), self._load(False)
        tr, va = _split_indices(len(train), self.val_fraction, self.seed)
        return {
            "train": TensorImageDataset(train.images[tr], train.labels[tr]),
            "val": TensorImageDataset(train.images[va], train.labels[va]),
            "test": test,
        }


class Cifar10(_Cifar):
    """CIFAR-10 from torchvision's on-disk layout under ``root`` (never downloaded); ``val`` is a
    seeded ``val_fraction`` of the training set, ``test`` the official test set.

    Args:
        root: directory containing ``cifar-10-batches-py``.
        seed: seed of the train/val split.
        val_fraction: fraction of the training set held out as ``val``.
    """

    def __init__(self, root: str = "~/data", seed: int = 0, val_fraction: float = 0.1):
        super().__init__(root, seed, val_fraction)


class Cifar100(_Cifar):
    """CIFAR-100 from torchvision's on-disk layout under ``root`` (never downloaded); ``val`` is a
    seeded ``val_fraction`` of the training set, ``test`` the official test set.

    Args:
        root: directory containing ``cifar-100-python``.
        seed: seed of the train/val split.
        val_fraction: fraction of the training set held out as ``val``.
    """

    _cls_name = "CIFAR100"
    _folder = "cifar-100-python"
    num_classes = 100

    def __init__(self, root: str = "~/data", seed: int = 0, val_fraction: float = 0.1):
        super().__init__(root, seed, val_fraction)
