"""Shared machinery of the bundled feature extractors.

- :class:`BaseExtractor`: input checks, batching, device placement, the on-disk per-view cache.
- Sliding windows (thesis app. C.1.2, Fig. C.1): :func:`window_starts`, :func:`sliding_windows`,
  :func:`aggregate_windows` (per-window maps upsampled and averaged to pixel level, each pixel's
  weights summing to 1).
- :class:`PCA`: fitted from streamed sufficient statistics (sum, sum of outer products, count) so
  it can be fitted over all views of a scene, sharded across processes with one all-reduce, with
  the components re-weighted by their eigenvalues.
- :func:`iter_feature_maps` / :func:`extract_views`: the feature maps of a whole camera set, with
  progress reporting and sharding under ``torchrun``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BaseExtractor",
    "PCA",
    "window_starts",
    "sliding_windows",
    "window_weights",
    "aggregate_windows",
    "as_float_images",
    "image_hash",
    "FeatureCache",
    "progress",
    "iter_feature_maps",
    "extract_views",
    "resolve_device",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# small helpers


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else as given (``"cpu"``, ``"cuda:1"``)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def image_hash(image: torch.Tensor) -> str:
    """SHA-256 of one image's content (``[3, H, W]``), independent of device and memory layout.

    Float images are hashed through their float32 bytes, so the same pixels give the same key.
    """
    t = image.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


# ----------------------------------------------------------------------------------------------
# distributed helpers: fulcra.engine.dist when it is there, a single process otherwise


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


# ----------------------------------------------------------------------------------------------
# on-disk cache


class FeatureCache:
    """Per-view tensors on disk, keyed by image content + the parameters that determine the output.

    Files are ``<dir>/<stage>/<params-key>/<image-hash>.pt`` written atomically (temp file then
    ``os.replace``) and read with ``torch.load(weights_only=True)``; a corrupt file is recomputed.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(os.path.expanduser(str(directory)))

    def path(self, stage: str, params: dict, key: str) -> Path:
        return self.dir / stage / _params_key(params) / f"{key}.pt"

    def load(self, stage: str, params: dict, key: str) -> Any | None:
        p = self.path(stage, params, key)
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # truncated by a kill before os.replace was impossible, but be safe
            log.warning("unreadable cache file %s; recomputing", p)
            return None

    def save(self, stage: str, params: dict, key: str, value: Any) -> None:
        p = self.path(stage, params, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = p.parent / "params.json"
        if not meta.exists():  # human-readable record of what the key stands for
            meta.write_text(json.dumps(params, sort_keys=True, default=str, indent=1))
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(value, tmp)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# base class


class BaseExtractor:
    """Shared work of the bundled extractors: checks, batching, device placement, caching.

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
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.cache = FeatureCache(cache_dir) if cache_dir else None
        self.show_progress = bool(progress)

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
        self, stage: str, images: torch.Tensor, fn: Callable, kwargs: dict, images_per_batch: int | None = None,
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
        for chunk in progress(chunks, total=len(chunks), desc=self.name, enabled=self.show_progress and len(chunks) > 1):
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
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.cache_params().items() if k != 'name')})"


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16] + str(list(v.shape))
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


# ----------------------------------------------------------------------------------------------
# sliding windows (app. C.1.2, Fig. C.1)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``window`` every ``stride`` pixels along an axis of ``length``.

    The last window is aligned to the end and a stride larger than the window is reduced to the
    window, so that every pixel is covered; a window at least as long as the axis gives a single
    window at 0 (the caller clips it).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if window >= length:
        return [0]
    stride = min(stride, window)  # no gaps between windows
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def sliding_windows(height: int, width: int, window: int | tuple[int, int], stride: int | tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Overlapping windows covering an ``height x width`` grid.

    Returns:
        boxes ``(y0, x0, y1, x1)`` (end exclusive, clipped to the grid), row-major.
    """
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    return [
        (y0, x0, min(y0 + wh, height), min(x0 + ww, width))
        for y0 in window_starts(height, wh, sh)
        for x0 in window_starts(width, ww, sw)
    ]


def window_weights(height: int, width: int, boxes: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
    """Per-window, per-pixel averaging weights ``[N, height, width]``: ``1/count`` inside a window,
    0 outside, so that the weights of every covered pixel sum to 1 (the reference for
    :func:`aggregate_windows`)."""
    masks = torch.zeros(len(boxes), height, width)
    for n, (y0, x0, y1, x1) in enumerate(boxes):
        masks[n, y0:y1, x0:x1] = 1.0
    count = masks.sum(0, keepdim=True)
    return torch.where(count > 0, masks / count.clamp_min(1), masks)


_LINEAR_CACHE: dict = {}


def _linear_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """``[n_out, n_in]`` matrix of 1D linear interpolation as ``F.interpolate(mode="linear",
    align_corners=False)`` does it (built by interpolating the identity)."""
    key = (n_in, n_out, str(device))
    if key not in _LINEAR_CACHE:
        eye = torch.eye(n_in, device=device)[None]  # [1, n_in, n_in]: channel i = unit vector i
        _LINEAR_CACHE[key] = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()
    return _LINEAR_CACHE[key]


def aggregate_windows(
    maps: Sequence[torch.Tensor] | torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    size: tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Upsample each window's map onto its box and average overlapping windows per pixel.

    Args:
        maps: ``N`` maps ``[D, h_n, w_n]`` (or a tensor ``[N, D, h, w]``), one per box; a ``1 x 1``
            map (a CLIP crop embedding) fills its box with a constant.
        boxes: ``N`` boxes ``(y0, x0, y1, x1)`` on the output grid.
        size: output ``(H, W)``.
        mode: interpolation of ``F.interpolate`` (``"bilinear"``: patch centres at their pixel centres).

    Returns:
        ``[D, H, W]`` float32, pixels covered by no window are 0.
    """
    if len(maps) != len(boxes):
        raise ValueError(f"aggregate_windows: {len(maps)} maps for {len(boxes)} boxes")
    H, W = size
    first = maps[0]
    acc = torch.zeros(first.shape[0], H, W, device=first.device, dtype=torch.float32)
    count = torch.zeros(1, H, W, device=first.device, dtype=torch.float32)
    for m, (y0, x0, y1, x1) in zip(maps, boxes):
        m = m.float()
        if m.shape[-2:] != (y1 - y0, x1 - x0):
            if mode == "bilinear":
                # bilinear = separable 1D linear interpolations: two small matmuls, ~10-50x faster on
                # CPU than upsample_bilinear2d at these sizes and equal to it (tested)
                uh = _linear_matrix(m.shape[-2], y1 - y0, m.device)  # [h_out, h_in]
                uw = _linear_matrix(m.shape[-1], x1 - x0, m.device)  # [w_out, w_in]
                m = uh @ m @ uw.T
            else:
                m = F.interpolate(m[None], size=(y1 - y0, x1 - x0), mode=mode)[0]
        acc[:, y0:y1, x0:x1] += m
        count[:, y0:y1, x0:x1] += 1
    return acc / count.clamp_min(1)


# ----------------------------------------------------------------------------------------------
# PCA with eigenvalue re-weighting


class PCA:
    """PCA fitted from streamed statistics, with components re-weighted by their eigenvalues.

    ``update(x [..., D])`` accumulates ``Σx``, ``Σxxᵀ`` and the count in float64; ``fit(n_components)``
    all-reduces them across processes (so every rank gets the same basis) and eigen-decomposes the
    covariance. ``transform(x)`` projects onto the first components and multiplies component ``k``
    by ``weight_k``:

    - ``"eigenvalue"`` (thesis §5.4.1): ``λ_k / λ_1``, favouring the first components, which focus on
      the foreground objects. Dividing by ``λ_1`` only rescales all features by one constant (cosine
      similarities and thresholds on normalised scores are unchanged) and keeps magnitudes sane.
    - ``"sqrt"``: ``sqrt(λ_k / λ_1)``; ``"none"``: plain projection.

    Signs are fixed so that each component's largest-magnitude loading is positive (deterministic).
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.sum = torch.zeros(self.dim, dtype=torch.float64)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # [D, k]
        self.eigenvalues: torch.Tensor | None = None  # [k]

    @property
    def fitted(self) -> bool:
        return self.components is not None

    def update(self, x: torch.Tensor) -> None:
        """Accumulate samples ``x`` ``[..., D]``."""
        x = x.reshape(-1, self.dim)
        if self.sum.device != x.device:  # accumulate where the samples are (a GPU does the D x D products)
            self.sum, self.outer, self.count = self.sum.to(x.device), self.outer.to(x.device), self.count.to(x.device)
        x = x.to(torch.float64)
        self.sum += x.sum(0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def fit(self, n_components: int, distributed: bool = True) -> "PCA":
        if distributed:
            stats = torch.cat([self.sum, self.outer.reshape(-1), self.count.reshape(1)])
            d = _dist()
            if d is not None and d.world_size() > 1:
                if torch.distributed.get_backend() == "nccl" and not stats.is_cuda:  # NCCL reduces CUDA tensors only
                    stats = stats.to(torch.device("cuda", torch.cuda.current_device()))
                stats = d.all_reduce_sum(stats)
            stats = stats.cpu()
            s, o, c = stats[: self.dim], stats[self.dim : -1].reshape(self.dim, self.dim), stats[-1]
        else:
            s, o, c = self.sum.cpu(), self.outer.cpu(), self.count.cpu()
        if c < 2:
            raise ValueError("PCA: need at least 2 samples to fit")
        mean = s / c
        cov = (o - c * torch.outer(mean, mean)) / (c - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        k = min(int(n_components), self.dim)
        evals = evals.flip(0)[:k].clamp_min(0)
        evecs = evecs.flip(1)[:, :k]
        idx = evecs.abs().argmax(0)
        signs = torch.sign(evecs[idx, torch.arange(k)])
        signs[signs == 0] = 1
        self.mean = mean.float()
        self.components = (evecs * signs).float()
        self.eigenvalues = evals.float()
        return self

    def weights(self, weighting: str = "eigenvalue") -> torch.Tensor:
        assert self.eigenvalues is not None
        lam = self.eigenvalues / self.eigenvalues[0].clamp_min(1e-12)
        if weighting == "eigenvalue":
            return lam
        if weighting == "sqrt":
            return lam.sqrt()
        if weighting == "none":
            return torch.ones_like(lam)
        raise ValueError(f"PCA weighting must be 'eigenvalue', 'sqrt' or 'none', got {weighting!r}")

    def transform(self, x: torch.Tensor, weighting: str = "eigenvalue", channel_dim: int = -1) -> torch.Tensor:
        """Project ``x`` (features along ``channel_dim``) onto the re-weighted components."""
        if not self.fitted:
            raise RuntimeError("PCA.transform before fit")
        x = x.movedim(channel_dim, -1)
        mean = self.mean.to(x.device)
        comp = (self.components * self.weights(weighting)).to(x.device)
        y = (x.float() - mean) @ comp
        return y.movedim(-1, channel_dim)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "components": self.components, "eigenvalues": self.eigenvalues}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.components, self.eigenvalues = state["mean"], state["components"], state["eigenvalues"]


# ----------------------------------------------------------------------------------------------
# whole camera sets


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

    If the extractor has ``fit(views)`` and is not fitted (DINOv2's PCA over all views), it is fitted
    over the same views first.
    """
    indices = list(range(len(views)))
    mine = _shard(indices) if shard else indices
    if hasattr(extractor, "fit") and not getattr(extractor, "fitted", True):
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


def extract_views(extractor: Callable[..., torch.Tensor], views: Sequence[Any], *, shard: bool = False, **kwargs: Any) -> dict[int, torch.Tensor]:
    """All feature maps of a camera set at once: ``{index: [D, h, w]}`` (this rank's views when
    ``shard``). See :func:`iter_feature_maps` for the arguments."""
    return dict(iter_feature_maps(extractor, views, shard=shard, **kwargs))
