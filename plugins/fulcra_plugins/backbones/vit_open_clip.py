"""open_clip ViTs as backbones: the generic ``open_clip`` backbone (any open_clip ViT config,
``arch=``) and the wrapper the bundled CLIP variants share, with dense joint-space patch
embeddings (MaskCLIP) and text embeddings for the ``clip`` extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fulcra.errors import ConfigError, MissingDependencyError
from fulcra.weights import find_weights, load_state_dict_file

try:  # imported here so that `fulcra plugins` shows a missing open_clip with its extra
    import open_clip
except ImportError as exc:
    raise MissingDependencyError("CLIP backbones need open_clip: pip install 'fulcra[clip]'", extra="clip") from exc

from .base import BaseBackbone, load_strict, strip_wrapper
from .specs import CLIP_MEAN, CLIP_STD

__all__ = ["ClipBackbone", "build_clip_model", "GENERIC_TINY"]

#: what ``tiny=True`` makes of a generic open_clip ViT: joint space 32, 3 vision blocks of width 48,
#: one text block; the patch size is the architecture's and the image side 4 patches
GENERIC_TINY = {"embed_dim": 32, "vision": {"width": 48, "layers": 3}, "text": {"width": 32, "heads": 2, "layers": 1}}


def build_clip_model(
    arch: str, name: str, tiny: dict | None = None, path: Path | None = None, quick_gelu: bool = False
) -> tuple[nn.Module, Any]:
    """An open_clip ``CLIP`` from its model config (never downloads), optionally shrunk, loading
    ``path``; returns ``(model, tokenizer)``.

    Raises:
        ConfigError: no such open_clip config. FormatError: the file does not fit.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise ConfigError(
            f"backbone '{name}': open_clip has no model config {arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    if not isinstance(cfg.get("vision_cfg"), dict) or cfg["vision_cfg"].get("timm_model_name"):
        raise ConfigError(f"backbone '{name}': open_clip config {arch!r} has no ViT image tower")
    if tiny:
        cfg["embed_dim"] = tiny["embed_dim"]
        vision = {**tiny["vision"]}
        vision.setdefault("patch_size", int(cfg["vision_cfg"].get("patch_size", 16)))
        vision.setdefault("image_size", 4 * vision["patch_size"])
        cfg["vision_cfg"].update(vision)
        cfg["vision_cfg"]["head_width"] = 16
        cfg["text_cfg"].update(tiny["text"])
    quick_gelu = bool(cfg.pop("quick_gelu", False) or quick_gelu)
    model_cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    model = model_cls(**cfg, quick_gelu=quick_gelu)
    if path is not None:
        load_strict(model, strip_wrapper(load_state_dict_file(path)), path, name)
    return model, open_clip.get_tokenizer(arch)


class ClipBackbone(BaseBackbone):
    """CLIP (open_clip) with token access, dense patch embeddings and text embeddings.

    ``encode_image(images) -> [B, E]`` and ``encode_text(texts) -> [T, E]`` are in the joint space
    (not L2-normalised). ``patch_embeddings(images, mode)`` -> ``[B, E, h, w]`` gives dense features
    in that joint space: ``mode="proj"`` projects the final-normed last-block patch tokens;
    ``mode="maskclip"`` (MaskCLIP, Zhou et al. 2022) replaces the last block's attention by its value
    path and skips its MLP, which localises text queries far better with the same weights.
    """

    conformance_params = {"arch": "ViT-B-32", "tiny": True}

    def __init__(
        self,
        arch: str,
        weights: str | None = None,
        tiny: bool = False,
        pretrained: bool = True,
        device: str = "cpu",
        quick_gelu: bool = False,
    ):
        super().__init__()
        name = f"open_clip:{arch}"
        path = type(self).locate_weights(weights, arch=arch) if weights or (pretrained and not tiny) else None
        model, tokenizer = build_clip_model(arch, name, GENERIC_TINY if tiny else None, path, quick_gelu)
        self._wrap(name, model, tokenizer, CLIP_MEAN, CLIP_STD)
        self.arch = arch
        self.to(device).eval()

    @classmethod
    def locate_weights(cls, weights: str | None = None, arch: str = "", **_: Any) -> Path:
        return find_weights(
            f"backbone 'open_clip' (arch={arch})",
            weights,
            files=(f"{arch}.safetensors", f"{arch}.bin", f"{arch}.pt"),
            url="the open_clip model card of the architecture (open_clip_model.safetensors, renamed)",
        )

    @classmethod
    def from_model(
        cls, name: str, model: nn.Module, tokenizer: Any, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD
    ) -> ClipBackbone:
        """Wrap an already built open_clip ``CLIP`` (benchmarks, custom loading)."""
        self = cls.__new__(cls)
        BaseBackbone.__init__(self)
        self._wrap(name, model, tokenizer, mean, std)
        return self

    def _wrap(self, name: str, model: nn.Module, tokenizer: Any, mean: tuple, std: tuple) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        v = model.visual
        if not hasattr(v, "conv1") or not hasattr(v, "transformer"):
            raise ConfigError(
                f"backbone '{name}': the image tower is {type(v).__name__}, not an open_clip VisionTransformer"
            )
        self.embed_dim = int(v.conv1.out_channels)
        self.patch_size = int(v.conv1.kernel_size[0])
        self.num_prefix_tokens = 1
        self.depth = len(v.transformer.resblocks)
        self.clip_embed_dim = int(v.proj.shape[1]) if v.proj is not None else self.embed_dim
        self.mean, self.std = tuple(mean), tuple(std)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding ``[1 + h*w, D]``, bicubically resized when the grid differs."""
        pe = self.model.visual.positional_embedding
        n = pe.shape[0] - 1
        g = int(round(n**0.5))
        if g * g == h * w and h == w:
            return pe
        grid = pe[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pe.dtype)
        return torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], 0)

    def _blocks(self, images: torch.Tensor, stop_before_last: bool = False) -> tuple[list[torch.Tensor], int, int]:
        v = self.model.visual
        x = v.conv1(images)  # [B, D, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self._pos_embed(h, w).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        outs = []
        for blk in blocks[:-1] if stop_before_last else blocks:
            x = blk(x)
            outs.append(x)
        return outs if outs else [x], h, w

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        self._check_n_last(n_last)
        outs, h, w = self._blocks(images)
        ln = self.model.visual.ln_post
        cls = [ln(o[:, 0]) for o in outs[-n_last:]]
        patch = ln(outs[-1][:, 1:]).transpose(1, 2).reshape(images.shape[0], -1, h, w)
        return {"cls": cls, "patch": patch}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``[B, 3, H, W]`` normalised -> ``[B, E]`` image embeddings (joint space)."""
        cls = self.forward_tokens(images)["cls"][-1]
        proj = self.model.visual.proj
        return cls @ proj if proj is not None else cls

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` (T strings) -> ``[T, E]`` text embeddings (joint space)."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(texts)).to(device)
        return self.model.encode_text(tokens)

    def patch_embeddings(self, images: torch.Tensor, mode: str = "maskclip") -> torch.Tensor:
        """Dense joint-space features ``[B, E, h, w]`` for normalised ``images`` ``[B, 3, H, W]``."""
        v = self.model.visual
        if mode == "proj":
            tok = self.forward_tokens(images)["patch"]  # [B, D, h, w]
            B, D, h, w = tok.shape
            flat = tok.flatten(2).transpose(1, 2)
        elif mode == "maskclip":
            outs, h, w = self._blocks(images, stop_before_last=True)
            x = outs[-1]
            last = v.transformer.resblocks[-1]
            attn = last.attn  # nn.MultiheadAttention: v path = in_proj rows [2D:3D]
            D = x.shape[-1]
            y = last.ln_1(x)
            val = F.linear(
                y, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :] if attn.in_proj_bias is not None else None
            )
            val = attn.out_proj(val)
            flat = v.ln_post((x + last.ls_1(val))[:, 1:])
            B = x.shape[0]
        else:
            raise ConfigError(f"patch_embeddings mode must be 'proj' or 'maskclip', got {mode!r}")
        if v.proj is not None:
            flat = flat @ v.proj
        return flat.transpose(1, 2).reshape(B, -1, h, w)
