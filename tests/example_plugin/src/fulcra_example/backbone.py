"""A third party's backbone, written only against :class:`fulcra.interfaces.Backbone`.

``PatchMixer`` is a small convolutional patch encoder: a ``patch_size`` x ``patch_size`` patch
embedding, then ``depth`` residual blocks that mix tokens spatially (depthwise 3x3) and across
channels (MLP). It has no CLS token, so the global embedding of a block is its mean patch token.
Registered as ``patch_mixer`` in the ``fulcra.backbones`` group, it can be named wherever fulcra
takes a backbone: ``teacher.backbone=patch_mixer``, ``student.backbone=patch_mixer``,
``extractor=vit extractor.backbone=patch_mixer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulcra.errors import ConfigError, FormatError
from fulcra.weights import find_weights, load_state_dict_file

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.spatial = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, h, w]
        x = x + self.spatial(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMixer(nn.Module):
    """Convolutional patch encoder with the fulcra backbone token interface.

    Args:
        width: token width ``D`` (halved when ``tiny``).
        depth: number of blocks.
        patch_size: pixels per patch side.
        weights: a local state dict file (safetensors or ``torch.save``); ``None`` looks for
            ``patch_mixer.safetensors`` in fulcra's weight folders when ``pretrained``.
        tiny: half width, random; loads ``weights`` when given.
        pretrained: ``False``: random weights, no file looked for.
        device: where to put it.
    """

    def __init__(
        self,
        width: int = 32,
        depth: int = 3,
        patch_size: int = 4,
        weights: str | None = None,
        tiny: bool = False,
        pretrained: bool = True,
        device: str = "cpu",
    ):
        super().__init__()
        if width < 2 or depth < 1 or patch_size < 1:
            raise ConfigError(
                f"backbones plugin 'patch_mixer': width >= 2, depth >= 1, patch_size >= 1 (got {width}, {depth}, {patch_size})"
            )
        self.embed_dim = int(width // 2 if tiny else width)
        self.patch_size = int(patch_size)
        self.depth = int(depth)
        self.embed = nn.Conv2d(3, self.embed_dim, self.patch_size, self.patch_size)
        self.blocks = nn.ModuleList(_Block(self.embed_dim) for _ in range(self.depth))
        self.norm = nn.GroupNorm(1, self.embed_dim)
        path = self.locate_weights(weights) if weights or (pretrained and not tiny) else None
        if path is not None:
            try:
                self.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                raise FormatError(f"{path}: not a patch_mixer state dict ({' '.join(str(exc).split())[:200]})") from exc
        self.to(device).eval()

    @classmethod
    def locate_weights(cls, weights: str | None = None, **_: Any) -> Path:
        return find_weights(
            "backbone 'patch_mixer'",
            weights,
            files=("patch_mixer.safetensors",),
            url="your own training run (fulcra-example ships no weights)",
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in [0, 1] or uint8 -> normalised float ``[B, 3, H, W]``."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        """``[B, 3, H, W]`` normalised -> ``{"cls": n_last x [B, D], "patch": [B, D, H/p, W/p]}``."""
        if not 1 <= n_last <= self.depth:
            raise ConfigError(f"backbones plugin 'patch_mixer': n_last={n_last} outside 1..{self.depth}")
        x = self.embed(images)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(self.norm(x))
        return {"cls": [o.mean(dim=(2, 3)) for o in outs[-n_last:]], "patch": outs[-1]}

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        return self.forward_tokens(images)
