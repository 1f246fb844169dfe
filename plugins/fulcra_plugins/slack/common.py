"""Shared pieces of the SLACK search and evaluation: tensors from datasets, deterministic batches,
input normalisation, and plain supervised training with a policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fulcra.engine import Trainer, step_generator
from fulcra_plugins.data.digits import TensorImageDataset as TensorSplit

__all__ = ["TensorSplit", "as_tensors", "batch_indices", "to_input", "train_with_policy", "evaluate", "SEARCH_SPACES"]

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


def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, H, W] uint8, labels [N] int64)`` of a dataset yielding ``(image, label)``.

    In-memory datasets exposing ``images``/``labels`` are used directly; others are read item by item.
    """
    if hasattr(ds, "images") and hasattr(ds, "labels"):
        return ds.images, ds.labels
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(list(xs)), torch.as_tensor(ys, dtype=torch.int64)


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


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 ``images`` ``[N, C, H, W]``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, images.shape[0], batch):
            x = to_input(images[s : s + batch].to(device))
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
    device=None,
    ckpt_path: str | Path | None = None,
    ckpt_every: int = 0,
    hooks: Any = None,
    stage: str | None = None,
) -> nn.Module:
    """SGD (Nesterov, cosine schedule) for ``steps`` steps with one composite augmentation per image
    from ``policy`` (``None``: no augmentation), then an optional random horizontal flip: the
    evaluation training of a policy, on :class:`fulcra.engine.Trainer` (this process only, even
    under ``torchrun``). With ``ckpt_path`` a run killed mid-training resumes to the same weights.
    Deterministic for a seed."""
    device = torch.device(device or "cpu")
    aug = policy.augmenter() if policy is not None else None

    def transform(x, y, g):
        if aug is not None:
            x = policy.augment(x, g, aug)
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
        nesterov=True,
        device=device,
        seed=seed,
        ckpt_path=ckpt_path,
        ckpt_every=ckpt_every,
        hooks=hooks,
        stage=stage,
        batch_transform=transform,
        distributed=False,
    )
    return trainer.fit()
