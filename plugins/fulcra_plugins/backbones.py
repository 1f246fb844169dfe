"""Pretrained vision backbones shared by teachers, students and feature extractors.

One factory, :func:`load_backbone`, builds DINOv2 (ViT-S/B/L/g, with or without 4 registers) and
EVA-02 through timm, and CLIP ViT-B/16 and ViT-L/14 through open_clip. Both libraries are imported
lazily; a missing one raises :class:`~fulcra.errors.MissingDependencyError` naming the extra.

Weights come from a local file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``) or from the user's existing caches (``$FULCRA_WEIGHTS_DIR``,
``~/.cache/fulcra/weights``, torch hub's ``checkpoints/`` folder, the Hugging Face hub cache). Nothing
is ever downloaded: when no file is found, :class:`~fulcra.errors.WeightsNotFoundError` says which
file to put where. ``tiny=True`` builds a small randomly initialised model of the same family through
the same code path (2-3 blocks, width 32-48) for tests and offline demos; it loads ``weights`` when
given (e.g. a tiny teacher pre-trained by the ``distill-digits`` recipe).

Every backbone exposes the same token interface::

    bb = load_backbone("dinov2_vits14_reg", weights="~/ckpt/dinov2_vits14_reg4_pretrain.pth")
    out = bb.forward_tokens(bb.normalize(images01), n_last=3)
    out["cls"]    # list of 3 tensors [B, D]: final-normed CLS token of each of the last 3 blocks
    out["patch"]  # [B, D, H/14, W/14]: final-normed patch tokens of the last block
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fulcra.errors import ConfigError, FormatError, MissingDependencyError, WeightsNotFoundError

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Backbone",
    "TimmBackbone",
    "ClipBackbone",
    "load_backbone",
    "available_backbones",
    "load_state_dict_file",
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


def _dinov2(size: str, arch_size: str, dim: int, depth: int, reg: bool) -> BackboneSpec:
    suffix = "_reg4" if reg else ""
    official = f"dinov2_vit{size}14{suffix}_pretrain.pth"
    arch = f"vit_{arch_size}_patch14{suffix}_dinov2"
    return BackboneSpec(
        family="timm", arch=arch, embed_dim=dim, patch_size=14, depth=depth,
        num_prefix_tokens=1 + (4 if reg else 0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        files=(official, f"{arch}.safetensors"), hf_hub=f"timm/{arch}.lvd142m",
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{official}",
        # LayerScale starts at 1 in tiny models: DINOv2's 1e-5 makes a small model trained from
        # scratch on little data barely move (measured: 66% vs 75% on digits after 15 epochs)
        tiny={**_TINY[size], "init_values": 1.0},
    )


# tiny variants keep the family's relative sizes (S < B < L < g) so a tiny teacher is wider than a
# tiny student, as in the thesis' experiments
_TINY = {"t": {"embed_dim": 32, "depth": 3, "num_heads": 2}, "s": {"embed_dim": 48, "depth": 3, "num_heads": 2},
         "b": {"embed_dim": 96, "depth": 3, "num_heads": 4}, "l": {"embed_dim": 128, "depth": 4, "num_heads": 4},
         "g": {"embed_dim": 192, "depth": 4, "num_heads": 4}}


def _eva02(arch: str, tag: str, dim: int, depth: int, mean, std, size: str) -> BackboneSpec:
    return BackboneSpec(
        family="timm", arch=arch, embed_dim=dim, patch_size=14, depth=depth, num_prefix_tokens=1,
        mean=mean, std=std, files=(f"{arch}.safetensors", f"{arch}.pth"), hf_hub=f"timm/{arch}.{tag}",
        url=f"https://huggingface.co/timm/{arch}.{tag}",
        tiny=_TINY[size],
    )


BACKBONES: dict[str, BackboneSpec] = {}
for _s, _a, _d, _n in (("s", "small", 384, 12), ("b", "base", 768, 12), ("l", "large", 1024, 24), ("g", "giant", 1536, 40)):
    BACKBONES[f"dinov2_vit{_s}14"] = _dinov2(_s, _a, _d, _n, reg=False)
    BACKBONES[f"dinov2_vit{_s}14_reg"] = _dinov2(_s, _a, _d, _n, reg=True)
BACKBONES.update({
    "eva02_vitt14": _eva02("eva02_tiny_patch14_224", "mim_in22k", 192, 12, IMAGENET_MEAN, IMAGENET_STD, "t"),
    "eva02_vits14": _eva02("eva02_small_patch14_224", "mim_in22k", 384, 12, IMAGENET_MEAN, IMAGENET_STD, "s"),
    "eva02_vitb14": _eva02("eva02_base_patch14_224", "mim_in22k", 768, 12, IMAGENET_MEAN, IMAGENET_STD, "b"),
    "eva02_vitl14": _eva02("eva02_large_patch14_224", "mim_in22k", 1024, 24, IMAGENET_MEAN, IMAGENET_STD, "l"),
    "eva02_vitl14_clip": _eva02("eva02_large_patch14_clip_224", "merged2b", 1024, 24, CLIP_MEAN, CLIP_STD, "l"),
    "clip_vitb16": BackboneSpec(
        family="clip", arch="ViT-B-16", embed_dim=768, patch_size=16, depth=12, num_prefix_tokens=1,
        mean=CLIP_MEAN, std=CLIP_STD, clip_embed_dim=512,
        files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "clip_vitb16.safetensors"),
        hf_hub="timm/vit_base_patch16_clip_224.openai",
        url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai (open_clip_model.safetensors)",
        tiny={"embed_dim": 32, "vision": {"width": 48, "layers": 3, "patch_size": 16, "image_size": 64},
              "text": {"width": 32, "heads": 2, "layers": 1}},
    ),
    "clip_vitl14": BackboneSpec(
        family="clip", arch="ViT-L-14", embed_dim=1024, patch_size=14, depth=24, num_prefix_tokens=1,
        mean=CLIP_MEAN, std=CLIP_STD, clip_embed_dim=768,
        files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "clip_vitl14.safetensors"),
        hf_hub="timm/vit_large_patch14_clip_224.openai",
        url="https://huggingface.co/timm/vit_large_patch14_clip_224.openai (open_clip_model.safetensors)",
        tiny={"embed_dim": 32, "vision": {"width": 48, "layers": 3, "patch_size": 14, "image_size": 56},
              "text": {"width": 32, "heads": 2, "layers": 1}},
    ),
})


def available_backbones() -> list[str]:
    """Names accepted by :func:`load_backbone`."""
    return sorted(BACKBONES)


# --------------------------------------------------------------------------------------------- weights


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely from ``.safetensors`` or a ``torch.save`` file (weights only).

    Unwraps the usual containers (``{"model": ...}``, ``{"state_dict": ...}``, ``{"teacher": ...}``)
    and strips ``module.`` / ``backbone.`` prefixes left by DDP and training frameworks.

    Raises:
        WeightsNotFoundError: the file does not exist.
        FormatError: the file is not a readable state dict (e.g. a TorchScript archive).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a malformed file for the user
        raise FormatError(f"{p}: not a state dict readable safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    for key in ("model", "state_dict", "teacher", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FormatError(f"{p}: expected a mapping of parameter names to tensors")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _cache_candidates(name: str, spec: BackboneSpec) -> list[Path]:
    """Where a user's existing copy of the weights may already be (checked in order)."""
    dirs = []
    if os.environ.get("FULCRA_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["FULCRA_WEIGHTS_DIR"]).expanduser())
    dirs.append(Path("~/.cache/fulcra/weights").expanduser())
    try:
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # noqa: BLE001 - torch hub dir resolution is best effort
        pass
    out = []
    for d in dirs:
        out.append(d / f"{name}.safetensors")
        out.extend(d / f for f in spec.files if not f.startswith("open_clip"))
    return out


def _hf_cached(repo: str | None, files: Sequence[str]) -> Path | None:
    """A file of ``repo`` already in the Hugging Face hub cache (looks only; never fetches)."""
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for f in ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin", *files):
        hit = try_to_load_from_cache(repo, f)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def resolve_weights(name: str, weights: str | None = None) -> Path:
    """The weight file for backbone ``name``: ``weights`` if given, else a cached copy.

    Raises:
        WeightsNotFoundError: with the file name to download by hand and where to put it.
    """
    spec = BACKBONES[name]
    if weights:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"weights file {p} for backbone '{name}' does not exist (get {spec.files[0]} from {spec.url})")
        return p
    for cand in _cache_candidates(name, spec):
        if cand.is_file():
            return cand
    hit = _hf_cached(spec.hf_hub, spec.files)
    if hit is not None:
        return hit
    where = Path(os.environ.get("FULCRA_WEIGHTS_DIR", "~/.cache/fulcra/weights")).expanduser()
    raise WeightsNotFoundError(
        f"no weights for backbone '{name}': download {spec.files[0]} from {spec.url} and put it at "
        f"{where / spec.files[0]} (or pass weights=PATH); fulcra never downloads weights"
    )


