"""Bundled 2D feature extractors (``fulcra.feature_extractors``): ``rgb``, ``vit`` (any backbone),
``dinov2`` (``vit`` on DINOv2), ``clip``, ``sam``, ``sam2``.

Plugin modules import their heavy dependencies lazily; :mod:`.common` holds the shared machinery
(batching, sliding windows, PCA, the on-disk cache, whole-camera-set extraction).
"""

from .common import extract_views, iter_feature_maps

__all__ = ["extract_views", "iter_feature_maps"]
