"""``vit``: pixel-level feature maps of any backbone by sliding windows + PCA (thesis §5.4.1, app. C.1.2).

The construction of Fig. C.1, for any ``fulcra.backbones`` plugin (DINOv2 in the thesis: the
``dinov2`` extractor is this one with ``backbone=dinov2_<variant>``): (i) patch tokens of the
backbone over overlapping square crops of each image, (ii) a PCA fitted over the z-scored patch
tokens of *all* views, components re-weighted by their eigenvalues, (iii) each crop's reduced token
grid upsampled bilinearly to the crop's pixels and overlapping crops averaged per pixel. The defaults
are those of the official configs (``configs/dif_SPIn.yaml``, ``dif_NVOS.yaml``): native resolution,
840-pixel crops every 200 pixels (evenly spread), 40 components weighted by ``sqrt(λ)``; see the
"Extraction defaults" section of docs/ludvig.md.
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

__all__ = ["ViTExtractor", "resize_short_side", "resize_to_patches"]

PCA_WEIGHTINGS = ("sqrt", "eigenvalue", "none")


def resize_short_side(images: torch.Tensor, short: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` so that ``min(H, W) == short`` (aspect kept, antialiased bilinear)."""
    H, W = images.shape[-2:]
    s = short / min(H, W)
    size = (max(short, round(H * s)), max(short, round(W * s)))
    if size == (H, W):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``(H // patch * patch, W // patch * patch)``: the native resolution
    rounded down to whole patches (bilinear, as the official code: it drops at most ``patch - 1``
    pixels per axis, so no antialiasing is needed)."""
    H, W = images.shape[-2:]
    size = (max(patch, H // patch * patch), max(patch, W // patch * patch))
    if size == (H, W):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


class ViTExtractor(BaseExtractor):
    """Backbone feature maps at pixel level: sliding windows, PCA over all views, eigenvalue re-weighting.

    Each image is used at its native resolution rounded down to whole patches (``resolution=None``,
    the official code) or resized so its short side is ``resolution``; square crops of ``crop_size``
    pixels (at most the image's short side) every ``stride`` pixels (spread evenly and the last crop
    aligned to the border, so every pixel is covered) go through the backbone; every dimension of the
    patch tokens of all crops is z-scored (``pca_standardize``) and reduced by a PCA to
    ``n_components`` channels, component ``k`` multiplied by ``sqrt(λ_k/λ_1)`` (``pca_weighting``),
    upsampled bilinearly to its crop and averaged where crops overlap (each pixel's weights sum to 1);
    at native resolution the map is finally resized bilinearly to the input's ``H x W``.

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
        n_components: PCA output channels (40, the official configs); 0 keeps the raw ``embed_dim``
            tokens (no PCA).
        pca_weighting: ``sqrt`` (official code: singular values), ``eigenvalue`` or ``none``.
        pca_standardize: z-score each token dimension over all patches of all views before the PCA
            (official code).
        resolution: ``None``: native resolution (rounded down to whole patches), output ``H x W``;
            an int: short side of the processed image in pixels, and of the output map.
        crop_size: side of the square windows (840 = 60 x 14), a multiple of the backbone's patch size;
            at native resolution it is reduced to the image's short side when that is smaller.
        stride: step between windows (``crop_size // 2`` when 0), 200 by default.
        window_spacing: ``even`` (official: the stride shrunk so the windows are evenly spread) or
            ``fixed`` (every ``stride`` pixels, then one window aligned to the border).
        output_stride: average-pool the pixel-level map by this factor (memory; 1 = pixel level).
        device, batch_size (crops per forward), cache_dir, progress: see ``BaseExtractor``.

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] -> ``[B, n_components, h, w]`` float32 with
        ``(h, w) = (H, W) / output_stride`` at native resolution, else
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
        pca_weighting: str = "sqrt",
        pca_standardize: bool = True,
        resolution: int | None = None,
        crop_size: int = 840,
        stride: int = 200,
        window_spacing: str = "even",
        output_stride: int = 1,
        device: str = "cpu",
        batch_size: int = 8,
        cache_dir: str | None = None,
        progress: bool = False,
    ):
        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        if pca_weighting not in PCA_WEIGHTINGS:
            raise ConfigError(
                f"{self.name}: pca_weighting must be one of {', '.join(PCA_WEIGHTINGS)}, got {pca_weighting!r}"
            )
        if window_spacing not in ("even", "fixed"):
            raise ConfigError(f"{self.name}: window_spacing must be 'even' or 'fixed', got {window_spacing!r}")
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
        if resolution is not None and resolution < crop_size:
            raise ConfigError(f"{self.name}: resolution={resolution} must be >= crop_size={crop_size}")
        if stride <= 0 or output_stride < 1 or n_components < 0:
            raise ConfigError(f"{self.name}: stride and output_stride must be >= 1 and n_components >= 0")
        self.backbone_ref, self.weights, self.tiny = backbone, weights, bool(tiny)
        self.n_components, self.pca_weighting = int(n_components), pca_weighting
        self.pca_standardize = bool(pca_standardize)
        self.resolution = None if resolution is None else int(resolution)
        self.crop_size, self.stride, self.output_stride = int(crop_size), stride, int(output_stride)
        self.window_spacing = window_spacing
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
            # absent for the former placement, so caches written before the key existed stay valid
            **({"window_spacing": self.window_spacing} if self.window_spacing != "fixed" else {}),
        }

    def _backbone_params(self) -> dict:
        return {"backbone": backbone_key(self.backbone_ref)}

    @property
    def fitted(self) -> bool:
        return self.n_components == 0 or (self.pca is not None and self.pca.fitted)

    def reset_pca(self) -> None:
        self.pca = None

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        """The image the crops are cut from: native (whole patches) or short side ``resolution``."""
        if self.resolution is None:
            return resize_to_patches(images, int(self.backbone.patch_size))
        return resize_short_side(images, self.resolution)

    def processed_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the image the crops are cut from, for an ``height x width`` input."""
        h, w = self._resize(torch.empty(1, 1, height, width, device="meta")).shape[-2:]
        return int(h), int(w)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The crop boxes ``(y0, x0, y1, x1)`` on the processed image of an ``height x width`` input."""
        h, w = self.processed_size(height, width)
        crop = min(self.crop_size, h, w)  # square crops: at most the short side (official code)
        return sliding_windows(h, w, crop, self.stride, spacing=self.window_spacing)

    def _tokens_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` -> patch tokens of every crop ``[b, n_crops, D, g, g]`` (float16-rounded)."""
        x = self._resize(images)
        boxes = self.boxes(*images.shape[-2:])
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
        self.pca = pca.fit(self.n_components, distributed=True, standardize=self.pca_standardize)
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
            self.pca = pca.fit(self.n_components, distributed=False, standardize=self.pca_standardize)
        H, W = images.shape[-2:]
        x_h, x_w = self.processed_size(H, W)
        boxes = self.boxes(H, W)
        out = []
        for b in range(tok.shape[0]):
            red = self.project(tok[b].to(self.device))  # [n, k, g, g]
            fmap = aggregate_windows(red, boxes, (x_h, x_w))  # [k, h, w]
            if self.resolution is None and (x_h, x_w) != (H, W):
                # back to the input's pixels (the official code does the same); exact separable bilinear
                fmap = aggregate_windows(fmap[None], [(0, 0, H, W)], (H, W))
            if self.output_stride > 1:
                fmap = F.avg_pool2d(fmap[None], self.output_stride, ceil_mode=True, count_include_pad=False)[0]
            out.append(fmap.to(images.device))
        return torch.stack(out)
