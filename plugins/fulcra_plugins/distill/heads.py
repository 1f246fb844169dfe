"""Prediction heads of app. B.1.4 and the token-to-feature step they read.

Classification: the CLS tokens of the last ``n_cls`` blocks concatenated, optionally with the average
of the last block's patch tokens, so ``n_in = D · (n_cls + avgpool)``; a linear head or an MLP with
``n_hidden = n_in`` for small encoders and ``√(n_in · n_out)`` for large ones (ViT-L/g, D ≥ 1024).

Segmentation: DINOv2's linear protocol on the last block's patch tokens — BatchNorm, 1×1 conv,
bilinear upsampling to the label resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fulcra.errors import ConfigError

__all__ = ["cls_features", "hidden_size", "ClassificationHead", "LinearSegHead"]


def cls_features(tokens: dict, avgpool: bool = False) -> torch.Tensor:
    """``forward_tokens`` output -> ``[B, D·(n_cls + avgpool)]`` head input (oldest block first)."""
    parts = list(tokens["cls"])
    if avgpool:
        parts.append(tokens["patch"].mean(dim=(2, 3)))
    return torch.cat(parts, dim=-1)


def hidden_size(n_in: int, n_out: int, embed_dim: int, rule: str = "auto") -> int:
    """``n_hidden`` of the MLP head (app. B.1.4).

    ``rule``: ``"n_in"``, ``"sqrt"`` (√(n_in·n_out)) or ``"auto"``: ``n_in`` for encoders narrower
    than 1024 (ViT-S/B), ``√(n_in·n_out)`` for ViT-L/g, whose wide features then shrink progressively.
    """
    if rule == "auto":
        rule = "sqrt" if embed_dim >= 1024 else "n_in"
    if rule == "n_in":
        return int(n_in)
    if rule == "sqrt":
        return max(1, int(round(math.sqrt(n_in * n_out))))
    raise ConfigError(f"hidden size rule must be auto, n_in or sqrt, got {rule!r}")


class ClassificationHead(nn.Module):
    """Linear or MLP (Linear-GELU-Linear) head on pooled features.

    Args:
        n_in: input features. n_out: classes. kind: ``"mlp"`` or ``"linear"``. n_hidden: MLP width.
    Shape: ``[B, n_in] -> [B, n_out]``.
    """

    def __init__(self, n_in: int, n_out: int, kind: str = "mlp", n_hidden: int | None = None):
        super().__init__()
        if kind == "linear":
            self.net = nn.Linear(n_in, n_out)
        elif kind == "mlp":
            h = int(n_hidden or n_in)
            self.net = nn.Sequential(nn.Linear(n_in, h), nn.GELU(), nn.Linear(h, n_out))
        else:
            raise ConfigError(f"head must be 'mlp' or 'linear', got {kind!r}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LinearSegHead(nn.Module):
    """DINOv2 linear segmentation head: BatchNorm2d + 1×1 conv, upsampled bilinearly.

    Shape: ``[B, D, h, w]`` patch tokens -> ``[B, K, H, W]`` logits (``size=(H, W)``; none keeps h, w).
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(n_in)
        self.conv = nn.Conv2d(n_in, n_out, kernel_size=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.conv(self.bn(x))
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y
