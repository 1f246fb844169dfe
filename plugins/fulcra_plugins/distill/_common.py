"""What teachers and students share: input preparation (resize + normalise) and output resizing."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fulcra.errors import ConfigError

__all__ = ["InputSpec", "resize_logits", "check_task"]

TASKS = ("classification", "segmentation")


def check_task(owner: str, task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"{owner}: task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


class InputSpec:
    """Mixin: ``prepare(images)`` maps ``[B, 3, H, W]`` float in [0, 1] to what the model reads.

    It resizes to ``image_size`` (bilinear, antialiased; ``None`` keeps the size) and normalises with
    :meth:`normalize_resized` (``mean``/``std`` by default; models on a backbone use the backbone's
    own ``normalize``). Teacher and student receive the same augmented batch and each prepares it for
    itself, so a 518-px DINOv2 teacher and a 224-px ResNet student can be trained together.
    """

    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    image_size: int | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        if self.image_size and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return self.normalize_resized(images)

    def normalize_resized(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in [0, 1] -> what the model reads (per-channel ``mean``/``std``)."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.prepare(images)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Dense logits ``[B, K, h, w]`` -> ``[B, K, H, W]`` (bilinear); class logits unchanged."""
    if logits.ndim == 4 and tuple(logits.shape[-2:]) != tuple(size):
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits
