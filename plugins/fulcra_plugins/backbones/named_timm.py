"""The bundled timm variants (DINOv2 S/B/L/g with or without registers, EVA-02), one
``fulcra.backbones`` plugin per entry of :data:`~fulcra_plugins.backbones.specs.BACKBONES`.

Each is built as ``create("backbones", "dinov2_vitg14_reg", weights=..., tiny=..., pretrained=...,
device=...)`` and has no keys of its own. Weights are looked for under the official file name in
``$FULCRA_WEIGHTS_DIR``, ``~/.cache/fulcra/weights``, torch hub's ``checkpoints/`` and the Hugging
Face cache (:func:`fulcra.weights.find_weights`); never downloaded. Needs timm (imported here, so
a missing timm shows in ``fulcra plugins`` with its extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from .base import BaseBackbone
from .specs import BACKBONES, BackboneSpec, locate_spec_weights
from .vit_timm import TimmBackbone, build_timm_model

__all__ = [
    "NamedTimmBackbone",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "eva02_vitt14",
    "eva02_vits14",
    "eva02_vitb14",
    "eva02_vitl14",
    "eva02_vitl14_clip",
]


class NamedTimmBackbone(TimmBackbone):
    """A bundled timm variant (DINOv2, EVA-02): architecture, weight file names and tiny size from
    its :class:`~fulcra_plugins.backbones.specs.BackboneSpec`.

    Args:
        weights: local file (official ``*_pretrain.pth`` or timm safetensors); ``None``: the caches.
        tiny: a small random model of the family (relative sizes kept: S < B < L < g).
        pretrained: ``False``: full-size architecture, random weights, no file looked for.
        device: where to put it.
    """

    variant: ClassVar[str] = ""
    spec: ClassVar[BackboneSpec]
    conformance_params: ClassVar[dict] = {"tiny": True}

    def __init__(self, weights: str | None = None, tiny: bool = False, pretrained: bool = True, device: str = "cpu"):
        BaseBackbone.__init__(self)
        spec, name = self.spec, self.variant
        path = locate_spec_weights(name, spec, weights) if weights or (pretrained and not tiny) else None
        tiny_kw = {**spec.tiny, "img_size": 4 * spec.patch_size} if tiny else None
        self._wrap(name, build_timm_model(spec.arch, name, tiny_kw, path), spec.patch_size, spec.mean, spec.std)
        self.arch = spec.arch
        self.to(device).eval()

    @classmethod
    def locate_weights(cls, weights: str | None = None, **_: Any) -> Path:
        return locate_spec_weights(cls.variant, cls.spec, weights)


def _variant(name: str) -> type:
    spec = BACKBONES[name]
    doc = f"Backbone ``{name}``: {spec.arch}, D={spec.embed_dim}, patch {spec.patch_size}, {spec.depth} blocks.\n\n" + (
        NamedTimmBackbone.__doc__ or ""
    )
    return type(
        name,
        (NamedTimmBackbone,),
        {"variant": name, "spec": spec, "__doc__": doc, "__module__": __name__, "__qualname__": name},
    )


dinov2_vits14 = _variant("dinov2_vits14")
dinov2_vits14_reg = _variant("dinov2_vits14_reg")
dinov2_vitb14 = _variant("dinov2_vitb14")
dinov2_vitb14_reg = _variant("dinov2_vitb14_reg")
dinov2_vitl14 = _variant("dinov2_vitl14")
dinov2_vitl14_reg = _variant("dinov2_vitl14_reg")
dinov2_vitg14 = _variant("dinov2_vitg14")
dinov2_vitg14_reg = _variant("dinov2_vitg14_reg")
eva02_vitt14 = _variant("eva02_vitt14")
eva02_vits14 = _variant("eva02_vits14")
eva02_vitb14 = _variant("eva02_vitb14")
eva02_vitl14 = _variant("eva02_vitl14")
eva02_vitl14_clip = _variant("eva02_vitl14_clip")