# -------------------------------------------------------------------------------------------- modules


class Backbone(nn.Module):
    """A pretrained encoder with a uniform token interface.

    Attributes:
        name: the backbone name (``dinov2_vits14_reg``, ``clip_vitb16``, ...).
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


class TimmBackbone(Backbone):
    """DINOv2 / EVA-02 through timm's ``forward_intermediates`` (dynamic image size)."""

    def __init__(self, name: str, model: nn.Module, spec: BackboneSpec):
        super().__init__()
        self.name, self.model = name, model
        self.embed_dim = int(model.embed_dim)
        self.patch_size = spec.patch_size
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.depth = len(model.blocks)
        self.mean, self.std = spec.mean, spec.std

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        self._check_n_last(n_last)
        # norm=True applies the final LayerNorm to each intermediate, as DINOv2's
        # get_intermediate_layers(norm=True) does for its linear-probe protocol.
        inter = self.model.forward_intermediates(
            images, indices=n_last, return_prefix_tokens=True, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        cls = [prefix[:, 0] for _, prefix in inter]
        return {"cls": cls, "patch": inter[-1][0]}


class ClipBackbone(Backbone):
    """CLIP (open_clip) with token access, dense patch embeddings and text embeddings.

    ``encode_image(images) -> [B, E]`` and ``encode_text(texts) -> [T, E]`` are in the joint space
    (not L2-normalised). ``patch_embeddings(images, mode)`` -> ``[B, E, h, w]`` gives dense features
    in that joint space: ``mode="proj"`` projects the final-normed last-block patch tokens;
    ``mode="maskclip"`` (MaskCLIP, Zhou et al. 2022) replaces the last block's attention by its value
    path and skips its MLP, which localises text queries far better with the same weights.
    """

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, spec: BackboneSpec):
        super().__init__()
        self.name, self.model, self.tokenizer = name, model, tokenizer
        v = model.visual
        self.embed_dim = int(v.conv1.out_channels)
        self.patch_size = int(v.conv1.kernel_size[0])
        self.num_prefix_tokens = 1
        self.depth = len(v.transformer.resblocks)
        self.clip_embed_dim = int(v.proj.shape[1]) if v.proj is not None else self.embed_dim
        self.mean, self.std = spec.mean, spec.std

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
            val = F.linear(y, attn.in_proj_weight[2 * D:], attn.in_proj_bias[2 * D:] if attn.in_proj_bias is not None else None)
            val = attn.out_proj(val)
            flat = v.ln_post((x + last.ls_1(val))[:, 1:])
            B = x.shape[0]
        else:
            raise ConfigError(f"patch_embeddings mode must be 'proj' or 'maskclip', got {mode!r}")
        if v.proj is not None:
            flat = flat @ v.proj
        return flat.transpose(1, 2).reshape(B, -1, h, w)


