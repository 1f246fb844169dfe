"""Shared pieces of the SLACK search and evaluation: tensors from datasets, deterministic batches,
input normalisation, and plain supervised training with a policy."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fulcra.engine import make_scheduler, step_generator
from fulcra_plugins.data.digits import TensorImageDataset as TensorSplit

__all__ = ["TensorSplit", "as_tensors", "batch_indices", "to_input", "train_with_policy", "evaluate", "SEARCH_SPACES"]

# the thesis' pools (§3.4.1): 15 standard transforms + the usual defaults of each benchmark + Hue
STANDARD_15 = [
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "auto_contrast",
    "equalize",
    "invert",
    "solarize",
    "posterize",
    "contrast",
    "brightness",
    "sharpness",
    "color",
]
SEARCH_SPACES = {
    "cifar": STANDARD_15 + ["cutout", "random_crop", "hue"],
    "imagenet": STANDARD_15 + ["cutout", "random_resized_crop", "hue"],
    "domainnet": STANDARD_15 + ["cutout", "random_resized_crop", "grayscale", "hue"],
    "all": STANDARD_15 + ["cutout", "random_crop", "random_resized_crop", "grayscale", "hue"],
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
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Plain SGD training (cosine schedule) with one composite augmentation per image from ``policy``
    (``None``: no augmentation) plus an optional random horizontal flip. Deterministic for a seed."""
    device = device or torch.device("cpu")
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    sched = make_scheduler(opt, steps)
    aug = policy.augmenter() if policy is not None else None
    for step in range(steps):
        idx = batch_indices(images.shape[0], batch_size, seed, step)
        x, y = images[idx].to(device), labels[idx].to(device)
        g = step_generator(seed, 11, step, device=device)
        if aug is not None:
            x = policy.augment(x, g, aug)
        if flip:
            f = torch.rand(x.shape[0], generator=g, device=device) < 0.5
            x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(model(to_input(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, float(loss))
    return model
