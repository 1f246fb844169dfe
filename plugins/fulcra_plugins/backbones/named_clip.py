"""The bundled CLIP variants (OpenAI ViT-B/16 and ViT-L/14, and the LAION-2B ViT-B/16 of the
official LUDVIG code, through open_clip), one ``fulcra.backbones`` plugin each; weights as for
:mod:`.named_timm`. Needs open_clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from .base import BaseBackbone
from .specs import BACKBONES, BackboneSpec, locate_spec_weights
from .vit_open_clip import ClipBackbone, build_clip_model

__all__ = ["NamedClipBackbone", "clip_vitb16", "clip_vitb16_laion2b", "clip_vitl14"]


class NamedClipBackbone(ClipBackbone):
    """A bundled CLIP variant (QuickGELU for OpenAI's weights, as their spec says). Args as :class:`fulcra_plugins.backbones.named_timm.NamedTimmBackbone`."""

    variant: ClassVar[str] = ""
    spec: ClassVar[BackboneSpec]
    conformance_params: ClassVar[dict] = {"tiny": True}

    def __init__(self, weights: str | None = None, tiny: bool = False, pretrained: bool = True, device: str = "cpu"):
        BaseBackbone.__init__(self)
        spec, name = self.spec, self.variant
        path = locate_spec_weights(name, spec, weights) if weights or (pretrained and not tiny) else None
        # OpenAI's weights were trained with QuickGELU, LAION's with GELU; a mismatch silently degrades features
        model, tokenizer = build_clip_model(
            spec.arch, name, spec.tiny if tiny else None, path, quick_gelu=spec.quick_gelu
        )
        self._wrap(name, model, tokenizer, spec.mean, spec.std)
        self.arch = spec.arch
        self.to(device).eval()

    @classmethod
    def locate_weights(cls, weights: str | None = None, **_: Any) -> Path:
        return locate_spec_weights(cls.variant, cls.spec, weights)


def _variant(name: str) -> type:
    spec = BACKBONES[name]
    doc = f"Backbone ``{name}``: {spec.arch}, D={spec.embed_dim}, patch {spec.patch_size}, {spec.depth} blocks.\n\n" + (
        NamedClipBackbone.__doc__ or ""
    )
    return type(
        name,
        (NamedClipBackbone,),
        {"variant": name, "spec": spec, "__doc__": doc, "__module__": __name__, "__qualname__": name},
    )


clip_vitb16 = _variant("clip_vitb16")
clip_vitb16_laion2b = _variant("clip_vitb16_laion2b")
clip_vitl14 = _variant("clip_vitl14")
