"""The SLACK benchmarks' datasets read from their published layouts on disk (never downloaded):
``imagenet100`` and ``domainnet``.

* **ImageNet-100** (Tian et al. 2019, used by SLACK's Table 3.2): the 100 ImageNet classes listed,
  one WordNet id per line, in the CMC list file the official SLACK code points to
  (``imagenet100.txt``), read from an ImageNet folder ``root/train/<wnid>/*.JPEG`` and
  ``root/val/<wnid>/*.JPEG`` (torchvision ``ImageFolder`` layout; a folder already reduced to the
  100 classes works without the list). ``test`` is ImageNet's validation set, as in the thesis.
* **DomainNet** (Peng et al. 2019): one domain of the official ``<domain>/<class>/*.jpg`` layout.
  ``split: thesis`` (default) is §3.4.1's protocol: a seeded 20 % of the domain's images for
  testing, except real and quickdraw which keep a seeded 50,000 images for training and the rest
  for testing; ``split: official`` reads DomainNet's own ``<domain>_train.txt`` / ``<domain>_test.txt``
  (lines ``<domain>/<class>/<file>.jpg <label>``); ``split: folders`` reads
  ``<domain>/train/<class>/`` and ``<domain>/test/<class>/`` (what the official SLACK
  ``domain_net_splits/split_dataset.py`` writes from its npz file lists).

Pre-processing (Table A.3): ``resize_crop`` resizes the shorter side to ``resize`` (256) and
centre-crops ``size`` (224); ``squash`` resizes to ``size``×``size`` (DomainBed's, and SLACK's for
clipart, sketch and quickdraw). The search and evaluation hold images as uint8 tensors, so the
training images are centre-cropped once rather than randomly cropped at every epoch as the official
loaders do (docs/slack.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset as TorchDataset

from fulcra.errors import ConfigError, DataNotFoundError, FormatError

from .vision import _torchvision, decode_rgb

__all__ = ["ImageNet100", "DomainNet", "DOMAINS", "read_class_list"]

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
# §3.4.1: the two largest domains keep 50,000 training images, the others 80 %
_CAPPED = {"real": 50000, "quickdraw": 50000}
# Table A.3: SLACK's pre-processing per domain
_SQUASHED = {"clipart", "sketch", "quickdraw"}
_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_PREPROCESS = ("resize_crop", "squash")


class _Images(TorchDataset):
    """``(path, label)`` pairs decoded on access to ``[3, size, size]`` uint8."""

    def __init__(self, samples: list[tuple[str, int]], size: int, resize: int, preprocess: str):
        self.samples, self.size, self.resize, self.preprocess = samples, int(size), int(resize), preprocess

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` int64, without decoding any image."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def __getitem__(self, i: int):
        _torchvision()
        from torchvision.transforms.v2 import functional as F

        path, label = self.samples[i]
        img = decode_rgb(path)
        if self.preprocess == "squash":
            img = F.resize(img, [self.size, self.size], antialias=True)
        else:
            img = F.center_crop(F.resize(img, self.resize, antialias=True), [self.size, self.size])
        return img, int(label)


def _scan(d: Path, classes: list[str]) -> list[tuple[str, int]]:
    out = []
    for ci, c in enumerate(classes):
        if (d / c).is_dir():
            out += [(str(p), ci) for p in sorted((d / c).iterdir()) if p.suffix.lower() in _EXTS]
    return out


def _check_common(plugin: str, size: int, resize: int, preprocess: str) -> None:
    if size < 1 or resize < 1:
        raise ConfigError(f"datasets.{plugin}: size and resize must be >= 1, got {size}, {resize}")
    if preprocess not in (*_PREPROCESS, "auto"):
        raise ConfigError(f"datasets.{plugin}: preprocess must be one of {['auto', *_PREPROCESS]}, got '{preprocess}'")


def read_class_list(path: str | Path) -> list[str]:
    """The class ids of a list file (one per line, blank lines and ``#`` comments ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"class list file not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.split()[0])
    if not ids:
        raise FormatError(f"{path}: no class ids")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise FormatError(f"{path}: class ids listed twice: {dup[:5]}")
    return ids


def _tiny_layout(kind: str) -> dict:
    """``conformance_params``: a few 12×10 images written in the published layout in a temporary folder."""
    import tempfile

    from torchvision.io import write_png

    root = Path(tempfile.mkdtemp(prefix=f"fulcra-{kind}-"))
    dirs = [root / "train", root / "val"] if kind == "imagenet100" else [root / "sketch"]
    for d in dirs:
        for c in ("n01440764", "n01443537"):
            for i in range(3):
                (d / c).mkdir(parents=True, exist_ok=True)
                write_png(torch.full((3, 12, 10), 40 * i, dtype=torch.uint8), str(d / c / f"{i}.png"))
    if kind == "imagenet100":
        return {"root": str(root), "size": 8, "resize": 9}
    return {"root": str(root), "domain": "sketch", "size": 8}


def _seeded_split(n: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[n_test:]), sorted(perm[:n_test])


class _Split(TorchDataset):
    def __init__(self, base: _Images, indices: list[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        return self.base.labels[torch.as_tensor(self.indices, dtype=torch.int64)]

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def _at_size(ds, size: int):
    """The same images (and split indices) pre-processed to another output side."""
    if isinstance(ds, _Split):
        return _Split(_at_size(ds.base, size), ds.indices)
    return _Images(ds.samples, size, ds.resize, ds.preprocess)


def _with_train_size(splits: dict, train_size: int, size: int, preprocess: str) -> dict:
    """``train`` at ``R(resize) + CC(train_size)`` (the square the training's random crops of ``size``
    come from, Table A.3's ``R(256) + RC((224, 224))``); ``val`` and ``test`` stay ``CC(size)``."""
    if train_size <= 0 or train_size == size or preprocess != "resize_crop":
        return splits
    return {**splits, "train": _at_size(splits["train"], train_size)}


class ImageNet100:
    """ImageNet-100 from an ImageNet folder and the 100-class list file.

    Args:
        root: ImageNet directory holding ``train/<wnid>/`` and ``val/<wnid>/`` (class folders of images).
        classes: the class list file (one WordNet id per line, e.g. CMC's ``imagenet100.txt``);
            empty: every class folder of ``root/train`` (a folder already reduced to ImageNet-100).
        size: output side in pixels (224).
        resize: shorter side before the centre crop (256; Table A.3's ``R(256)+CC(224)``).
        preprocess: ``resize_crop`` (default, ``auto``) or ``squash``.
        val_fraction: a seeded fraction of ``train`` held out as ``val`` (0: ``val`` is the test set).
        seed: seed of that hold-out.
        train_size: with ``resize_crop``, the ``train`` images are the central ``train_size`` square
            of ``R(resize)`` (``val``/``test`` stay ``CC(size)``), for the search workflow's
            ``train_crop=size`` random crops (Table A.3's SLACK ``R(256)+RC((224, 224))``; 0: off).
    """

    conformance_params = staticmethod(lambda: _tiny_layout("imagenet100"))

    def __init__(
        self,
        root: str = "",
        classes: str = "",
        size: int = 224,
        resize: int = 256,
        preprocess: str = "auto",
        val_fraction: float = 0.0,
        seed: int = 0,
        train_size: int = 0,
    ):
        if not root:
            raise DataNotFoundError("datasets.imagenet100: set root= to the ImageNet folder (with train/ and val/)")
        self.root = Path(root).expanduser()
        for d in ("train", "val"):
            if not (self.root / d).is_dir():
                raise DataNotFoundError(
                    f"datasets.imagenet100: {self.root / d} not found; root must hold ImageNet's train/ and val/ "
                    "class folders (fulcra never downloads data)"
                )
        _check_common("imagenet100", size, resize, preprocess)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"datasets.imagenet100: val_fraction must be in [0, 1), got {val_fraction}")
        if classes:
            self.classes = read_class_list(classes)
            missing = [c for c in self.classes if not (self.root / "train" / c).is_dir()]
            if missing:
                raise DataNotFoundError(
                    f"datasets.imagenet100: {len(missing)} listed classes have no folder under {self.root / 'train'} "
                    f"(first: {missing[0]})"
                )
        else:
            self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
            if not self.classes:
                raise DataNotFoundError(f"datasets.imagenet100: no class folders in {self.root / 'train'}")
        self.num_classes = len(self.classes)
        self.size, self.resize = int(size), int(resize)
        self.preprocess = "resize_crop" if preprocess == "auto" else preprocess
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        if int(train_size) < 0 or (int(train_size) and not self.size <= int(train_size) <= self.resize):
            raise ConfigError(
                f"datasets.imagenet100: train_size must be 0 or between size ({self.size}) and resize ({self.resize}), got {train_size}"
            )
        self.train_size = int(train_size)

    def splits(self) -> dict:
        train = _Images(_scan(self.root / "train", self.classes), self.size, self.resize, self.preprocess)
        test = _Images(_scan(self.root / "val", self.classes), self.size, self.resize, self.preprocess)
        if len(train) == 0 or len(test) == 0:
            raise DataNotFoundError(f"datasets.imagenet100: no images of the listed classes under {self.root}")
        if self.val_fraction > 0:
            tr, va = _seeded_split(len(train), int(round(self.val_fraction * len(train))), self.seed)
            out = {"train": _Split(train, tr), "val": _Split(train, va), "test": test}
        else:
            out = {"train": train, "val": test, "test": test}
        return _with_train_size(out, self.train_size, self.size, self.preprocess)


class DomainNet:
    """One DomainNet domain (345 classes) from the official ``<domain>/<class>/*.jpg`` layout.

    Args:
        root: the DomainNet directory holding ``<domain>/`` (and, for ``split: official``, the txt files).
        domain: ``clipart``, ``infograph``, ``painting``, ``quickdraw``, ``real`` or ``sketch``.
        split: ``thesis`` (seeded, §3.4.1), ``official`` (``<domain>_train.txt`` / ``_test.txt``) or
            ``folders`` (``<domain>/train/`` and ``<domain>/test/``).
        test_fraction: share of the images held out for testing by ``split: thesis`` (0.2).
        max_train: ``split: thesis`` keeps at most this many training images, the rest are test
            (-1: the thesis' 50,000 for real and quickdraw, no cap for the other domains; 0: no cap).
        split_seed: seed of the ``thesis`` split (the same seed gives the same split on every machine).
        size: output side (224).
        resize: shorter side before the centre crop of ``resize_crop`` (256).
        preprocess: ``auto`` (Table A.3: ``squash`` for clipart, sketch, quickdraw, else
            ``resize_crop``), ``resize_crop`` or ``squash``.
        val_fraction: a seeded fraction of ``train`` held out as ``val`` (0: ``val`` is the test set).
        train_size: with ``resize_crop``, the ``train`` images are the central ``train_size`` square
            of ``R(resize)`` (``val``/``test`` stay ``CC(size)``), for the search workflow's
            ``train_crop=size`` random crops (Table A.3: painting, infograph, real; 0: off).
    """

    conformance_params = staticmethod(lambda: _tiny_layout("domainnet"))

    def __init__(
        self,
        root: str = "",
        domain: str = "clipart",
        split: str = "thesis",
        test_fraction: float = 0.2,
        max_train: int = -1,
        split_seed: int = 0,
        size: int = 224,
        resize: int = 256,
        preprocess: str = "auto",
        val_fraction: float = 0.0,
        train_size: int = 0,
    ):
        if not root:
            raise DataNotFoundError("datasets.domainnet: set root= to the DomainNet folder (holding <domain>/)")
        if domain not in DOMAINS:
            raise ConfigError(f"datasets.domainnet: domain must be one of {list(DOMAINS)}, got '{domain}'")
        if split not in ("thesis", "official", "folders"):
            raise ConfigError(f"datasets.domainnet: split must be 'thesis', 'official' or 'folders', got '{split}'")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ConfigError(f"datasets.domainnet: test_fraction must be in (0, 1), got {test_fraction}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"datasets.domainnet: val_fraction must be in [0, 1), got {val_fraction}")
        if int(max_train) < -1:
            raise ConfigError(f"datasets.domainnet: max_train must be -1, 0 or a count, got {max_train}")
        _check_common("domainnet", size, resize, preprocess)
        self.root = Path(root).expanduser()
        self.dir = self.root / domain
        if not self.dir.is_dir():
            raise DataNotFoundError(
                f"datasets.domainnet: {self.dir} not found; extract DomainNet's {domain}.zip under root "
                "(fulcra never downloads data)"
            )
        self.domain, self.split = domain, split
        self.test_fraction, self.split_seed = float(test_fraction), int(split_seed)
        self.max_train = _CAPPED.get(domain, 0) if int(max_train) == -1 else int(max_train)
        self.size, self.resize = int(size), int(resize)
        self.preprocess = preprocess if preprocess != "auto" else ("squash" if domain in _SQUASHED else "resize_crop")
        self.val_fraction = float(val_fraction)
        if int(train_size) < 0 or (int(train_size) and not self.size <= int(train_size) <= self.resize):
            raise ConfigError(
                f"datasets.domainnet: train_size must be 0 or between size ({self.size}) and resize ({self.resize}), got {train_size}"
            )
        self.train_size = int(train_size)
        class_dir = self.dir / "train" if split == "folders" else self.dir
        if not class_dir.is_dir():
            raise DataNotFoundError(f"datasets.domainnet: split 'folders' needs {class_dir}")
        self.classes = sorted(p.name for p in class_dir.iterdir() if p.is_dir() and p.name not in ("train", "test"))
        if not self.classes:
            raise DataNotFoundError(f"datasets.domainnet: no class folders in {class_dir}")
        self.num_classes = len(self.classes)

    def _images(self, samples):
        return _Images(samples, self.size, self.resize, self.preprocess)

    def _read_txt(self, which: str) -> list[tuple[str, int]]:
        path = self.root / f"{self.domain}_{which}.txt"
        if not path.is_file():
            raise DataNotFoundError(f"datasets.domainnet: split 'official' needs {path} (DomainNet's split file)")
        index = {c: i for i, c in enumerate(self.classes)}
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0]
            parts = Path(rel).parts
            if len(parts) != 3 or parts[0] != self.domain or parts[1] not in index:
                raise FormatError(f"{path}: line {n}: expected '{self.domain}/<class>/<file> <label>', got {line!r}")
            file = self.root / rel
            if not file.is_file():
                raise DataNotFoundError(f"{path}: line {n}: image not found: {file}")
            out.append((str(file), index[parts[1]]))
        if not out:
            raise FormatError(f"{path}: no images listed")
        return out

    def _train_test(self) -> tuple[TorchDataset, TorchDataset]:
        if self.split == "official":
            return self._images(self._read_txt("train")), self._images(self._read_txt("test"))
        if self.split == "folders":
            if not (self.dir / "test").is_dir():
                raise DataNotFoundError(f"datasets.domainnet: split 'folders' needs {self.dir / 'test'}")
            return (
                self._images(_scan(self.dir / "train", self.classes)),
                self._images(_scan(self.dir / "test", self.classes)),
            )
        every = self._images(_scan(self.dir, self.classes))
        n = len(every)
        if n < 2:
            raise DataNotFoundError(f"datasets.domainnet: fewer than 2 images under {self.dir}")
        n_test = int(round(self.test_fraction * n))
        if self.max_train and n - n_test > self.max_train:
            n_test = n - self.max_train
        tr, te = _seeded_split(n, n_test, self.split_seed)
        return _Split(every, tr), _Split(every, te)

    def splits(self) -> dict:
        train, test = self._train_test()
        if self.val_fraction > 0:
            tr, va = _seeded_split(len(train), int(round(self.val_fraction * len(train))), self.split_seed + 1)
            out = {"train": _Split(train, tr), "val": _Split(train, va), "test": test}  # type: ignore[arg-type]
        else:
            out = {"train": train, "val": test, "test": test}
        return _with_train_size(out, self.train_size, self.size, self.preprocess)
