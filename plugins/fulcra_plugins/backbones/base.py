"""Shared work of the bundled backbones: normalisation, the ``n_last`` check, strict state-dict loading.

A third-party backbone does not need this class: :class:`fulcra.interfaces.Backbone` is the
contract. It is public so that one may subclass it anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulcra.errors import ConfigError, FormatError

__all__ = ["BaseBackbone", "strip_wrapper", "load_strict"]


class BaseBackbone(nn.Module):
    """A pretrained encoder with the token interface of :class:`fulcra.interfaces.Backbone`.

    Attributes:
        name: the backbone name (``dinov2_vits14_reg``, ``clip_vitb16``, ``timm:<arch>``, ...).
        embed_dim: token width ``D``.
        patch_size: pixels per patch side; inputs should be multiples of it.
        num_prefix_tokens: CLS + register tokens before the patch tokens.
        depth: number of transformer blocks.
        mean, std: per-channel normalisation for images in [0, 1] (3-tuples).
    """

    name: str
    embed_dim: int
    patch_size: int
    num_prefix_tokens: int
    depth: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` float in [0, 1] (or uint8) -> normalised float ``[B, 3, H, W]``."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        """Tokens of the last blocks.

        Args:
            images: ``[B, 3, H, W]`` normalised (see :meth:`normalize`); ``H, W`` multiples of
                ``patch_size``.
            n_last: how many final blocks to return CLS tokens for (``1 <= n_last <= depth``).

        Returns:
            ``{"cls": [n_last tensors [B, D]] (oldest block first, final norm applied),
            "patch": [B, D, H/p, W/p] (last block, final norm applied)}``.
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        return self.forward_tokens(images, n_last=n_last)

    def _check_n_last(self, n_last: int) -> None:
        if not 1 <= n_last <= self.depth:
            raise ConfigError(f"n_last={n_last} out of range for backbone '{self.name}' with {self.depth} blocks")


def strip_wrapper(sd: dict) -> dict:
    """Accept a wrapper's ``state_dict()`` (keys ``model.*``) as well as the bare model's."""
    if sd and all(k.startswith("model.") for k in sd):
        return {k[len("model.") :]: v for k, v in sd.items()}
    return sd


def load_strict(model: nn.Module, sd: dict, path: Path, name: str) -> None:
    """Load ``sd`` into ``model``; any missing, unexpected or misshaped key is a one-line FormatError."""
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even when strict=False
        detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise FormatError(f"{path}: does not match backbone '{name}' ({detail.strip()[:200]})") from exc
    missing = [k for k in missing if not k.endswith("attn_mask")]
    if missing or unexpected:
        raise FormatError(
            f"{path}: does not match backbone '{name}' ({len(missing)} missing keys e.g. {missing[:3]}, "
            f"{len(unexpected)} unexpected e.g. {list(unexpected)[:3]})"
        )