# -------------------------------------------------------------------------------------------- factory


def _import_timm():
    try:
        import timm  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("DINOv2/EVA-02 backbones need timm: pip install 'fulcra[timm]'", extra="timm") from exc
    return timm


def _import_open_clip():
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("CLIP backbones need open_clip: pip install 'fulcra[clip]'", extra="clip") from exc
    return open_clip


def _build_timm(name: str, spec: BackboneSpec, tiny: bool, path: Path | None) -> TimmBackbone:
    timm = _import_timm()
    kw: dict[str, Any] = {"pretrained": False, "num_classes": 0, "dynamic_img_size": True}
    if tiny:
        kw.update(spec.tiny)
        kw["img_size"] = 4 * spec.patch_size
    model = timm.create_model(spec.arch, **kw)
    if path is not None:
        sd = _strip_wrapper(load_state_dict_file(path))
        module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
        if hasattr(module, "checkpoint_filter_fn"):
            # converts official DINOv2 / EVA checkpoints to timm names and resamples position
            # embeddings to the model's grid
            sd = module.checkpoint_filter_fn(sd, model)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        _load_strict(model, sd, path, name)
    return TimmBackbone(name, model, spec)


def _build_clip(name: str, spec: BackboneSpec, tiny: bool, path: Path | None) -> ClipBackbone:
    open_clip = _import_open_clip()
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config(spec.arch)
    if cfg is None:
        raise ConfigError(f"open_clip has no model config '{spec.arch}'")
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    if tiny:
        cfg["embed_dim"] = spec.tiny["embed_dim"]
        cfg["vision_cfg"].update(spec.tiny["vision"])
        cfg["vision_cfg"].pop("head_width", None)
        cfg["vision_cfg"]["head_width"] = 16
        cfg["text_cfg"].update(spec.tiny["text"])
    # OpenAI's weights were trained with QuickGELU; a mismatch silently degrades features
    model = CLIP(**cfg, quick_gelu=True)
    if path is not None:
        _load_strict(model, _strip_wrapper(load_state_dict_file(path)), path, name)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return ClipBackbone(name, model, tokenizer, spec)


