"""Device- and I/O-side helpers of the extractors: image checks, progress, sharding under
``torchrun``, and :func:`iter_feature_maps` / :func:`extract_views` (the feature maps of a camera
set, without uplifting; the uplift workflows use :func:`fulcra_plugins.ludvig.lifting.uplift_views`)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from fulcra.interfaces import FittableExtractor

__all__ = ["as_float_images", "progress", "iter_feature_maps", "extract_views"]

log = logging.getLogger("fulcra_plugins.extractors")


def as_float_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check ``images`` is ``[B, 3, H, W]`` (a single ``[3, H, W]`` image is promoted) and return float32
    in [0, 1] (uint8 is divided by 255)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B,3,H,W], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [B,3,H,W], got {list(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected float in [0,1] or uint8, got {images.dtype}")
    return images.float()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar when tqdm is installed and ``enabled``; else return it unchanged
    and log the start and end (long runs stay observable in logs)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is the `progress` extra
        log.info("%s: %s items", desc, total if total is not None else "?")
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _dist():
    try:
        from fulcra.engine import dist  # noqa: WPS433 (the engine is optional at import time)
    except ImportError:
        return None
    return dist


def _rank_world() -> tuple[int, int]:
    d = _dist()
    if d is None:
        return 0, 1
    return d.rank(), d.world_size()


def _shard(seq: Sequence) -> list:
    d = _dist()
    if d is None or d.world_size() == 1:
        return list(seq)
    return list(d.shard(seq))


def _load_view(view: Any) -> torch.Tensor:
    img = view() if callable(view) else view
    return as_float_images(img)


def iter_feature_maps(
    extractor: Callable[..., torch.Tensor],
    views: Sequence[Any],
    *,
    shard: bool = False,
    batch_size: int | None = None,
    show_progress: bool = True,
    desc: str = "features",
    **kwargs: Any,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream the feature maps of a camera set, a few views in memory at a time.

    Args:
        extractor: any feature extractor (``images [B,3,H,W] -> [B,D,h,w]``).
        views: images ``[3, H, W]`` (or ``[1, 3, H, W]``) or zero-argument callables that load them,
            so that a large scene is never held in memory at once.
        shard: under ``torchrun``, only this rank's views (``fulcra.engine.dist.shard`` of the
            indices); sums over views (uplifting) are then all-reduced by the caller.
        batch_size: views per call (default: the extractor's ``batch_size`` or 1). Views of
            different sizes go in separate calls.
        show_progress: a progress bar on rank 0.
        **kwargs: per-view keyword arguments as lists over *all* views (e.g. SAM's ``prompts``),
            or plain options passed to every call.

    Yields:
        ``(index, features [D, h, w])`` in index order (index into ``views``).

    A :class:`~fulcra.interfaces.FittableExtractor` that is not fitted (DINOv2's PCA over all views) is
    fitted over the same views first.
    """
    indices = list(range(len(views)))
    mine = _shard(indices) if shard else indices
    if isinstance(extractor, FittableExtractor) and not extractor.fitted:
        extractor.fit(views)
    bs = batch_size or getattr(extractor, "batch_size", 1)
    per_view = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == len(views)}
    common = {k: v for k, v in kwargs.items() if k not in per_view}
    rank, _ = _rank_world()
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> Iterator[tuple[int, torch.Tensor]]:
        idx = [i for i, _ in pending]
        batch = torch.cat([im for _, im in pending])
        sub = {k: [v[i] for i in idx] for k, v in per_view.items()}
        out = extractor(batch, **sub, **common)
        pending.clear()
        for j, i in enumerate(idx):
            yield i, out[j]

    for i in progress(mine, total=len(mine), desc=desc, enabled=show_progress and rank == 0):
        img = _load_view(views[i])
        if pending and pending[0][1].shape[-2:] != img.shape[-2:]:
            yield from flush()
        pending.append((i, img))
        if len(pending) >= bs:
            yield from flush()
    if pending:
        yield from flush()


def extract_views(
    extractor: Callable[..., torch.Tensor], views: Sequence[Any], *, shard: bool = False, **kwargs: Any
) -> dict[int, torch.Tensor]:
    """All feature maps of a camera set at once: ``{index: [D, h, w]}`` (this rank's views when
    ``shard``). See :func:`iter_feature_maps` for the arguments."""
    return dict(iter_feature_maps(extractor, views, shard=shard, **kwargs))
