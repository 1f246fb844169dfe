"""Semantic-segmentation dataset plugins in their published layouts: ``ade20k``, ``cityscapes``,
``pascal_voc``. Nothing is downloaded; a missing folder or label file is a one-line error naming it.

Every plugin returns three splits:

- ``train``: the official training set. With ``augment=mmseg`` (default) it is a
  :class:`fulcra.interfaces.AugmentingDataset`: the engine's Trainer asks it for
  ``augmented_batch(indices, generator)`` and each sample goes through mmseg's pipeline
  (:class:`~fulcra_plugins.data.seg_transforms.MmsegTrainPipeline`: RandomResize ``(2048, s)`` x
  ``[0.5, 2]``, RandomCrop ``(s, s)`` with ``cat_max_ratio=0.75``, RandomFlip, PhotoMetricDistortion,
  Pad). Plain indexing gives the deterministic view (keep-ratio resize to ``(2048, s)``, centre
  crop, pad): ``[3, s, s]`` uint8 and ``[s, s]`` int64.
- ``val``: a seeded ``val_fraction`` of the training images held out for hyperparameter selection
  (app. B.1.2), evaluated like ``test``.
- ``test``: the official validation set (the thesis reports on it): the image resized keep-ratio to
  ``(2048, s)`` as mmseg's test pipeline does (``test_resize``), the label map at its original size;
  evaluate with ``task.inference=slide`` (one image at a time, any size).

Labels are ``[H, W]`` int64 with 255 = ignored: ADE20K's 0 ("other") becomes 255 and the rest
shift down by one (mmseg's ``reduce_zero_label``); Cityscapes uses the 19 train ids of
``*_gtFine_labelTrainIds.png``; VOC's palette PNGs hold the class index (border 255).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset as TorchDataset

from fulcra.errors import ConfigError, DataNotFoundError, FormatError, MissingDependencyError

from .seg_transforms import MmsegTrainPipeline, center_view, rescale_size, resize_pair

__all__ = [
    "ADE20K",
    "Cityscapes",
    "PascalVOC",
    "SegFiles",
    "AugmentedSegFiles",
    "read_image",
    "read_label",
    "write_tiny_layout",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise MissingDependencyError(
            "segmentation datasets read images with Pillow: pip install 'fulcra[vision]'", extra="vision"
        ) from exc
    return Image


def read_image(path: str) -> torch.Tensor:
    """``[3, H, W]`` uint8 RGB."""
    import numpy as np

    Image = _pil()
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise FormatError(f"{path}: not a readable image ({exc})") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label(path: str) -> torch.Tensor:
    """``[H, W]`` int64: the stored index of each pixel (palette PNGs give palette indices)."""
    import numpy as np

    Image = _pil()
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise FormatError(f"{path}: label map has mode {im.mode}, expected a single-channel or palette PNG")
            arr = np.asarray(im)
    except OSError as exc:
        raise FormatError(f"{path}: not a readable label map ({exc})") from exc
    return torch.from_numpy(arr.astype(np.int64))


class SegFiles(TorchDataset):
    """``(image, label)`` file pairs as a segmentation split.

    Args:
        pairs: ``[(image_path, label_path)]``.
        train: training split (fixed-size views, ``augmented_batch``) or evaluation split.
        crop_size: ``(h, w)`` of training samples.
        scale: ``(long, short)`` of the keep-ratio resizes (RandomResize's base, the test resize).
        pipeline: mmseg's training pipeline, or ``None`` (training samples are the deterministic view).
        test_resize: resize evaluation images to ``scale`` (labels stay at their original size).
        label_map: ``labels -> labels`` applied after reading (``reduce_zero_label``).
    """

    def __init__(
        self,
        pairs: list[tuple[str, str]],
        *,
        train: bool,
        crop_size: tuple[int, int],
        scale: tuple[int, int],
        pipeline: MmsegTrainPipeline | None = None,
        test_resize: bool = True,
        label_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ignore_index: int = 255,
    ):
        self.pairs, self.train = list(pairs), bool(train)
        self.crop_size, self.scale, self.pipeline = crop_size, scale, pipeline
        self.test_resize, self.label_map, self.ignore_index = bool(test_resize), label_map, int(ignore_index)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``[3, H, W]`` uint8 and label map ``[H, W]`` int64 as stored (after ``label_map``)."""
        ip, lp = self.pairs[i]
        img, seg = read_image(ip), read_label(lp)
        if tuple(img.shape[-2:]) != tuple(seg.shape):
            raise FormatError(f"{lp}: label map is {tuple(seg.shape)}, its image {ip} is {tuple(img.shape[-2:])}")
        return img, (self.label_map(seg) if self.label_map is not None else seg)

    def __getitem__(self, i: int):
        img, seg = self.load(i)
        if self.train:
            return center_view(img, seg, self.crop_size, self.scale, self.ignore_index)
        if self.test_resize:
            img, _ = resize_pair(img, None, rescale_size(img.shape[-2], img.shape[-1], self.scale))
        return img, seg


class AugmentedSegFiles(SegFiles):
    """A training :class:`SegFiles` with mmseg's pipeline: a :class:`fulcra.interfaces.AugmentingDataset`."""

    def augmented_batch(self, indices: Sequence[int], generator: torch.Generator):
        """mmseg's pipeline on each sample, all randomness from ``generator`` (in index order):
        ``([B, 3, s, s] uint8, [B, s, s] int64)``."""
        assert self.pipeline is not None
        imgs, segs = [], []
        for i in indices:
            img, seg = self.pipeline(*self.load(int(i)), generator)
            imgs.append(img)
            segs.append(seg)
        return torch.stack(imgs), torch.stack(segs)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


class _SegDataset:
    """Shared parameters and split logic; subclasses find the file pairs."""

    name = "segmentation"
    num_classes = 0

    def __init__(
        self,
        root: str = "",
        crop_size: Any = 560,
        scale: Any = (2048, 560),
        ratio_range: Any = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        augment: str = "mmseg",
        test_resize: bool = True,
        val_fraction: float = 0.1,
        seed: int = 0,
    ):
        owner = f"datasets.{self.name}"
        if not root:
            raise DataNotFoundError(f"{owner}: set root= to the dataset folder (nothing is downloaded)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(f"{owner}: root directory not found: {self.root}")
        if augment not in ("mmseg", "none"):
            raise ConfigError(f"{owner}: augment must be mmseg or none, got {augment!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"{owner}: val_fraction must be in [0, 1), got {val_fraction}")
        self.crop_size, self.scale = _pair(crop_size), _pair(scale)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio, self.augment = float(cat_max_ratio), augment
        self.test_resize, self.val_fraction, self.seed = bool(test_resize), float(val_fraction), int(seed)
        self._splits: dict | None = None

    def label_map(self, seg: torch.Tensor) -> torch.Tensor:
        return seg

    def pairs(self, split: str) -> list[tuple[str, str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def splits(self) -> dict:
        if self._splits is not None:
            return self._splits
        train_pairs, test_pairs = self.pairs("train"), self.pairs("test")
        perm = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = int(round(self.val_fraction * len(train_pairs)))
        val_idx = set(perm[:n_val])
        tr = [p for i, p in enumerate(train_pairs) if i not in val_idx]
        va = [p for i, p in enumerate(train_pairs) if i in val_idx]
        pipeline = (
            MmsegTrainPipeline(self.crop_size, self.scale, self.ratio_range, self.cat_max_ratio)
            if self.augment == "mmseg"
            else None
        )
        common = dict(crop_size=self.crop_size, scale=self.scale, label_map=self.label_map)
        train_cls = AugmentedSegFiles if pipeline is not None else SegFiles
        out = {"train": train_cls(tr, train=True, pipeline=pipeline, **common)}
        if va:
            out["val"] = SegFiles(va, train=False, test_resize=self.test_resize, **common)
        out["test"] = SegFiles(test_pairs, train=False, test_resize=self.test_resize, **common)
        self._splits = out
        return out

    def _missing(self, what: Path, hint: str) -> DataNotFoundError:
        return DataNotFoundError(f"datasets.{self.name}: {what} not found ({hint})")


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)


class ADE20K(_SegDataset):
    """ADE20K scene parsing (150 classes) in the ``ADEChallengeData2016`` layout::

        ROOT/images/{training,validation}/ADE_*.jpg
        ROOT/annotations/{training,validation}/ADE_*.png

    ``root`` is that folder (or its parent). Labels: 0 ("other") -> 255, ``k`` -> ``k - 1``.

    Args:
        root: ``ADEChallengeData2016`` (or the folder holding it).
        crop_size: training crop ``s`` (thesis: 560; the task's sliding windows use the same).
        scale: RandomResize base / test resize ``(long, short)`` (thesis: ``(2048, s)``).
        ratio_range: RandomResize ratio range.
        cat_max_ratio: RandomCrop's largest share of a single class.
        augment: ``mmseg`` (the training pipeline) or ``none`` (deterministic training views).
        test_resize: resize evaluation images keep-ratio to ``scale`` (mmseg's test pipeline).
        val_fraction: share of the training images held out as ``val``.
        seed: seed of that hold-out.
    """

    name = "ade20k"
    num_classes = 150

    def __init__(self, root: str = "", crop_size: Any = 560, scale: Any = (2048, 560), ratio_range: Any = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, augment: str = "mmseg", test_resize: bool = True,
                 val_fraction: float = 0.1, seed: int = 0):  # fmt: skip
        super().__init__(root, crop_size, scale, ratio_range, cat_max_ratio, augment, test_resize, val_fraction, seed)
        if not (self.root / "images").is_dir() and (self.root / "ADEChallengeData2016").is_dir():
            self.root = self.root / "ADEChallengeData2016"

    def label_map(self, seg: torch.Tensor) -> torch.Tensor:
        out = seg - 1
        out[(seg == 0) | (seg == 255)] = 255
        return out

    def pairs(self, split: str) -> list[tuple[str, str]]:
        sub = "training" if split == "train" else "validation"
        img_dir, ann_dir = self.root / "images" / sub, self.root / "annotations" / sub
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise self._missing(d, "expected the ADEChallengeData2016 layout: images/ and annotations/")
        out = []
        for p in _images(img_dir):
            lab = ann_dir / (p.stem + ".png")
            if not lab.is_file():
                raise FormatError(f"datasets.ade20k: {lab} missing (label of {p})")
            out.append((str(p), str(lab)))
        if not out:
            raise FormatError(f"datasets.ade20k: no images in {img_dir}")
        return out


class Cityscapes(_SegDataset):
    """Cityscapes (19 train ids) in its published layout::

        ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
        ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png

    The ``*_labelTrainIds.png`` files are made by cityscapesScripts' ``createTrainIdLabelImgs``
    (mmseg's ``tools/dataset_converters/cityscapes.py`` runs it); the official ``val`` split is ``test``.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        crop_size: training crop ``s`` (thesis: 560; the task's sliding windows use the same).
        scale: RandomResize base / test resize ``(long, short)`` (thesis: ``(2048, s)``).
        ratio_range: RandomResize ratio range.
        cat_max_ratio: RandomCrop's largest share of a single class.
        augment: ``mmseg`` (the training pipeline) or ``none`` (deterministic training views).
        test_resize: resize evaluation images keep-ratio to ``scale`` (mmseg's test pipeline).
        val_fraction: share of the training images held out as ``val``.
        seed: seed of that hold-out.
    """

    name = "cityscapes"
    num_classes = 19

    def __init__(self, root: str = "", crop_size: Any = 560, scale: Any = (2048, 560), ratio_range: Any = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, augment: str = "mmseg", test_resize: bool = True,
                 val_fraction: float = 0.1, seed: int = 0):  # fmt: skip
        super().__init__(root, crop_size, scale, ratio_range, cat_max_ratio, augment, test_resize, val_fraction, seed)

    def pairs(self, split: str) -> list[tuple[str, str]]:
        sub = "train" if split == "train" else "val"
        img_dir, ann_dir = self.root / "leftImg8bit" / sub, self.root / "gtFine" / sub
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise self._missing(d, "expected leftImg8bit/ and gtFine/ with train/ and val/ city folders")
        out = []
        for p in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            lab = ann_dir / p.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            if not lab.is_file():
                hint = (
                    "; only labelIds found: run cityscapesScripts' createTrainIdLabelImgs"
                    if (ann_dir / p.parent.name / f"{stem}_gtFine_labelIds.png").is_file()
                    else ""
                )
                raise FormatError(f"datasets.cityscapes: {lab} missing (label of {p}){hint}")
            out.append((str(p), str(lab)))
        if not out:
            raise FormatError(f"datasets.cityscapes: no *_leftImg8bit.png under {img_dir}/<city>/")
        return out


class PascalVOC(_SegDataset):
    """Pascal VOC 2012 segmentation (21 classes with background), optionally the augmented set::

        ROOT/JPEGImages/<id>.jpg
        ROOT/SegmentationClass/<id>.png          (palette PNGs: class index, 255 on borders)
        ROOT/ImageSets/Segmentation/{train,val}.txt
        ROOT/SegmentationClassAug/<id>.png       (optional: SBD's extra labels, as mmseg's voc_aug)
        ROOT/ImageSets/Segmentation/aug.txt      (optional: the ids of the augmented training set)

    ``root`` is ``VOCdevkit/VOC2012`` (or ``VOCdevkit`` or its parent). With ``aug`` (``auto``:
    when ``SegmentationClassAug/`` exists) training uses the ids of ``train.txt`` and ``aug.txt``
    (or, without ``aug.txt``, every id with a ``SegmentationClassAug`` label), minus ``val.txt``:
    10,582 images with the standard files (Table B.1); each label comes from ``SegmentationClassAug``
    when it has one, else ``SegmentationClass``. ``test`` is ``val.txt`` with ``SegmentationClass``.

    Args:
        root: ``VOCdevkit/VOC2012`` (or ``VOCdevkit``, or the folder holding it).
        crop_size: training crop ``s`` (thesis: 560; the task's sliding windows use the same).
        scale: RandomResize base / test resize ``(long, short)`` (thesis: ``(2048, s)``).
        ratio_range: RandomResize ratio range.
        cat_max_ratio: RandomCrop's largest share of a single class.
        augment: ``mmseg`` (the training pipeline) or ``none`` (deterministic training views).
        test_resize: resize evaluation images keep-ratio to ``scale`` (mmseg's test pipeline).
        val_fraction: share of the training images held out as ``val``.
        seed: seed of that hold-out.
        aug: ``auto`` (use ``SegmentationClassAug/`` when present), ``true`` or ``false``.
    """

    name = "pascal_voc"
    num_classes = 21

    def __init__(self, root: str = "", crop_size: Any = 560, scale: Any = (2048, 560), ratio_range: Any = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, augment: str = "mmseg", test_resize: bool = True,
                 val_fraction: float = 0.1, seed: int = 0, aug: str = "auto"):  # fmt: skip
        super().__init__(root, crop_size, scale, ratio_range, cat_max_ratio, augment, test_resize, val_fraction, seed)
        for sub in ("VOC2012", "VOCdevkit/VOC2012"):
            if not (self.root / "JPEGImages").is_dir() and (self.root / sub / "JPEGImages").is_dir():
                self.root = self.root / sub
        if str(aug).lower() not in ("auto", "true", "false"):
            raise ConfigError(f"datasets.pascal_voc: aug must be auto, true or false, got {aug!r}")
        aug_dir = self.root / "SegmentationClassAug"
        self.aug = aug_dir.is_dir() if str(aug).lower() == "auto" else str(aug).lower() == "true"
        if self.aug and not aug_dir.is_dir():
            raise self._missing(aug_dir, "aug=true needs the SBD labels as mmseg's voc_aug converter writes them")

    def _ids(self, name: str, required: bool = True) -> list[str]:
        f = self.root / "ImageSets" / "Segmentation" / f"{name}.txt"
        if not f.is_file():
            if required:
                raise self._missing(f, "expected VOCdevkit/VOC2012 with ImageSets/Segmentation/*.txt")
            return []
        return [line.split()[0] for line in f.read_text().splitlines() if line.strip()]

    def pairs(self, split: str) -> list[tuple[str, str]]:
        img_dir, cls_dir, aug_dir = (
            self.root / "JPEGImages",
            self.root / "SegmentationClass",
            self.root / "SegmentationClassAug",
        )
        for d in (img_dir, cls_dir):
            if not d.is_dir():
                raise self._missing(d, "expected VOCdevkit/VOC2012 with JPEGImages/ and SegmentationClass/")
        val = self._ids("val")
        if split == "train":
            ids = self._ids("train")
            if self.aug:
                extra = self._ids("aug", required=False) or sorted(p.stem for p in aug_dir.glob("*.png"))
                held = set(val)
                ids = sorted(set(ids) | set(extra))
                ids = [i for i in ids if i not in held]
        else:
            ids = val
        out = []
        for i in ids:
            img = img_dir / f"{i}.jpg"
            lab = aug_dir / f"{i}.png" if split == "train" and self.aug and (aug_dir / f"{i}.png").is_file() else None
            lab = lab or cls_dir / f"{i}.png"
            for f in (img, lab):
                if not f.is_file():
                    raise FormatError(f"datasets.pascal_voc: {f} missing (id {i} of the {split} list)")
            out.append((str(img), str(lab)))
        return out


def write_tiny_layout(name: str, root: str | Path, n_train: int = 3, n_test: int = 2) -> Path:
    """Write a tiny random dataset in ``name``'s published layout under ``root`` (conformance
    checks, examples); returns the folder to pass as ``root=``. ``name``: ade20k, cityscapes, pascal_voc."""
    import numpy as np

    Image = _pil()
    root = Path(root)
    rng = np.random.default_rng(0)

    def pair(img_path: Path, lab_path: Path, k: int, h: int = 20, w: int = 28):
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path)
        Image.fromarray(rng.integers(0, k, (h, w)).astype(np.uint8), mode="L").save(lab_path)

    if name == "ade20k":
        root = root / "ADEChallengeData2016"
        for sub, n in (("training", n_train), ("validation", n_test)):
            for i in range(n):
                stem = f"ADE_{sub}_{i:08d}"
                pair(root / "images" / sub / f"{stem}.jpg", root / "annotations" / sub / f"{stem}.png", 151)
    elif name == "cityscapes":
        for sub, n in (("train", n_train), ("val", n_test)):
            for i in range(n):
                stem = f"city_{i:06d}_000019"
                img = root / "leftImg8bit" / sub / "city" / f"{stem}_leftImg8bit.png"
                pair(img, root / "gtFine" / sub / "city" / f"{stem}_gtFine_labelTrainIds.png", 19)
    elif name == "pascal_voc":
        root = root / "VOCdevkit" / "VOC2012"
        ids = [f"2007_{i:06d}" for i in range(n_train + n_test)]
        for i in ids:
            pair(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png", 21)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True, exist_ok=True)
        (sets / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
        (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    else:
        raise ConfigError(f"write_tiny_layout: unknown dataset {name!r} (ade20k, cityscapes, pascal_voc)")
    return root


def _conformance(name: str) -> Callable[[], dict]:
    def params() -> dict:
        import tempfile

        root = write_tiny_layout(name, tempfile.mkdtemp(prefix=f"fulcra-{name}-"))
        return {"root": str(root), "crop_size": 16, "scale": [64, 16], "val_fraction": 0.34}

    return params


ADE20K.conformance_params = staticmethod(_conformance("ade20k"))  # type: ignore[attr-defined]
Cityscapes.conformance_params = staticmethod(_conformance("cityscapes"))  # type: ignore[attr-defined]
PascalVOC.conformance_params = staticmethod(_conformance("pascal_voc"))  # type: ignore[attr-defined]
