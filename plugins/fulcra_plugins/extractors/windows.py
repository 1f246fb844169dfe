"""Sliding windows (thesis app. C.1.2, Fig. C.1) and the streamed, distributable :class:`PCA` of
dense feature maps."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .views import _dist

__all__ = ["window_starts", "even_window_starts", "sliding_windows", "window_weights", "aggregate_windows", "PCA"]


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


def even_window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows spread (nearly) evenly along an axis, as the official LUDVIG sliding
    window (``utils/sliding_windows.py``) places DINOv2 crops.

    As many windows as :func:`window_starts` gives, but the stride shrunk to the smallest integer
    step that still reaches the end: ``n = ceil((length - window) / stride)`` steps of
    ``ceil((length - window) / n)`` pixels, the last start clipped to ``length - window`` (so the last
    window ends at the border; that last step may be shorter by the rounding). A window at least as
    long as the axis gives a single window at 0 (the caller clips it). A stride larger than the window
    is first reduced to the window, as in :func:`window_starts`, so no pixel is left uncovered (the
    official code would leave gaps; its configs never use such a stride).

    Example: ``length=1190, window=840, stride=200`` -> ``[0, 175, 350]`` (``window_starts`` gives
    ``[0, 200, 350]``).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if window >= length:
        return [0]
    span = length - window
    stride = min(stride, window)  # no gaps between windows
    step = -(-span // -(-span // stride))  # ceil(span / ceil(span / stride)), in integers
    return [min(s, span) for s in range(0, span + step, step)]


def sliding_windows(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    spacing: str = "fixed",
) -> list[tuple[int, int, int, int]]:
    """Overlapping windows covering an ``height x width`` grid.

    Args:
        spacing: ``"fixed"`` (:func:`window_starts`: every ``stride``, the last one aligned to the
            border) or ``"even"`` (:func:`even_window_starts`: the official LUDVIG placement).

    Returns:
        boxes ``(y0, x0, y1, x1)`` (end exclusive, clipped to the grid), row-major.
    """
    if spacing not in ("fixed", "even"):
        raise ValueError(f"sliding_windows: spacing must be 'fixed' or 'even', got {spacing!r}")
    starts = window_starts if spacing == "fixed" else even_window_starts
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    return [
        (y0, x0, min(y0 + wh, height), min(x0 + ww, width))
        for y0 in starts(height, wh, sh)
        for x0 in starts(width, ww, sw)
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
    """PCA fitted from streamed statistics, optionally on z-scored features, with components
    re-weighted by their eigenvalues.

    ``update(x [..., D])`` accumulates ``Σx``, ``Σxxᵀ`` and the count in float64; ``fit(n_components)``
    all-reduces them across processes (so every rank gets the same basis) and eigen-decomposes the
    covariance, or with ``standardize=True`` the correlation matrix: the PCA of the features after
    each dimension is z-scored over all samples (what the official LUDVIG code does before its PCA,
    computed here exactly from the same sums). ``transform(x)`` z-scores (when fitted so), projects
    onto the first components and multiplies component ``k`` by ``weight_k``:

    - ``"sqrt"``: ``sqrt(λ_k / λ_1)``. The official code multiplies by sklearn's ``singular_values_``
      ``σ_k = sqrt((n - 1) λ_k)``: the same up to one constant factor, which depends on the number of
      patches and is divided out here.
    - ``"eigenvalue"``: ``λ_k / λ_1``, the literal reading of "re-weighted by the eigenvalues".
    - ``"none"``: plain projection.

    Dividing by the first weight only rescales all features by one constant (cosine similarities and
    thresholds on normalised scores are unchanged) and keeps magnitudes independent of the data size.
    Signs are fixed so that each component's largest-magnitude loading is positive (deterministic).
    """

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.sum = torch.zeros(self.dim, dtype=torch.float64)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.mean: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None  # [D] per-dimension std (ones without standardize)
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

    def fit(self, n_components: int, distributed: bool = True, standardize: bool = False) -> PCA:
        """Fit on the accumulated samples (all-reduced across processes when ``distributed``);
        ``standardize``: z-score every dimension first (PCA of the correlation matrix)."""
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
        if standardize:
            # unbiased std as torch.std; a constant dimension keeps scale 1 (its z-score would be 0/0)
            std = cov.diagonal().clamp_min(0).sqrt()
            std = torch.where(std > 0, std, torch.ones_like(std))
            cov = cov / torch.outer(std, std)
        else:
            std = torch.ones_like(mean)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        k = min(int(n_components), self.dim)
        evals = evals.flip(0)[:k].clamp_min(0)
        evecs = evecs.flip(1)[:, :k]
        idx = evecs.abs().argmax(0)
        signs = torch.sign(evecs[idx, torch.arange(k)])
        signs[signs == 0] = 1
        self.mean = mean.float()
        self.scale = std.float()
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
        """Z-score (when fitted with ``standardize``) and project ``x`` (features along
        ``channel_dim``) onto the re-weighted components."""
        if not self.fitted:
            raise RuntimeError("PCA.transform before fit")
        x = x.movedim(channel_dim, -1)
        mean = self.mean.to(x.device)
        scale = self.scale if self.scale is not None else torch.ones_like(self.mean)
        # (x - mean) / scale @ C = (x - mean) @ (C / scale): one matmul
        comp = (self.components * self.weights(weighting) / scale[:, None]).to(x.device)
        y = (x.float() - mean) @ comp
        return y.movedim(-1, channel_dim)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "scale": self.scale, "components": self.components, "eigenvalues": self.eigenvalues}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.components, self.eigenvalues = state["mean"], state["components"], state["eigenvalues"]
        self.scale = state.get("scale")  # absent in states saved before standardisation existed
