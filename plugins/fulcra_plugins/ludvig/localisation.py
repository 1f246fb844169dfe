"""Open-vocabulary localisation and segmentation from 3D relevancies (thesis §5.4.2, app. C.1.4).

- localisation: render the per-Gaussian relevancy of each query, smooth it with a zero-padded mean
  filter of size 5, take the arg-max pixel;
- 2D segmentation: rescale the rendered relevancy by its maximum, keep pixels above ``cutoff``
  (0.8; 0 for diffused relevancies), then Otsu among them;
- SAM prompts: the top ``q`` percent of pixels, ``q`` the share of pixels above Otsu's threshold over
  the pixels above ``cutoff`` (0.93);
- 3D object selection: binarise the relevancies in 3D (Otsu), render the binary mask, threshold again.

A query whose selection is empty or covers nearly everything is reported — a warning (or an error
with ``strict=True``) that gives the relevancy statistics and the threshold used — instead of
silently returning an empty or full mask.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from fulcra.camera import Camera
from fulcra.errors import FulcraError

from .segmentation import render_scores
from .thresholds import mean_filter, otsu

__all__ = [
    "SelectionWarning",
    "SelectionError",
    "check_selection",
    "render_relevancy",
    "localise",
    "segment_relevancy",
    "sam_prompts",
    "sam_prompt_mask",
    "select_3d",
]


class SelectionWarning(UserWarning):
    """A query selected nothing or nearly everything."""


class SelectionError(FulcraError, ValueError):
    """A query selected nothing or nearly everything (raised with ``strict=True``)."""


def check_selection(
    mask: torch.Tensor,
    values: torch.Tensor,
    threshold: float,
    query: str = "",
    where: str = "pixels",
    max_fraction: float = 0.9,
    strict: bool = False,
) -> None:
    """Warn (or raise) when ``mask`` selects nothing or more than ``max_fraction`` of its elements."""
    frac = float(mask.float().mean()) if mask.numel() else 0.0
    if 0.0 < frac <= max_fraction:
        return
    v = values.float()
    what = "nothing" if frac == 0.0 else f"{100 * frac:.1f}% of the {where}"
    msg = (
        f"query {query!r} selects {what}: relevancy min {float(v.min()):.4g}, mean {float(v.mean()):.4g}, "
        f"max {float(v.max()):.4g}, threshold {threshold:.4g} over {v.numel()} {where}"
    )
    if strict:
        raise SelectionError(msg)
    warnings.warn(msg, SelectionWarning, stacklevel=3)


def render_relevancy(scene, relevancy: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Render per-Gaussian relevancies ``[N, Q]`` (or ``[N]``) for ``camera`` -> ``[H, W, Q]`` (or ``[H, W]``)."""
    return render_scores(scene, relevancy, camera)


