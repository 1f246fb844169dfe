"""Probed teachers: a frozen pretrained encoder plus a trainable task head (thesis §4.3.1, step 1).

The encoder is held outside the module's parameter registry, so ``parameters()``, ``state_dict()``
and DDP see only the head (checkpoints stay small and the encoder can never receive a gradient),
while ``.to()`` still moves it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fulcra.backbone import backbone_key, create_backbone
from fulcra.errors import ConfigError

from ._common import InputSpec
from .heads import ClassificationHead, LinearSegHead, cls_features, hidden_size

__all__ = ["ProbedTeacher", "ProbedSegTeacher"]


class _Frozen(nn.Module, InputSpec):
    def __init__(self, owner: str, backbone: Any, weights: str | None, tiny: bool, image_size: int):
        super().__init__()
        bb = create_backbone(backbone, weights=weights, tiny=tiny, owner=owner)
        for p in bb.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "backbone", bb.eval())  # unregistered on purpose (see module doc)
        self.backbone_name = backbone_key(backbone)
        p = int(bb.patch_size)
        if image_size % p:
            raise ConfigError(
                f"{owner}: image_size {image_size} must be a multiple of the patch size {p} of backbone '{self.backbone_name}'"
            )
        self.image_size = int(image_size)
        self.embed_dim = int(bb.embed_dim)

    def normalize_resized(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.normalize(images)

    def _apply(self, fn, recurse=True):  # keep the unregistered encoder on the head's device/dtype
        super()._apply(fn, recurse)
        self.backbone._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, no statistics updates
        return self


class ProbedTeacher(_Frozen):
    """A frozen encoder (DINOv2, EVA-02, CLIP) probed with a linear or MLP classification head.

    The head reads the final-normed CLS tokens of the last ``n_cls`` blocks, concatenated, plus the
    average-pooled patch tokens when ``avgpool`` (app. B.1.4: ``n_cls`` = 3 for fine-grained tasks,
    4 and ``avgpool`` for DomainNet).

    Args:
        backbone: a ``fulcra.backbones`` plugin name (``dinov2_vitg14_reg``, ``clip_vitb16``, a third
            party's) or a node with its own keys (``{name: timm, arch: vit_base_patch16_224}``).
        weights: local weight file (``None``: the user's caches; see docs/distill.md).
        tiny: a tiny random encoder of the same family (tests; or with ``weights`` from the
            ``distill-digits`` recipe's own pre-training).
        num_classes: number of classes (set by the workflow from the dataset).
        head: ``mlp`` (thesis default for classification) or ``linear``.
        n_cls: number of final blocks whose CLS tokens are concatenated.
        avgpool: also concatenate the mean of the last block's patch tokens.
        hidden: MLP width rule: ``auto`` (n_in for ViT-S/B, √(n_in·n_out) for ViT-L/g), ``n_in``, ``sqrt``.
        image_size: side of the (square) encoder input; a multiple of the patch size.

    Call: ``[B, 3, S, S]`` prepared images -> ``[B, num_classes]`` logits. ``encode`` -> ``[B, n_in]``.
    """

    task = "classification"
    conformance_params = {"backbone": "dinov2_vits14", "tiny": True, "n_cls": 2, "image_size": 28}

    def __init__(
        self,
        backbone: str | dict = "dinov2_vitg14_reg",
        weights: str | None = None,
        tiny: bool = False,
        num_classes: int = 10,
        head: str = "mlp",
        n_cls: int = 3,
        avgpool: bool = False,
        hidden: str = "auto",
        image_size: int = 224,
    ):
        super().__init__("teachers plugin 'probed'", backbone, weights, tiny, image_size)
        depth = getattr(self.backbone, "depth", None)
        if n_cls < 1 or (depth is not None and n_cls > depth):
            raise ConfigError(f"teachers plugin 'probed': n_cls={n_cls} outside 1..{depth}")
        self.n_cls, self.avgpool = int(n_cls), bool(avgpool)
        self.n_in = self.embed_dim * (self.n_cls + int(self.avgpool))
        self.head = ClassificationHead(
            self.n_in, num_classes, head, hidden_size(self.n_in, num_classes, self.embed_dim, hidden)
        )
        self.num_classes = int(num_classes)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features ``[B, n_in]`` of prepared images ``[B, 3, S, S]`` (cacheable)."""
        return cls_features(self.backbone.forward_tokens(images, n_last=self.n_cls), self.avgpool)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Representation for PCA plots: the last CLS token ``[B, D]``."""
        with torch.no_grad():
            return self.backbone.forward_tokens(images)["cls"][-1]


class ProbedSegTeacher(_Frozen):
    """A frozen encoder probed with DINOv2's linear segmentation head (BN + 1×1 conv + upsampling).

    Args:
        backbone, weights, tiny, image_size: as for ``probed`` (thesis: 560 px for segmentation).
        num_classes: number of segmentation classes.

    Call: ``[B, 3, S, S]`` -> ``[B, num_classes, S, S]`` logits. ``encode`` -> ``[B, D, S/p, S/p]``.
    """

    task = "segmentation"
    conformance_params = {"backbone": "dinov2_vits14", "tiny": True, "image_size": 28}

    def __init__(
        self,
        backbone: str | dict = "dinov2_vitg14_reg",
        weights: str | None = None,
        tiny: bool = False,
        num_classes: int = 21,
        image_size: int = 560,
    ):
        super().__init__("teachers plugin 'probed_seg'", backbone, weights, tiny, image_size)
        self.head = LinearSegHead(self.embed_dim, num_classes)
        self.num_classes = int(num_classes)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_tokens(images)["patch"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(images), size=tuple(images.shape[-2:]))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``[B, D, h, w]`` (PCA plot of Fig. 4.4)."""
        return self.encode(images)
