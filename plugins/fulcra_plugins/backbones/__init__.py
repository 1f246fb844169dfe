"""Pretrained vision backbones: the bundled ``fulcra.backbones`` plugins.

- :mod:`.named`: DINOv2 (ViT-S/B/L/g, with or without 4 registers), EVA-02 and CLIP ViT-B/16 and
  ViT-L/14, one plugin per variant of :data:`BACKBONES` (``dinov2_vitg14_reg``, ``clip_vitb16``, ...).
- :class:`TimmBackbone` (plugin ``timm``): any ViT-like timm architecture, ``arch=``.
- :class:`ClipBackbone` (plugin ``open_clip``): any open_clip ViT config, ``arch=``.

All of them implement :class:`fulcra.interfaces.Backbone` (the contract a third party's backbone
meets too); timm and open_clip are imported lazily, a missing one raises
:class:`~fulcra.errors.MissingDependencyError` naming the extra. Weights come from local files only
(:mod:`fulcra.weights`); nothing is ever downloaded. ``tiny=True`` builds a small randomly
initialised model of the same family through the same code path (tests, offline demos)::

    bb = load_backbone("dinov2_vits14_reg", weights="~/ckpt/dinov2_vits14_reg4_pretrain.pth")
    out = bb.forward_tokens(bb.normalize(images01), n_last=3)
    out["cls"]    # list of 3 tensors [B, D]: final-normed CLS token of each of the last 3 blocks
    out["patch"]  # [B, D, H/14, W/14]: final-normed patch tokens of the last block

Consumers (teachers, students, extractors) build backbones through the registry
(:func:`fulcra.backbone.create_backbone`), so a third party's backbone works wherever one is named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fulcra.weights import load_state_dict_file

from .base import BaseBackbone
from .specs import BACKBONES, BackboneSpec

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BaseBackbone",
    "TimmBackbone",
    "ClipBackbone",
    "NamedTimmBackbone",
    "NamedClipBackbone",
    "load_backbone",
    "available_backbones",
    "resolve_weights",
    "load_state_dict_file",
]

# imported on first use: they import timm / open_clip, which a user may not have installed
_LAZY = {
    "TimmBackbone": ".vit_timm",
    "ClipBackbone": ".vit_open_clip",
    "NamedTimmBackbone": ".named_timm",
    "NamedClipBackbone": ".named_clip",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_backbones() -> list[str]:
    """Every backbone name the registry knows (bundled variants, ``timm``, ``open_clip``, third parties')."""
    import fulcra

    return sorted({s.name for s in fulcra.plugin_specs("backbones")})


def load_backbone(
    name: Any,
    weights: str | os.PathLike | None = None,
    *,
    tiny: bool = False,
    device: Any = "cpu",
    pretrained: bool = True,
) -> Any:
    """Build a backbone by name (or ``{name: ..., <own keys>}`` node) through the registry.

    Args:
        name: a ``fulcra.backbones`` plugin (``dinov2_vits14``, ``dinov2_vitg14_reg``,
            ``eva02_vitl14_clip``, ``clip_vitb16``, a third party's) or a node such as
            ``{"name": "timm", "arch": "vit_small_patch16_224"}``.
        weights: a local weight file; ``None`` looks in the caches (or nothing when ``tiny``).
        tiny: a small random model of the same family (tests, offline demos); loads ``weights`` if given.
        device: where to put the model.
        pretrained: ``False`` builds the architecture with random weights without looking for a file.

    Returns:
        A :class:`fulcra.interfaces.Backbone` in eval mode.

    Raises:
        UnknownPluginError: unknown name (with close matches). MissingDependencyError: timm /
        open_clip missing. WeightsNotFoundError: no weight file found. FormatError: the file does
        not fit the model.
    """
    from fulcra.backbone import create_backbone

    return create_backbone(name, weights=weights, tiny=tiny, pretrained=pretrained, device=device)


def resolve_weights(name: Any, weights: str | os.PathLike | None = None) -> Path | None:
    """The weight file backbone ``name`` would load: ``weights`` if given, else a cached copy.

    Raises:
        WeightsNotFoundError: with the file name to download by hand and where to put it.
    """
    from fulcra.backbone import locate_backbone_weights

    return locate_backbone_weights(name, weights)
