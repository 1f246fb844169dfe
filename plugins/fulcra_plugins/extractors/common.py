"""The base class of the bundled feature extractors, and the public names of the helper modules.

- :class:`BaseExtractor`: input checks, batching, device placement, the on-disk per-view cache
  (:mod:`.cache`), and the optional protocols :class:`~fulcra.interfaces.CachingExtractor`.
- :mod:`.windows`: sliding windows (app. C.1.2) and the streamed :class:`PCA`.
- :mod:`.views`: image checks, progress, sharding, :func:`iter_feature_maps` / :func:`extract_views`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from fulcra.engine import select_device

from .cache import FeatureCache, image_hash
from .cache import jsonable as _jsonable
from .cache import params_key as _params_key
from .views import _load_view, _shard, as_float_images, extract_views, iter_feature_maps, progress  # noqa: F401 (dinov2)
from .windows import PCA, aggregate_windows, even_window_starts, sliding_windows, window_starts, window_weights

__all__ = [
    "BaseExtractor",
    "PCA",
    "window_starts",
    "even_window_starts",
    "sliding_windows",
    "window_weights",
    "aggregate_windows",
    "as_float_images",
    "image_hash",
    "FeatureCache",
    "progress",
    "iter_feature_maps",
    "extract_views",
]


class BaseExtractor:
    """Shared work of the bundled extractors: checks, batching, device placement, caching (it is a
    :class:`~fulcra.interfaces.CachingExtractor`: ``cache_dir``, ``set_cache(dir)``).

    Subclasses implement :meth:`forward_batch` (a batch already on ``self.device``) and
    :meth:`cache_params` (everything that determines the output besides the image). Keyword
    arguments named in ``per_image_kwargs`` (e.g. SAM's ``prompts``) are lists with one entry per
    image; they are split along with the batch and enter the cache key.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        batch_size: images per forward pass.
        cache_dir: directory of the per-view cache (``None``: no cache).
        progress: show a progress bar over batches when a call has more than one batch.
    """

    name: str = ""
    dim: int | None = None
    per_image_kwargs: tuple[str, ...] = ()
    #: bump when a change of the code changes the outputs, so that old cache entries are not reused
    cache_version: int = 1

    def __init__(self, device: str = "cpu", batch_size: int = 8, cache_dir: str | None = None, progress: bool = False):
        if batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be >= 1, got {batch_size}")
        self.device = select_device(device)
        self.batch_size = int(batch_size)
        self.cache: FeatureCache | None = None
        self.set_cache(cache_dir)
        self.show_progress = bool(progress)

    # -- CachingExtractor (fulcra.interfaces) ------------------------------------------------
    @property
    def cache_dir(self) -> Path | None:
        """The per-view cache folder in use (``None``: no cache)."""
        return self.cache.dir if self.cache is not None else None

    def set_cache(self, directory: str | os.PathLike | None) -> None:
        """Cache per-view outputs under ``directory`` from now on (``None``: no cache). Entries are keyed
        by image content and :meth:`cache_params`, so a folder can be shared by runs and settings."""
        self.cache = FeatureCache(directory) if directory else None

    # -- to implement -----------------------------------------------------------------------
    def cache_params(self) -> dict:
        """Everything besides the image that determines the output (plugin name, variant, weights file
        identity, sizes...). Part of the cache key."""
        return {"name": self.name}

    def forward_batch(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``images`` ``[b, 3, H, W]`` float32 in [0, 1] on ``self.device`` -> ``[b, D, h, w]`` float32."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _full_cache_params(self, stage: str) -> dict:
        return {"stage": stage, "version": self.cache_version, **self.cache_params()}

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Feature maps of a batch of images.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1] (or uint8), any device.
            **kwargs: per-image keyword arguments (see ``per_image_kwargs``) or plugin options.

        Returns:
            ``[B, D, h, w]`` float32 on the device of ``images``.
        """
        images = as_float_images(images)
        return self._run_cached("features", images, self.forward_batch, kwargs)

    def _run_cached(
        self,
        stage: str,
        images: torch.Tensor,
        fn: Callable,
        kwargs: dict,
        images_per_batch: int | None = None,
        store_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Run ``fn`` on the images whose ``stage`` output is not cached; ``store_dtype`` is the dtype
        written to disk (lossless only if ``fn``'s outputs are already representable in it)."""
        b = images.shape[0]
        ipb = images_per_batch or self.batch_size
        per_image = {k: kwargs.pop(k) for k in self.per_image_kwargs if k in kwargs and kwargs[k] is not None}
        for k, v in per_image.items():
            if len(v) != b:
                raise ValueError(f"{self.name}: {k} has {len(v)} entries for {b} images")
        params = self._full_cache_params(stage) if self.cache is not None else {}
        if self.cache is not None and kwargs:
            params = {**params, "kwargs": {k: _jsonable(v) for k, v in kwargs.items()}}
        results: list[torch.Tensor | None] = [None] * b
        keys: list[str | None] = [None] * b
        if self.cache is not None:
            for i in range(b):
                key = image_hash(images[i])
                for k, v in per_image.items():
                    key += "-" + _params_key({"k": k, "v": _jsonable(v[i])})
                keys[i] = key
                hit = self.cache.load(stage, params, key)
                if hit is not None:
                    results[i] = hit.float()
        todo = [i for i in range(b) if results[i] is None]
        chunks = [todo[s : s + ipb] for s in range(0, len(todo), ipb)]
        for chunk in progress(
            chunks, total=len(chunks), desc=self.name, enabled=self.show_progress and len(chunks) > 1
        ):
            batch = images[chunk].to(self.device)
            sub = {k: [v[i] for i in chunk] for k, v in per_image.items()}
            with torch.no_grad():  # not inference_mode: outputs feed autograd-based uplifting
                out = fn(batch, **sub, **kwargs)
            out = out.float()
            for j, i in enumerate(chunk):
                results[i] = out[j]
                if self.cache is not None:
                    self.cache.save(stage, params, keys[i], out[j].detach().to("cpu", store_dtype).clone())
        return torch.stack([r.to(images.device) for r in results])  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.cache_params().items() if k != 'name')})"
        )
