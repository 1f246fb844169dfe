"""Thresholding and filtering of rendered score maps (app. C.1.1, C.1.4): Otsu, Li, mean filter."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["otsu", "li", "auto_threshold", "mean_filter", "rescale"]


def _values(x) -> np.ndarray:
    v = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return v.ravel()


def otsu(x) -> float:
    """Otsu's threshold (scikit-image ``threshold_otsu``); the value itself for a constant input."""
    from skimage.filters import threshold_otsu

    v = _values(x)
    if v.size == 0:
        raise ValueError("Otsu threshold of an empty set of values")
    return float(v[0]) if np.all(v == v[0]) else float(threshold_otsu(v))


def li(x) -> float:
    """Li's minimum cross-entropy threshold (scikit-image ``threshold_li``)."""
    from skimage.filters import threshold_li

    v = _values(x)
    if v.size == 0:
        raise ValueError("Li threshold of an empty set of values")
    return float(v[0]) if np.all(v == v[0]) else float(threshold_li(v))


def auto_threshold(x, method: str = "otsu") -> float:
    """``otsu`` or ``li`` threshold of the values of ``x``."""
    if method == "otsu":
        return otsu(x)
    if method == "li":
        return li(x)
    raise ValueError(f"threshold method must be otsu or li, got {method!r}")


def rescale(x: torch.Tensor) -> torch.Tensor:
    """Min-max rescaling to [0, 1] (a constant map becomes zeros)."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def mean_filter(img: torch.Tensor, size: int = 5, padding: str = "zeros") -> torch.Tensor:
    """Mean filter of odd ``size`` over ``[H, W]`` or ``[H, W, C]`` maps.

    Args:
        padding: ``zeros`` (default): the image is zero-padded and every output is the sum over the
            ``size x size`` window divided by ``size²``, as the official LERF evaluation
            (``F.conv2d(..., padding="same")`` with a ``1/size²`` kernel) — border pixels are pulled
            towards 0, so a maximum on the border loses to one inside the image; ``valid``: the mean of
            the window's pixels that lie inside the image.
    """
    if padding not in ("zeros", "valid"):
        raise ValueError(f"mean_filter: padding must be zeros or valid, got {padding!r}")
    squeeze = img.ndim == 2
    x = (img[..., None] if squeeze else img).permute(2, 0, 1)[None].float()  # [1, C, H, W]
    pad = size // 2
    num = F.avg_pool2d(F.pad(x, (pad,) * 4), size, stride=1, divisor_override=1)
    if padding == "zeros":
        out = (num / float(size * size))[0].permute(1, 2, 0)
    else:
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
        den = F.avg_pool2d(F.pad(ones, (pad,) * 4), size, stride=1, divisor_override=1)
        out = (num / den)[0].permute(1, 2, 0)
    return out[..., 0] if squeeze else out
