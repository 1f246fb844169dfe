"""``vit``: pixel-level feature maps of any backbone by sliding windows + PCA (thesis §5.4.1, app. C.1.2).

The construction of Fig. C.1, for any ``fulcra.backbones`` plugin (DINOv2 in the thesis: the
``dinov2`` extractor is this one with ``backbone=dinov2_<variant>``): (i) patch tokens of the
backbone over overlapping square crops of each image, (ii) a PCA fitted over the patch tokens of
*all* views, components re-weighted by their eigenvalues, (iii) each crop's reduced token grid
upsampled bilinearly to the crop's pixels and overlapping crops averaged per pixel.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fulcra.backbone import backbone_key, create_backbone
from fulcra.errors import ConfigError
from fulcra.weights import file_identity

from .common import (
    PCA,
    BaseExtractor,
    _load_view,
    _shard,
    aggregate_windows,
    as_float_images,
    progress,
    sliding_windows,
)

__all__ = ["ViTExtractor", "resize_short_side"]


def resize_short_side(images: torch.Tensor, short: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` so that ``min(H, W) == short`` (aspect kept, antialiased bilinear)."""
    H, W = images.shape[-2:]
    s = short / min(H, W)
    size = (max(short, round(H * s)), max(short, round(W * s)))
    if size == (H, W):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


