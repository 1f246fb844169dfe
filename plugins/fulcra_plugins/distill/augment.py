"""Batched, seeded augmentations of app. B.1.3 that act on images and (for segmentation) label maps.

Everything draws from an explicit ``torch.Generator`` so the Trainer's exact resume holds, and the
same augmented batch is fed to teacher and student (Beyer et al., 2022).

- ``deterministic``: nothing random (the teacher-probing setting that allows the feature cache).
- ``random``: RandomResizedCrop (scale ``(0.08, 1)`` for classification, ``(0.25, 1)`` for
  segmentation, the area range of mmsegmentation's resize 0.5-2 + crop), horizontal flip with
  probability 0.5 and ColorJitter (brightness, contrast, saturation in ``[0.6, 1.4]``).
- ``mmseg``: for segmentation datasets that augment each sample themselves with mmseg's pipeline
  (``ade20k``, ``cityscapes``, ``pascal_voc``: see :mod:`fulcra_plugins.data.seg_transforms`):
  labelled images pass through unchanged, images without labels (the synthetic ones, app. B.1.3:
  "data augmentation on both training and synthetic images") get the same pipeline here, image by
  image (RandomResize of the short side by 0.5-2, RandomCrop back to the input size, RandomFlip,
  PhotoMetricDistortion, Pad), from the step's generator.
- :func:`mixup`: Mixup with ``Beta(a, a)``, ``a = 0.2``; applied to original images only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fulcra.errors import ConfigError

__all__ = ["augment_batch", "mixup", "AUGMENTATIONS"]

AUGMENTATIONS = ("deterministic", "random", "mmseg")


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device if gen is not None else device).to(device)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    mode: str,
    gen: torch.Generator | None,
    scale: tuple[float, float] | None = None,
    jitter: float = 0.4,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1].
        labels: ``[B]`` class ids (left as is) or ``[B, H, W]`` label maps (warped with the images,
            nearest neighbour), or ``None``.
        mode: ``deterministic`` or ``random``.
        gen: the step's generator.
        scale: crop area range; default (0.08, 1) for class labels, (0.25, 1) for label maps.
        jitter: ColorJitter strength (factors drawn in ``[1 - jitter, 1 + jitter]``).
        flip: random horizontal flips (off for data where mirroring changes the class, e.g. digits).

    Returns:
        ``(images [B, 3, H, W] float in [0, 1], labels)``.
    """
    if mode == "deterministic":
        return images, labels
    if mode == "mmseg":
        return (images, labels) if labels is not None else (_mmseg_unlabelled(images, gen), None)
    if mode != "random":
        raise ConfigError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {mode!r}")
    B, _, H, W = images.shape
    dev = images.device
    dense = labels is not None and labels.ndim == 3
    lo, hi = scale or ((0.25, 1.0) if dense else (0.08, 1.0))
    area = _uniform(B, lo, hi, gen, dev)
    log_r = _uniform(B, math.log(3 / 4), math.log(4 / 3), gen, dev)
    ratio = torch.exp(log_r)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / W
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - sw) * (2 * _uniform(B, 0, 1, gen, dev) - 1)  # crop centre in [-1, 1] coordinates
    cy = (1 - sh) * (2 * _uniform(B, 0, 1, gen, dev) - 1)
    flip = torch.where(_uniform(B, 0, 1, gen, dev) < (0.5 if flip else 0.0), -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if dense:
        lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
        labels = lab[:, 0].round().long()
    if jitter > 0:
        b = _uniform(B, 1 - jitter, 1 + jitter, gen, dev).view(B, 1, 1, 1)
        c = _uniform(B, 1 - jitter, 1 + jitter, gen, dev).view(B, 1, 1, 1)
        s = _uniform(B, 1 - jitter, 1 + jitter, gen, dev).view(B, 1, 1, 1)
        out = (out * b).clamp(0, 1)
        gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        out = ((out - gray.mean(dim=(2, 3), keepdim=True)) * c + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
        gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
        out = (gray + (out - gray) * s).clamp(0, 1)
    return out, labels


def _mmseg_unlabelled(images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """mmseg's training pipeline on images without labels, ``[B, 3, H, W]`` float in [0, 1] -> same
    shape: the resize scale is ``(4H, H)`` so the ratio range acts on the short side as it does on a
    dataset image at its ``(2048, s)`` scale; no label, so no ``cat_max_ratio`` retries."""
    from fulcra_plugins.data.seg_transforms import MmsegTrainPipeline

    B, _, H, W = images.shape
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=_dev(gen))))
    pipe = MmsegTrainPipeline(crop_size=(H, W), scale=(4 * max(H, W), min(H, W)), cat_max_ratio=1.0)
    u8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    dummy = torch.zeros(H, W, dtype=torch.long)
    out = torch.stack([pipe(u8[i], dummy, g)[0] for i in range(B)])
    return out.to(images.device).float() / 255.0


def _dev(gen: torch.Generator | None):
    return gen.device if gen is not None else "cpu"


def mixup(images: torch.Tensor, alpha: float, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup of a batch with a shuffled copy of itself.

    Returns ``(mixed [B, 3, H, W], permutation [B], lam)``; the task loss is
    ``lam·ℓ(y) + (1 − lam)·ℓ(y[perm])``. ``alpha <= 0`` returns the batch unchanged (lam = 1).
    """
    B = images.shape[0]
    if alpha <= 0 or B < 2:
        return images, torch.arange(B, device=images.device), 1.0
    # torch's Beta takes no generator: seed numpy's from the step generator instead
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device if gen is not None else "cpu"))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(B, generator=gen, device=gen.device if gen is not None else images.device).to(images.device)
    return lam * images + (1 - lam) * images[perm], perm, float(lam)
