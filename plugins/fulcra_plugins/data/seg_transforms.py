"""mmsegmentation's training augmentations for semantic segmentation, per sample, seeded.

The thesis trains segmentation "with the mmsegmentation augmentations also used by DINOv2"
(app. B.1.3, ``s = 560``): RandomResize to ``(2048, s)`` with ratio range ``(0.5, 2.0)``,
RandomCrop to ``(s, s)`` with ``cat_max_ratio = 0.75``, RandomFlip with probability 0.5 and
PhotoMetricDistortion; the crop is padded to ``(s, s)`` (labels with the ignore index). Each
function takes an image ``[3, H, W]`` uint8 (RGB) and a label map ``[H, W]`` int64 and draws every
random number from an explicit CPU ``torch.Generator``, in mmseg's order, so a sample's
augmentation is a function of the generator's seed only.

Deviations (documented in docs/distill.md): resizing uses torch's bilinear / nearest kernels
(OpenCV's ``INTER_LINEAR`` rounds uint8 differently by at most one level); PhotoMetricDistortion's
HSV round trip is computed in float with OpenCV's uint8 quantisation of H (degrees / 2) and S
(x 255), not bit-identical to ``cv2.cvtColor``; padding uses the ImageNet mean colour, which is
what mmseg's zero padding of the *normalised* image amounts to.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "rescale_size",
    "resize_pair",
    "random_resize",
    "random_crop",
    "random_flip",
    "photometric_distortion",
    "pad_pair",
    "MmsegTrainPipeline",
    "center_view",
]

PAD_RGB = (124, 116, 104)  # round(255 x ImageNet mean): "0 after normalisation"


def _u(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen))


def _randint(lo: int, hi: int, gen: torch.Generator) -> int:
    """Uniform integer in ``[lo, hi)`` (numpy's ``randint``)."""
    return int(torch.randint(lo, hi, (), generator=gen))


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long edge <= max(scale) and short edge
    <= min(scale). Returns ``(new_h, new_w)``."""
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_pair(img: torch.Tensor, seg: torch.Tensor | None, size: tuple[int, int]):
    """Image bilinearly (uint8 rounding), label map by nearest neighbour, to ``size`` = (h, w)."""
    if tuple(img.shape[-2:]) != tuple(size):
        x = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        img = x.round().clamp(0, 255).to(torch.uint8)
        if seg is not None:
            s = F.interpolate(seg[None, None].float(), size=size, mode="nearest")[0, 0]
            seg = s.long()
    return img, seg


def random_resize(img, seg, scale: Sequence[int], ratio_range: Sequence[float], gen: torch.Generator):
    """mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``: the target scale is ``scale``
    times a ratio drawn uniformly in ``ratio_range``, then keep-ratio rescaling to it."""
    lo, hi = ratio_range
    r = _u(gen) * (hi - lo) + lo
    target = (int(scale[0] * r), int(scale[1] * r))
    return resize_pair(img, seg, rescale_size(img.shape[-2], img.shape[-1], target))


def _crop_box(h: int, w: int, ch: int, cw: int, gen) -> tuple[int, int, int, int]:
    oy = _randint(0, max(h - ch, 0) + 1, gen)
    ox = _randint(0, max(w - cw, 0) + 1, gen)
    return oy, oy + ch, ox, ox + cw


def random_crop(img, seg, crop: Sequence[int], cat_max_ratio: float, ignore_index: int, gen: torch.Generator):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: up to 10 draws of the box until no single
    class covers ``cat_max_ratio`` or more of the labelled pixels (and at least two classes are
    present); after 10 failures the last box drawn is kept, as mmseg does. Crops are clipped to
    the image (smaller images stay smaller: :func:`pad_pair` pads them)."""
    ch, cw = int(crop[0]), int(crop[1])
    h, w = img.shape[-2:]
    box = _crop_box(h, w, ch, cw, gen)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            patch = seg[y1:y2, x1:x2]
            labels, counts = torch.unique(patch, return_counts=True)
            counts = counts[labels != ignore_index]
            if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio:
                break
            box = _crop_box(h, w, ch, cw, gen)
    y1, y2, x1, x2 = box
    return img[:, y1:y2, x1:x2], seg[y1:y2, x1:x2]


def random_flip(img, seg, prob: float, gen: torch.Generator):
    """mmseg ``RandomFlip(prob)``: horizontal flip with probability ``prob``."""
    if _u(gen) < prob:
        return img.flip(-1), seg.flip(-1)
    return img, seg


def _convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmseg's ``convert``: float, ``x * alpha + beta``, clip to [0, 255], truncate to uint8."""
    return (x.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


def _rgb_to_hsv255(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 RGB -> OpenCV-style uint8 H in [0, 180), S, V in [0, 255] (as float tensors)."""
    x = img.float()
    r, g, b = x[0], x[1], x[2]
    v, _ = x.max(0)
    mn, _ = x.min(0)
    d = v - mn
    s = torch.where(v > 0, 255.0 * d / v.clamp_min(1e-6), torch.zeros_like(v))
    dd = d.clamp_min(1e-6)
    h = torch.where(
        v == r, 60.0 * (g - b) / dd, torch.where(v == g, 120.0 + 60.0 * (b - r) / dd, 240.0 + 60.0 * (r - g) / dd)
    )
    h = torch.where(d > 0, h, torch.zeros_like(h))
    h = torch.where(h < 0, h + 360.0, h)
    return (h / 2).round() % 180, s.round().clamp(0, 255), v


def _hsv255_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    hh = (h * 2.0) % 360.0 / 60.0
    c = v * (s / 255.0)
    x = c * (1 - ((hh % 2) - 1).abs())
    m = v - c
    i = hh.floor().long() % 6
    zero = torch.zeros_like(c)
    r = torch.stack([c, x, zero, zero, x, c])
    g = torch.stack([x, c, c, x, zero, zero])
    b = torch.stack([zero, zero, x, c, c, x])
    pick = lambda t: t.gather(0, i[None])[0]
    out = torch.stack([pick(r), pick(g), pick(b)]) + m
    return out.round().clamp(0, 255).to(torch.uint8)


def photometric_distortion(
    img: torch.Tensor,
    gen: torch.Generator,
    brightness_delta: int = 32,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB ``[3, H, W]``: brightness (p 0.5, ``+U(-32, 32)``),
    contrast (p 0.5, ``xU(0.5, 1.5)``) either first or last (coin flip), saturation (p 0.5,
    ``xU(0.5, 1.5)`` on S) and hue (p 0.5, ``+randint(-18, 18)`` on OpenCV's H in [0, 180))."""
    if _randint(0, 2, gen):
        img = _convert(img, beta=_u(gen) * 2 * brightness_delta - brightness_delta)
    mode = _randint(0, 2, gen)

    def contrast(x):
        if _randint(0, 2, gen):
            lo, hi = contrast_range
            x = _convert(x, alpha=_u(gen) * (hi - lo) + lo)
        return x

    if mode == 1:
        img = contrast(img)
    if _randint(0, 2, gen):  # saturation
        lo, hi = saturation_range
        h, s, v = _rgb_to_hsv255(img)
        s = _convert(s, alpha=_u(gen) * (hi - lo) + lo).float()
        img = _hsv255_to_rgb(h, s, v)
    if _randint(0, 2, gen):  # hue
        h, s, v = _rgb_to_hsv255(img)
        h = (h + _randint(-hue_delta, hue_delta, gen)) % 180
        img = _hsv255_to_rgb(h, s, v)
    if mode == 0:
        img = contrast(img)
    return img


def pad_pair(img, seg, size: Sequence[int], ignore_index: int = 255, pad_rgb: Sequence[int] = PAD_RGB):
    """Pad bottom and right to ``size`` = (h, w): the image with ``pad_rgb``, labels with ``ignore_index``."""
    h, w = img.shape[-2:]
    H, W = max(int(size[0]), h), max(int(size[1]), w)
    if (H, W) == (h, w):
        return img, seg
    out = torch.tensor(pad_rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, H, W).clone()
    out[:, :h, :w] = img
    lab = torch.full((H, W), ignore_index, dtype=seg.dtype)
    lab[:h, :w] = seg
    return out, lab


def center_view(img, seg, crop: Sequence[int], scale: Sequence[int], ignore_index: int = 255):
    """The deterministic training view (no randomness: feature caches, plots): keep-ratio resize to
    ``scale``, centre crop to ``crop``, pad."""
    img, seg = resize_pair(img, seg, rescale_size(img.shape[-2], img.shape[-1], scale))
    h, w = img.shape[-2:]
    ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return pad_pair(img[:, y : y + ch, x : x + cw], seg[y : y + ch, x : x + cw], crop, ignore_index)


class MmsegTrainPipeline:
    """RandomResize -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion -> Pad, as
    mmseg's ``train_pipeline`` of DINOv2's and the thesis's segmentation configs.

    Args:
        crop_size: ``(h, w)`` of the crop and of the output (thesis: ``(560, 560)``).
        scale: RandomResize base scale ``(long, short)`` (thesis: ``(2048, 560)``).
        ratio_range: RandomResize ratio range.
        cat_max_ratio: RandomCrop's largest share of one class.
        flip_prob: RandomFlip probability.
        photometric: apply PhotoMetricDistortion.
        ignore_index: label of unlabelled pixels (and of padding).
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (560, 560),
        scale: Sequence[int] = (2048, 560),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = 255,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio, self.flip_prob = float(cat_max_ratio), float(flip_prob)
        self.photometric, self.ignore_index = bool(photometric), int(ignore_index)

    def __call__(self, img: torch.Tensor, seg: torch.Tensor, gen: torch.Generator):
        """``(img [3, H, W] uint8, seg [H, W] int64) -> (img [3, h, w], seg [h, w])`` at ``crop_size``."""
        img, seg = random_resize(img, seg, self.scale, self.ratio_range, gen)
        img, seg = random_crop(img, seg, self.crop_size, self.cat_max_ratio, self.ignore_index, gen)
        img, seg = random_flip(img, seg, self.flip_prob, gen)
        if self.photometric:
            img = photometric_distortion(img, gen)
        return pad_pair(img, seg, self.crop_size, self.ignore_index)