class ViTExtractor(BaseExtractor):
    """Backbone feature maps at pixel level: sliding windows, PCA over all views, eigenvalue re-weighting.

    Each image is resized so its short side is ``resolution``; square crops of ``crop_size`` pixels
    every ``stride`` pixels (the last crop aligned to the border, so every pixel is covered) go
    through the backbone; the patch tokens of all crops are reduced by a PCA to ``n_components`` channels,
    component ``k`` multiplied by ``λ_k/λ_1`` (``pca_weighting``), upsampled bilinearly to their crop
    and averaged where crops overlap (each pixel's weights sum to 1).

    The PCA is fitted over all views when :meth:`fit` is given the camera set (what
    :func:`~fulcra_plugins.extractors.common.extract_views` does, and what the thesis does);
    otherwise on the first batch this extractor sees, and then kept fixed so that later calls are
    consistent. :meth:`reset_pca` forgets it. Patch tokens are rounded to float16 (what the cache
    stores) so cached and fresh results are identical.

    Args:
        backbone: a ``fulcra.backbones`` plugin name (``dinov2_vitg14_reg``, ``eva02_vitl14``, a third
            party's) or a node with its own keys (``{name: timm, arch: vit_base_patch16_siglip_224}``).
        weights: the backbone's local weight file; ``None`` lets the backbone look in its caches
            (``$FULCRA_WEIGHTS_DIR``, ``~/.cache/fulcra/weights``, ...). Never downloads.
        tiny: a small random backbone of the family (tests, offline demos; deterministic, seed 0).
        n_components: PCA output channels; 0 keeps the raw ``embed_dim`` tokens (no PCA).
        pca_weighting: ``eigenvalue`` (thesis), ``sqrt`` or ``none``.
        resolution: short side of the processed image (pixels); the output map has this size.
        crop_size: side of the square windows, a multiple of the backbone's patch size (448 = 32 x 14
            = 28 x 16).
        stride: step between windows (``crop_size // 2`` when 0).
        output_stride: average-pool the pixel-level map by this factor (memory; 1 = pixel level).
        device, batch_size (crops per forward), cache_dir, progress: see ``BaseExtractor``.

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] -> ``[B, n_components, h, w]`` float32 with
        ``min(h, w) = resolution / output_stride``, aspect of the input kept.
    """

    name = "vit"
    #: tiny settings for the catalogue's conformance test (tests/core/test_catalogue.py)
    conformance_params = {
        "backbone": "dinov2_vits14_reg",
        "tiny": True,
        "n_components": 4,
        "resolution": 28,
        "crop_size": 28,
        "stride": 14,
    }

    def __init__(
        self,
        backbone: str | dict = "dinov2_vitg14_reg",
        weights: str | None = None,
        tiny: bool = False,
        n_components: int = 40,
        pca_weighting: str = "eigenvalue",
        resolution: int = 672,
        crop_size: int = 448,
        stride: int = 224,
        output_stride: int = 1,
        device: str = "cpu",
        batch_size: int = 8,
        cache_dir: str | None = None,
        progress: bool = False,
    ):
        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        if pca_weighting not in ("eigenvalue", "sqrt", "none"):
            raise ConfigError(
                f"{self.name}: pca_weighting must be 'eigenvalue', 'sqrt' or 'none', got {pca_weighting!r}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a tiny random model must be the same at every construction (cache keys)
            self.backbone = create_backbone(
                backbone,
                weights=weights,
                tiny=tiny,
                device=self.device,
                owner=f"feature_extractors plugin {self.name!r}",
            )
        self.backbone.requires_grad_(False)
        p = int(self.backbone.patch_size)
        stride = int(stride) or int(crop_size) // 2
        if crop_size % p or crop_size <= 0:
            raise ConfigError(f"{self.name}: crop_size={crop_size} must be a positive multiple of the patch size {p}")
        if resolution < crop_size:
            raise ConfigError(f"{self.name}: resolution={resolution} must be >= crop_size={crop_size}")
        if stride <= 0 or output_stride < 1 or n_components < 0:
            raise ConfigError(f"{self.name}: stride and output_stride must be >= 1 and n_components >= 0")
        self.backbone_ref, self.weights, self.tiny = backbone, weights, bool(tiny)
        self.n_components, self.pca_weighting = int(n_components), pca_weighting
        self.resolution, self.crop_size, self.stride, self.output_stride = (
            int(resolution),
            int(crop_size),
            stride,
            int(output_stride),
        )
        self.embed_dim = int(self.backbone.embed_dim)
        self.dim = self.n_components or self.embed_dim
        self.pca: PCA | None = None

    # ----------------------------------------------------------------------------------------
    def cache_params(self) -> dict:
        # only what determines the patch tokens: the PCA is refitted from cached tokens
        return {
            "name": self.name,
            **self._backbone_params(),
            "weights": file_identity(self.weights),
            "tiny": self.tiny,
            "resolution": self.resolution,
            "crop_size": self.crop_size,
            "stride": self.stride,
        }

    def _backbone_params(self) -> dict:
        return {"backbone": backbone_key(self.backbone_ref)}

    @property
    def fitted(self) -> bool:
        return self.n_components == 0 or (self.pca is not None and self.pca.fitted)

    def reset_pca(self) -> None:
        self.pca = None

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The crop boxes ``(y0, x0, y1, x1)`` on the resized image of an ``height x width`` input."""
        h, w = resize_short_side(torch.empty(1, 1, height, width, device="meta"), self.resolution).shape[-2:]
        return sliding_windows(h, w, self.crop_size, self.stride)

    def _tokens_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` -> patch tokens of every crop ``[b, n_crops, D, g, g]`` (float16-rounded)."""
        x = resize_short_side(images, self.resolution)
        boxes = sliding_windows(x.shape[-2], x.shape[-1], self.crop_size, self.stride)
        crops = torch.stack([x[:, :, y0:y1, x0:x1] for (y0, x0, y1, x1) in boxes], 1)  # [b, n, 3, c, c]
        b, n = crops.shape[:2]
        flat = self.backbone.normalize(crops.flatten(0, 1))
        outs = []
        for s in range(0, flat.shape[0], self.batch_size):
            outs.append(self.backbone.forward_tokens(flat[s : s + self.batch_size])["patch"].float())
        tok = torch.cat(outs).half().float()
        return tok.reshape(b, n, *tok.shape[1:])

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Cached per-view crop tokens: ``[B, 3, H, W]`` -> ``[B, n_crops, D, g, g]``."""
        images = as_float_images(images)
        # images per chunk such that about batch_size crops go through the model at once
        n_crops = len(self.boxes(*images.shape[-2:]))
        return self._run_cached(
            "tokens",
            images,
            self._tokens_batch,
            {},
            images_per_batch=max(1, self.batch_size // n_crops),
            store_dtype=torch.float16,
        )

    def fit(self, views: Sequence[Any] | torch.Tensor) -> ViTExtractor:
        """Fit the PCA over the patch tokens of all ``views`` (images ``[3,H,W]``, a ``[B,3,H,W]``
        batch, or zero-argument loaders). Under ``torchrun`` each rank reads its share of the views
        and the statistics are all-reduced, so every rank gets the same basis; with ``cache_dir`` the
        tokens are cached and the following feature extraction does not recompute them."""
        if self.n_components == 0:
            return self
        pca = PCA(self.embed_dim)
        indices = _shard(list(range(len(views))))
        for i in progress(indices, total=len(indices), desc=f"{self.name} PCA", enabled=self.show_progress):
            tok = self.tokens(_load_view(views[i]))  # [1, n, D, g, g]
            pca.update(tok.to(self.device).movedim(2, -1))
        self.pca = pca.fit(self.n_components, distributed=True)
        return self

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Reduce crop tokens ``[..., D, g, g]`` to ``[..., k, g, g]`` (identity without PCA)."""
        if self.n_components == 0:
            return tokens
        return self.pca.transform(tokens, self.pca_weighting, channel_dim=-3)

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Feature maps ``[B, dim, h, w]`` float32 on the device of ``images`` (see class doc)."""
        if kwargs:
            raise TypeError(f"{self.name}: unexpected arguments {sorted(kwargs)}")
        images = as_float_images(images)
        tok = self.tokens(images)  # [B, n, D, g, g]
        if not self.fitted:
            pca = PCA(self.embed_dim)
            pca.update(tok.movedim(2, -1))
            self.pca = pca.fit(self.n_components, distributed=False)
        x_h, x_w = resize_short_side(torch.empty(1, 1, *images.shape[-2:], device="meta"), self.resolution).shape[-2:]
        boxes = sliding_windows(x_h, x_w, self.crop_size, self.stride)
        out = []
        for b in range(tok.shape[0]):
            red = self.project(tok[b].to(self.device))  # [n, k, g, g]
            fmap = aggregate_windows(red, boxes, (x_h, x_w))  # [k, h, w]
            if self.output_stride > 1:
                fmap = F.avg_pool2d(fmap[None], self.output_stride, ceil_mode=True, count_include_pad=False)[0]
            out.append(fmap.to(images.device))
        return torch.stack(out)
