"""``dinov2``: pixel-level DINOv2 feature maps by sliding windows + PCA (thesis §5.4.1, app. C.1.2).

The ``vit`` extractor (:mod:`.vit`) with ``backbone=dinov2_<variant>``: the same windows, PCA and
per-view cache, under the name and keys (``variant=``) that the thesis' command lines use.
"""

from __future__ import annotations

from fulcra.errors import ConfigError

from .vit import ViTExtractor, resize_short_side

__all__ = ["DINOv2Extractor", "resize_short_side", "VARIANTS"]

VARIANTS = ("vits14", "vitb14", "vitl14", "vitg14", "vits14_reg", "vitb14_reg", "vitl14_reg", "vitg14_reg")


class DINOv2Extractor(ViTExtractor):
    """DINOv2 feature maps at pixel level: :class:`~fulcra_plugins.extractors.vit.ViTExtractor` on
    the backbone ``dinov2_<variant>``.

    Args:
        variant: ``vits14``, ``vitb14``, ``vitl14``, ``vitg14`` with optional ``_reg`` (4 registers).
        weights: local checkpoint (official ``dinov2_vitX14[_reg4]_pretrain.pth`` or timm
            safetensors); ``None`` looks in ``$FULCRA_WEIGHTS_DIR``, ``~/.cache/fulcra/weights``, the
            torch hub and Hugging Face caches. Never downloads.
        tiny, n_components, pca_weighting, pca_standardize, resolution, crop_size, stride,
            window_spacing, output_stride, device, batch_size, cache_dir, progress: as for ``vit``
            (defaults: the official ``configs/dif_SPIn.yaml``: native resolution, 840-pixel crops
            every 200 pixels, z-scored tokens, 40 components weighted by ``sqrt(λ)``).

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] -> ``[B, n_components, h, w]`` float32 with
        ``(h, w) = (H, W) / output_stride`` at native resolution, else
        ``min(h, w) = resolution / output_stride``, aspect of the input kept.
    """

    name = "dinov2"
    #: tiny settings for the catalogue's conformance test (tests/core/test_catalogue.py)
    conformance_params = {
        "variant": "vits14_reg",
        "tiny": True,
        "n_components": 4,
        "resolution": 28,
        "crop_size": 28,
        "stride": 14,
    }

    def __init__(
        self,
        variant: str = "vitg14_reg",
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
        if variant not in VARIANTS:
            import difflib

            close = difflib.get_close_matches(variant, VARIANTS, n=3)
            raise ConfigError(
                f"dinov2: unknown variant {variant!r}"
                + (f"; did you mean {', '.join(close)}?" if close else f"; choose from {', '.join(VARIANTS)}")
            )
        self.variant = variant
        super().__init__(
            f"dinov2_{variant}",
            weights=weights,
            tiny=tiny,
            n_components=n_components,
            pca_weighting=pca_weighting,
            pca_standardize=pca_standardize,
            resolution=resolution,
            crop_size=crop_size,
            stride=stride,
            window_spacing=window_spacing,
            output_stride=output_stride,
            device=device,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )

    def _backbone_params(self) -> dict:
        # the key of the caches written before the vit extractor existed: they stay valid
        return {"variant": self.variant}