def _strip_wrapper(sd: dict) -> dict:
    """Accept ``Backbone.state_dict()`` (keys ``model.*``) as well as the bare model's."""
    if sd and all(k.startswith("model.") for k in sd):
        return {k[len("model."):]: v for k, v in sd.items()}
    return sd


def _load_strict(model: nn.Module, sd: dict, path: Path, name: str) -> None:
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


def load_backbone(name: str, weights: str | None = None, *, tiny: bool = False, device: str | torch.device = "cpu",
                  pretrained: bool = True) -> Backbone:
    """Build a pretrained backbone by name, frozen-ready and in eval mode.

    Args:
        name: one of :func:`available_backbones` (``dinov2_vits14``, ``dinov2_vitg14_reg``,
            ``eva02_vitl14_clip``, ``clip_vitb16``, ...).
        weights: a local weight file; ``None`` looks in the caches (or nothing when ``tiny``).
        tiny: a small random model of the same family (tests, offline demos); loads ``weights`` if given.
        device: where to put the model.
        pretrained: ``False`` builds the full-size architecture with random weights (training from
            scratch) without looking for a file.

    Returns:
        A :class:`Backbone` (``TimmBackbone`` or ``ClipBackbone``) in eval mode.

    Raises:
        ConfigError: unknown name. MissingDependencyError: timm / open_clip missing.
        WeightsNotFoundError: no weight file found. FormatError: the file does not fit the model.
    """
    if name not in BACKBONES:
        import difflib

        close = difflib.get_close_matches(name, BACKBONES, n=3)
        raise ConfigError(f"unknown backbone '{name}'" + (f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(BACKBONES))}"))
    spec = BACKBONES[name]
    path = None
    if weights or (pretrained and not tiny):
        path = resolve_weights(name, weights)
    build = _build_timm if spec.family == "timm" else _build_clip
    bb = build(name, spec, tiny, path)
    return bb.to(device).eval()