def localise(rendered: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """Arg-max pixel of each query after a ``kernel``-sized mean filter.

    Args:
        rendered: ``[H, W]`` or ``[H, W, Q]`` rendered relevancies.

    Returns:
        ``[2]`` or ``[Q, 2]`` long (x, y) pixel coordinates.
    """
    squeeze = rendered.ndim == 2
    r = rendered[..., None] if squeeze else rendered
    sm = mean_filter(r, kernel) if kernel > 1 else r
    H, W, Q = sm.shape
    flat = sm.reshape(H * W, Q).argmax(0)
    xy = torch.stack([flat % W, flat // W], 1)
    return xy[0] if squeeze else xy


def segment_relevancy(
    rendered: torch.Tensor,
    cutoff: float = 0.8,
    query: str = "",
    strict: bool = False,
    max_fraction: float = 0.9,
    smooth: int = 0,
) -> torch.Tensor:
    """2D mask of one query: relevancy rescaled by its max, ``> cutoff``, then Otsu among those pixels.

    Args:
        rendered: ``[H, W]`` rendered relevancy (non-negative).
        cutoff: the rough threshold ``τ`` (0.8 for raw relevancies, 0 after graph diffusion).
        smooth: ``> 1``: the map is first smoothed by a ``smooth``-sized zero-padded mean filter
            (:func:`~.thresholds.mean_filter`), as the official evaluation of raw relevancies
            (``smooth: 5`` in ``lerf_eval.yaml``) does before both the arg-max and the thresholds.

    Returns:
        ``[H, W]`` bool.
    """
    r = mean_filter(rendered.float(), smooth) if smooth > 1 else rendered.float()
    mx = float(r.max())
    if mx <= 0:
        mask = torch.zeros_like(r, dtype=torch.bool)
        check_selection(mask, r, 0.0, query, "pixels", max_fraction, strict)
        return mask
    nr = r / mx
    above = nr > cutoff
    if int(above.sum()) > 1:
        t = otsu(nr[above])
        t = max(t, cutoff) if float(nr[above].min()) < t else cutoff
    else:
        t = cutoff
    mask = nr > t
    check_selection(mask, nr, t, query, "pixels", max_fraction, strict)
    return mask


def sam_prompt_mask(rendered: torch.Tensor, cutoff: float = 0.93) -> torch.Tensor:
    """The pixels SAM's point prompts are drawn from, for a rendered relevancy ``[H, W]`` (C.1.4.2).

    As the official evaluation (``ludvig_clip.py``): ``t`` = Otsu over the pixels whose max-rescaled
    relevancy exceeds ``cutoff`` (0.93 for raw relevancies, 0.01 after diffusion), ``q`` = the share
    of pixels above ``t``, and the prompts are the top ``q`` of all pixels (``r >= quantile(r, 1 - q)``):
    larger objects get more prompts. Returns ``[H, W]`` bool (empty when the map is all zero)."""
    r = rendered.float()
    mx = float(r.max())
    if mx <= 0:
        return torch.zeros_like(r, dtype=torch.bool)
    above = r[r / mx > cutoff]
    t = otsu(above) if above.numel() > 1 else float(above.min()) if above.numel() else mx
    share = float((r > t).float().mean())
    if share <= 0:  # Otsu at the maximum: keep the maximal pixels
        return r >= mx
    return r >= torch.quantile(r.flatten(), 1.0 - share)


def sam_prompts(rendered: torch.Tensor, cutoff: float = 0.93) -> torch.Tensor:
    """Point prompts for SAM from a rendered relevancy ``[H, W]`` (C.1.4): the pixels of
    :func:`sam_prompt_mask` as ``[P, 2]`` (x, y) long."""
    ys, xs = torch.nonzero(sam_prompt_mask(rendered, cutoff), as_tuple=True)
    return torch.stack([xs, ys], 1).long()


def select_3d(
    relevancy: torch.Tensor, query: str = "", strict: bool = False, max_fraction: float = 0.9
) -> torch.Tensor:
    """3D object selection: binarise per-Gaussian relevancy ``[N]`` by Otsu over its positive values.

    Returns ``[N]`` bool; warns (or raises) when nothing or nearly everything is selected.
    """
    r = relevancy.float()
    pos = r[r > 0]
    t = otsu(pos) if pos.numel() > 1 else 0.0
    if pos.numel() and float(pos.min()) >= t:
        t = 0.0  # all positive relevancies alike: Otsu has nothing to split, keep them all
    mask = r > t
    check_selection(mask, r, t, query, "Gaussians", max_fraction, strict)
    return mask


def segment_3d_selection(
    scene, relevancy: torch.Tensor, camera: Camera, query: str = "", strict: bool = False
) -> torch.Tensor:
    """The 3D-selection protocol of Table 5.4 (bottom): :func:`select_3d`, render, Otsu again -> ``[H, W]`` bool."""
    sel = select_3d(relevancy, query, strict)
    img = render_scores(scene, sel.float(), camera)
    if float(img.max()) <= 0:
        check_selection(img > 0, img, 0.0, query, "pixels", strict=strict)
        return img > 0
    t = otsu(img[img > 0]) if int((img > 0).sum()) > 1 else 0.0
    return img > min(t, 0.5)


__all__.append("segment_3d_selection")


def relevancy_3d(features3d: torch.Tensor, extractor, queries: Sequence[str]) -> torch.Tensor:
    """Per-Gaussian relevancies ``[N, Q]`` of uplifted CLIP features with a ``clip`` extractor's text side."""
    return extractor.relevancy(features3d, list(queries))


__all__.append("relevancy_3d")
