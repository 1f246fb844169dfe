"""Shared pieces of the SLACK search and evaluation: tensors from datasets, deterministic batches,
input normalisation, and plain supervised training with a policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fulcra.engine import DatasetImages, Trainer, dataset_batches, image_batches, step_generator
from fulcra_plugins.data.digits import TensorImageDataset as TensorSplit

__all__ = [
    "TensorSplit",
    "as_tensors",
    "take",
    "batch_indices",
    "to_input",
    "channel_mean",
    "MethodAugment",
    "random_crops",
    "center_crops",
    "train_with_policy",
    "evaluate",
    "SEARCH_SPACES",
]

# The search spaces of the method (§3.4.1: the 15 standard transforms plus the defaults of each
# benchmark, and Hue where ColorJitter is usual), in the official SLACK code's order, so that op
# index n means the same transform as in the published policies: CIFAR 17 ops, ImageNet 18,
# DomainNet 20 (tests/plugins/slack/test_spaces.py holds the transcribed table).
_OFFICIAL_BASE = [
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "auto_contrast",
    "invert",
    "equalize",
    "solarize",
    "posterize",
    "contrast",
    "color",
    "brightness",
    "sharpness",
]
STANDARD_15 = [*_OFFICIAL_BASE, "identity"]
SEARCH_SPACES = {
    "cifar": [*_OFFICIAL_BASE, "cutout", "random_crop", "identity"],
    "imagenet": [*_OFFICIAL_BASE, "hue", "cutout", "random_resized_crop", "identity"],
    "domainnet": [
        *_OFFICIAL_BASE[:8],
        "grayscale",
        *_OFFICIAL_BASE[8:],
        "hue",
        "cutout",
        "random_resized_crop",
        "random_crop",
        "identity",
    ],
    # every bundled transform (not a space of the method)
    "all": [*_OFFICIAL_BASE, "grayscale", "hue", "cutout", "random_crop", "random_resized_crop", "identity"],
}


IN_MEMORY_BYTES = 8 << 30
"""``as_tensors(in_memory="auto")`` reads a dataset into memory when its images take at most this
many bytes (and at most 40 % of the machine's memory); larger ones stay a lazy view."""


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def as_tensors(ds, in_memory: bool | str = True, workers: int = 0) -> tuple[Any, torch.Tensor]:
    """``(images [N, C, H, W] uint8, labels [N] int64)`` of a dataset yielding ``(image, label)``.

    In-memory datasets exposing ``images``/``labels`` are used directly. Others (image files) are
    read into one tensor when ``in_memory`` is True, or seen through a
    :class:`fulcra.engine.DatasetImages` view (decoded batch by batch, the same bytes) when False;
    ``"auto"`` reads them in when the images take at most :data:`IN_MEMORY_BYTES` and 40 % of the
    machine's memory (judged from the first image). Only the speed and the memory differ: every
    consumer indexes both alike. A view's labels come from the dataset's ``labels`` tensor when it
    has one, without decoding images. Reading in decodes ``workers`` batches ahead in as many
    processes (the same tensor); a view is returned with ``workers`` for its consumers.
    """
    if hasattr(ds, "images") and isinstance(getattr(ds, "labels", None), torch.Tensor):
        return ds.images, ds.labels
    if in_memory not in (True, False, "auto"):
        raise ValueError(f"slack: in_memory must be true, false or auto, got {in_memory!r}")
    view = DatasetImages(ds)
    if in_memory == "auto":
        need = len(view) * view[0].numel() * view.dtype.itemsize if len(view) else 0
        mem = _memory_bytes()
        in_memory = need <= IN_MEMORY_BYTES and (mem is None or need <= 0.4 * mem)
    labels = getattr(ds, "labels", None)
    if in_memory or not isinstance(labels, torch.Tensor):  # one pass over the items
        xs, ys = [], []
        for x, y in dataset_batches(ds, 256, workers=workers):
            if in_memory:
                xs.append(x)
            ys.append(torch.as_tensor(y, dtype=torch.int64).reshape(-1))
        labels = torch.cat(ys)
        if in_memory:
            return torch.cat(xs), labels
    return view.with_workers(workers), labels.long()


def take(images: Any, idx: torch.Tensor) -> Any:
    """``images[idx]``: a tensor for a tensor, another lazy view for a :class:`DatasetImages`."""
    return images.subset(idx) if isinstance(images, DatasetImages) else images[idx]


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Indices of batch ``step``: epochs of seeded permutations of ``range(n)``, last partial batch dropped.

    Depends only on its arguments, so a resumed run draws the same batches.
    """
    batch = min(batch, n)
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=step_generator(seed, 7, epoch))
    return perm[k * batch : (k + 1) * batch]


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float network input, centred and scaled to about unit variance."""
    x = images.to(torch.float32) if images.dtype == torch.uint8 else images * 255.0
    return (x - 127.5) / 64.0


def channel_mean(images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean ``[C]`` of ``images`` ``[N, C, H, W]`` in network-input units (:func:`to_input`).

    uint8 images are summed in int64 (exact), so the value is the same whatever the thread count."""
    if isinstance(images, DatasetImages):  # exact integer sums batch by batch: the same value
        n = images.shape[0] * images.shape[2] * images.shape[3]
        tot = sum(
            (x.to(torch.int64).sum(dim=(0, 2, 3)) for x in image_batches(images)),
            torch.zeros(images.shape[1], dtype=torch.int64),
        )
        m = tot.to(torch.float64) / max(n, 1)
    elif images.dtype == torch.uint8:
        n = images.shape[0] * images.shape[2] * images.shape[3]
        m = images.to(torch.int64).sum(dim=(0, 2, 3)).to(torch.float64) / max(n, 1)
    else:
        m = images.to(torch.float64).mean(dim=(0, 2, 3)) * 255.0
    return ((m - 127.5) / 64.0).to(torch.float32)


def random_crops(images: torch.Tensor, size: int, generator) -> torch.Tensor:
    """One uniformly placed ``size``×``size`` window per image (torchvision's ``RandomCrop(size)``
    on each image; Table A.3's ``RC((224, 224))``); positions drawn from ``generator`` in image
    order, so a batch gives each image the crop it would get alone with the same draws."""
    B, C, H, W = images.shape
    if size >= H and size >= W:
        return images
    if size > H or size > W:
        raise ValueError(f"random crop of {size} px from {H}x{W} images")
    ty = torch.floor(torch.rand(B, generator=generator, device=images.device, dtype=torch.float64) * (H - size + 1))
    tx = torch.floor(torch.rand(B, generator=generator, device=images.device, dtype=torch.float64) * (W - size + 1))
    ar = torch.arange(size, device=images.device)
    rows = (ty.long().view(B, 1) + ar).view(B, 1, size, 1)  # one gather for the whole batch
    cols = (tx.long().view(B, 1) + ar).view(B, 1, 1, size)
    b = torch.arange(B, device=images.device).view(B, 1, 1, 1)
    c = torch.arange(C, device=images.device).view(1, C, 1, 1)
    return images[b, c, rows, cols]


def center_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``×``size`` window of each image (torchvision's ``CenterCrop(size)`` offsets)."""
    H, W = images.shape[-2:]
    if size >= H and size >= W:
        return images
    top, left = int(round((H - size) / 2.0)), int(round((W - size) / 2.0))
    if isinstance(images, DatasetImages):  # cropped as each batch is decoded
        return images.with_transform(_Window(top, left, size))
    return images[..., top : top + size, left : left + size]


class _Window:
    def __init__(self, top: int, left: int, size: int):
        self.top, self.left, self.size = top, left, size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.top : self.top + self.size, self.left : self.left + self.size]


class MethodAugment:
    """The method's augmentation of a batch, as the official SLACK code applies it at every search
    step and in the evaluation training: the policy's sampled ops (RandomResizedCrop first, by the
    applier), then a random horizontal flip (``flip``), then normalisation (:func:`to_input`), then
    Cutout last (``cutout_last``): a sampled Cutout is withheld from its stage and cut after
    normalisation, filled with the training images' mean (``fill``, ``[C]`` network-input units), at
    the magnitude of the last stage that drew it.

    Args:
        policy: gives the ops, their ranges and the index of ``cutout`` / ``identity``.
        applier: the policy's :class:`~fulcra.interfaces.PolicyApplier` (``policy.augmenter()``).
        flip: random horizontal flip with probability 1/2 after the policy.
        cutout_last: apply a sampled Cutout last, after normalisation, with mean fill (else at its
            stage, black fill).
        fill: ``[C]`` fill of the late Cutout (network-input units); ``None``: 0 (grey 127.5).
        crop: with ``crop > 0``, a random ``crop``×``crop`` window of each image first (Table A.3's
            ``R(256) + RC((224, 224))`` for SLACK on ImageNet-100 and DomainNet), then the policy.
    Raises:
        ConfigError: ``cutout_last`` with a Cutout range not starting at 0 in a space without
            ``identity`` (the withheld stage could not be made a no-op).
    """

    def __init__(
        self, policy, applier, *, flip: bool, cutout_last: bool, fill: torch.Tensor | None = None, crop: int = 0
    ):
        from fulcra.errors import ConfigError

        self.applier, self.flip, self.crop = applier, bool(flip), int(crop)
        ops = list(policy.ops)
        self.ci = ops.index("cutout") if cutout_last and "cutout" in ops else None
        self.ii = ops.index("identity") if "identity" in ops else None
        self.cut = None
        if self.ci is not None:
            self.cut = policy.build_ops()[self.ci]
            if self.ii is None and float(self.cut.magnitude_to_value(torch.zeros(1, dtype=torch.float64))[0]) != 0.0:
                raise ConfigError(
                    "cutout_last: the space has no 'identity' and the Cutout range does not start at 0, so a "
                    "withheld Cutout stage cannot be skipped; set cutout_last=false or add 'identity'"
                )
        self.fill = fill

    def __call__(
        self, images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor, generator
    ) -> torch.Tensor:
        """``images`` ``[B, C, H, W]`` (uint8 or float in [0, 1]), ``op_index``/``magnitude`` ``[B, K]``
        -> float network input ``[B, C, H, W]``. All randomness from ``generator``."""
        if self.crop > 0:
            images = random_crops(images, self.crop, generator)
        mags = magnitude.clamp(0, 1)
        idx = op_index
        if self.ci is not None:
            is_cut = op_index == self.ci  # [B, K]
            if self.ii is not None:
                idx = torch.where(is_cut, torch.full_like(op_index, self.ii), op_index)
            else:
                mags = torch.where(is_cut, torch.zeros_like(mags), mags)
        x = self.applier(images, idx, mags, generator)
        if self.flip:
            f = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
            x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        x = to_input(x)
        if self.ci is not None:
            K = is_cut.shape[1]
            has = is_cut.any(1)  # [B]
            last = (K - 1) - is_cut.flip(1).to(torch.int8).argmax(1)  # last stage that drew Cutout
            m = magnitude.clamp(0, 1).gather(1, last.view(-1, 1)).view(-1)
            box = self.cut.sample_params(x, m, generator)
            B, C, H, W = x.shape
            t, lft = box["top"].view(B, 1, 1), box["left"].view(B, 1, 1)
            h, w = box["height"].view(B, 1, 1), box["width"].view(B, 1, 1)
            ys = torch.arange(H, device=x.device).view(1, H, 1)
            xs = torch.arange(W, device=x.device).view(1, 1, W)
            inside = (ys >= t) & (ys < t + h) & (xs >= lft) & (xs < lft + w) & has.view(B, 1, 1)
            fill = self.fill if self.fill is not None else torch.zeros(C)
            x = torch.where(inside.unsqueeze(1), fill.to(x.device, x.dtype).view(1, C, 1, 1), x)
        return x


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 ``images`` ``[N, C, H, W]`` (a tensor, or a
    :class:`fulcra.engine.DatasetImages` view, decoded ahead by its ``workers``)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for s, xb in zip(range(0, images.shape[0], batch), image_batches(images, batch)):
            x = to_input(xb.to(device))
            correct += int((model(x).argmax(-1).cpu() == labels[s : s + batch]).sum())
    model.train()
    return correct / max(images.shape[0], 1)


def train_with_policy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    policy,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    seed: int = 0,
    flip: bool = False,
    cutout_last: bool = False,
    crop: int = 0,
    nesterov: bool = True,
    warmup_steps: int = 0,
    device=None,
    ckpt_path: str | Path | None = None,
    ckpt_every: int = 0,
    hooks: Any = None,
    stage: str | None = None,
) -> nn.Module:
    """SGD (Nesterov unless ``nesterov=False``; cosine schedule after ``warmup_steps`` of linear
    warm-up) for ``steps`` steps with one composite augmentation per image
    from ``policy`` (``None``: no augmentation), then an optional random horizontal flip, and with
    ``cutout_last`` a sampled Cutout applied last with mean fill, with ``crop`` a random window of
    that size first (:class:`MethodAugment`): the
    evaluation training of a policy, on :class:`fulcra.engine.Trainer` (this process only, even
    under ``torchrun``). With ``ckpt_path`` a run killed mid-training resumes to the same weights.
    Deterministic for a seed. A :class:`fulcra.engine.DatasetImages` view's ``workers`` decode the
    coming batches while the model computes (the same weights)."""
    device = torch.device(device or "cpu")
    aug = (
        MethodAugment(
            policy, policy.augmenter(), flip=flip, cutout_last=cutout_last, fill=channel_mean(images), crop=crop
        )
        if policy is not None
        else None
    )

    def transform(x, y, g):
        if aug is not None:
            idx, mags = policy.sample(x.shape[0], g, x.device)
            return aug(x, idx, mags, g), y
        if crop > 0:
            x = random_crops(x, crop, g)
        if flip:
            f = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
            x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        return to_input(x), y

    trainer = Trainer(
        model,
        TensorSplit(images, labels),
        lambda m, x, y: F.cross_entropy(m(x), y),
        max_steps=int(steps),
        batch_size=min(int(batch_size), images.shape[0]),
        optimizer="sgd",
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=bool(nesterov),
        warmup_steps=int(warmup_steps),
        device=device,
        seed=seed,
        ckpt_path=ckpt_path,
        ckpt_every=ckpt_every,
        hooks=hooks,
        stage=stage,
        batch_transform=transform,
        distributed=False,
        workers=int(getattr(images, "workers", 0) or 0),
    )
    return trainer.fit()
