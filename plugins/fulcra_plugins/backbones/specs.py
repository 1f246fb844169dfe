"""What fulcra knows about its bundled backbone variants: architecture, dimensions, weight files.

Each entry of :data:`BACKBONES` is registered as a ``fulcra.backbones`` plugin of the same name
(:mod:`fulcra_plugins.backbones.named`); architectures not listed here are reachable through the
generic ``timm`` and ``open_clip`` backbones with ``arch=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fulcra.weights import find_weights

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_VIT",
    "locate_spec_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """What fulcra knows about one backbone variant.

    Attributes:
        family: ``"timm"`` or ``"clip"``.
        arch: timm model name or open_clip model name.
        embed_dim: token width ``D``.
        patch_size: pixels per patch side.
        depth: number of transformer blocks.
        num_prefix_tokens: CLS + register tokens.
        mean, std: input normalisation (per channel, images in [0, 1]).
        files: accepted weight file names (first = official name), searched in the caches.
        hf_hub: Hugging Face repo id whose cached snapshot holds the weights (timm/open_clip format).
        url: where a user can get the official file by hand (printed in errors; never fetched).
        tiny: keyword overrides that make the tiny random variant.
        clip_embed_dim: joint image-text space size (CLIP only).
        quick_gelu: the CLIP was trained with QuickGELU (OpenAI's weights; CLIP only). A mismatch
            loads without error and silently degrades the features.
    """

    family: str
    arch: str
    embed_dim: int
    patch_size: int
    depth: int
    num_prefix_tokens: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    files: tuple[str, ...]
    hf_hub: str | None = None
    url: str = ""
    tiny: dict = field(default_factory=dict)
    clip_embed_dim: int = 0
    quick_gelu: bool = False


def _dinov2(size: str, arch_size: str, dim: int, depth: int, reg: bool) -> BackboneSpec:
    suffix = "_reg4" if reg else ""
    official = f"dinov2_vit{size}14{suffix}_pretrain.pth"
    arch = f"vit_{arch_size}_patch14{suffix}_dinov2"
    return BackboneSpec(
        family="timm",
        arch=arch,
        embed_dim=dim,
        patch_size=14,
        depth=depth,
        num_prefix_tokens=1 + (4 if reg else 0),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        files=(official, f"{arch}.safetensors"),
        hf_hub=f"timm/{arch}.lvd142m",
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{official}",
        # LayerScale starts at 1 in tiny models: DINOv2's 1e-5 makes a small model trained from
        # scratch on little data barely move (measured: 66% vs 75% on digits after 15 epochs)
        tiny={**TINY_VIT[size], "init_values": 1.0},
    )


# tiny variants keep the family's relative sizes (S < B < L < g) so a tiny teacher is wider than a
# tiny student, as in the thesis' experiments
TINY_VIT = {
    "t": {"embed_dim": 32, "depth": 3, "num_heads": 2},
    "s": {"embed_dim": 48, "depth": 3, "num_heads": 2},
    "b": {"embed_dim": 96, "depth": 3, "num_heads": 4},
    "l": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "g": {"embed_dim": 192, "depth": 4, "num_heads": 4},
}


def _eva02(arch: str, tag: str, dim: int, depth: int, mean, std, size: str) -> BackboneSpec:
    return BackboneSpec(
        family="timm",
        arch=arch,
        embed_dim=dim,
        patch_size=14,
        depth=depth,
        num_prefix_tokens=1,
        mean=mean,
        std=std,
        files=(f"{arch}.safetensors", f"{arch}.pth"),
        hf_hub=f"timm/{arch}.{tag}",
        url=f"https://huggingface.co/timm/{arch}.{tag}",
        tiny=TINY_VIT[size],
    )


BACKBONES: dict[str, BackboneSpec] = {}
for _s, _a, _d, _n in (
    ("s", "small", 384, 12),
    ("b", "base", 768, 12),
    ("l", "large", 1024, 24),
    ("g", "giant", 1536, 40),
):
    BACKBONES[f"dinov2_vit{_s}14"] = _dinov2(_s, _a, _d, _n, reg=False)
    BACKBONES[f"dinov2_vit{_s}14_reg"] = _dinov2(_s, _a, _d, _n, reg=True)
BACKBONES.update(
    {
        "eva02_vitt14": _eva02("eva02_tiny_patch14_224", "mim_in22k", 192, 12, IMAGENET_MEAN, IMAGENET_STD, "t"),
        "eva02_vits14": _eva02("eva02_small_patch14_224", "mim_in22k", 384, 12, IMAGENET_MEAN, IMAGENET_STD, "s"),
        "eva02_vitb14": _eva02("eva02_base_patch14_224", "mim_in22k", 768, 12, IMAGENET_MEAN, IMAGENET_STD, "b"),
        "eva02_vitl14": _eva02("eva02_large_patch14_224", "mim_in22k", 1024, 24, IMAGENET_MEAN, IMAGENET_STD, "l"),
        "eva02_vitl14_clip": _eva02("eva02_large_patch14_clip_224", "merged2b", 1024, 24, CLIP_MEAN, CLIP_STD, "l"),
        "clip_vitb16": BackboneSpec(
            family="clip",
            arch="ViT-B-16",
            embed_dim=768,
            patch_size=16,
            depth=12,
            num_prefix_tokens=1,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            clip_embed_dim=512,
            quick_gelu=True,
            files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "clip_vitb16.safetensors"),
            hf_hub="timm/vit_base_patch16_clip_224.openai",
            url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai (open_clip_model.safetensors)",
            tiny={
                "embed_dim": 32,
                "vision": {"width": 48, "layers": 3, "patch_size": 16, "image_size": 64},
                "text": {"width": 32, "heads": 2, "layers": 1},
            },
        ),
        # the OpenCLIP weights of the official LUDVIG code (clip_utils/openclip_encoder.py: ViT-B-16,
        # pretrained="laion2b_s34b_b88k"), as LERF and LangSplat; standard GELU
        "clip_vitb16_laion2b": BackboneSpec(
            family="clip",
            arch="ViT-B-16",
            embed_dim=768,
            patch_size=16,
            depth=12,
            num_prefix_tokens=1,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            clip_embed_dim=512,
            quick_gelu=False,
            files=("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "clip_vitb16_laion2b.safetensors"),
            hf_hub="laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
            url="https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K (open_clip_pytorch_model.bin)",
            tiny={
                "embed_dim": 32,
                "vision": {"width": 48, "layers": 3, "patch_size": 16, "image_size": 64},
                "text": {"width": 32, "heads": 2, "layers": 1},
            },
        ),
        "clip_vitl14": BackboneSpec(
            family="clip",
            arch="ViT-L-14",
            embed_dim=1024,
            patch_size=14,
            depth=24,
            num_prefix_tokens=1,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            clip_embed_dim=768,
            quick_gelu=True,
            files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "clip_vitl14.safetensors"),
            hf_hub="timm/vit_large_patch14_clip_224.openai",
            url="https://huggingface.co/timm/vit_large_patch14_clip_224.openai (open_clip_model.safetensors)",
            tiny={
                "embed_dim": 32,
                "vision": {"width": 48, "layers": 3, "patch_size": 14, "image_size": 56},
                "text": {"width": 32, "heads": 2, "layers": 1},
            },
        ),
    }
)


def locate_spec_weights(name: str, spec: BackboneSpec, weights: str | None = None) -> Path:
    """The weight file of bundled variant ``name``: ``weights`` if given, else its official file name
    (then ``<name>.safetensors``) in the caches of :func:`fulcra.weights.find_weights`."""
    # open_clip's file names are the same for every model: only a renamed copy is looked for by name
    own = [f for f in spec.files if not f.startswith("open_clip")]
    files = tuple(dict.fromkeys([*own, f"{name}.safetensors"]))
    return find_weights(f"backbone '{name}'", weights, files=files, url=spec.url, hf_repo=spec.hf_hub, torch_hub=True)
