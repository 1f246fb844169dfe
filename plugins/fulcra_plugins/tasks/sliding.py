"""Sliding-window inference for dense prediction, as mmsegmentation's ``slide`` test mode.

The thesis evaluates segmentation with windows of ``(s, s)`` and stride ``s/2`` (app. B.1.3,
``s = 560``): the image is covered by a grid of windows clipped to its border (the last window of
each row and column is moved back inside the image, so every window has the crop size when the
image is at least that large), each window is predicted on its own, its logits are resized to the
window and summed into the image, and the sum is divided by how many windows cover each pixel.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["window_grid", "slide_inference", "window_counts"]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def window_grid(height: int, width: int, crop, stride) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's slide mode over an ``height`` x ``width`` image.

    ``crop`` and ``stride`` are ``int`` or ``(h, w)``. The number of rows is
    ``max(H - crop_h + stride_h - 1, 0) // stride_h + 1``; a window running past the border is moved
    back so it ends on it (and starts at 0 when the image is smaller than the crop).
    """
    (hc, wc), (hs, ws) = _pair(crop), _pair(stride)
    if min(hc, wc, hs, ws) <= 0:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    rows = max(height - hc + hs - 1, 0) // hs + 1
    cols = max(width - wc + ws - 1, 0) // ws + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * hs + hc, height), min(c * ws + wc, width)
            out.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return out


def window_counts(height: int, width: int, crop, stride) -> torch.Tensor:
    """``[H, W]`` number of windows covering each pixel (every pixel is covered at least once)."""
    count = torch.zeros(height, width)
    for y1, y2, x1, x2 in window_grid(height, width, crop, stride):
        count[y1:y2, x1:x2] += 1
    return count


@torch.no_grad()
def slide_inference(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    crop,
    stride,
    window_batch: int = 4,
) -> torch.Tensor:
    """Logits of ``images`` averaged over overlapping windows.

    Args:
        forward: ``[n, 3, h, w]`` windows -> ``[n, K, h', w']`` logits (any resolution: resized
            bilinearly to the window, as mmseg's ``encode_decode`` does).
        images: ``[B, 3, H, W]`` (float; what ``forward`` reads).
        crop, stride: window size and step, ``int`` or ``(h, w)``.
        window_batch: windows per ``forward`` call (a fixed number, so results do not depend on
            the image size; only memory does).

    Returns:
        ``[B, K, H, W]`` float32 logits.
    """
    B, _, H, W = images.shape
    wins = window_grid(H, W, crop, stride)
    preds: torch.Tensor | None = None
    count = torch.zeros(1, 1, H, W, device=images.device)
    for y1, y2, x1, x2 in wins:
        count[..., y1:y2, x1:x2] += 1
    for start in range(0, len(wins), window_batch):
        chunk = wins[start : start + window_batch]
        # every window of an image has the same size (clipped to the image): they stack
        batch = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = forward(batch).float()
        h, w = batch.shape[-2:]
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        if preds is None:
            preds = torch.zeros(B, logits.shape[1], H, W, device=images.device)
        for j, (y1, y2, x1, x2) in enumerate(chunk):
            preds[:, :, y1:y2, x1:x2] += logits[j * B : (j + 1) * B]
    assert preds is not None
    return preds / count
