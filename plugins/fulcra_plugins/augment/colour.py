"""Colour ops: Invert, Solarize, Posterize, Brightness, Contrast, Color, Sharpness, Hue, Grayscale."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from . import _kernels as K
from . import _native as N
from ._base import Op, _Lut

__all__ = [
    "Invert",
    "Solarize",
    "Posterize",
    "Brightness",
    "Contrast",
    "Color",
    "Sharpness",
    "Hue",
    "Grayscale",
    "ColorJitter",
]


class Invert(_Lut):
    """``255 - x`` (``F.invert``); parameter-free."""

    name = "invert"
    has_magnitude = False

    lut_reads_pixels = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def lut(self, images, params):
        B, C = images.shape[:2]
        return (255 - torch.arange(256, device=images.device)).to(torch.uint8).expand(B, C, 256)

    def apply_params(self, images, params):
        # a single instruction beats a table lookup when Invert runs alone
        return images.bitwise_not() if images.dtype == torch.uint8 else 1.0 - images


class Solarize(_Lut):
    """Inverts pixels ``>= threshold`` (``F.solarize``); Table A.2: [0, 255], magnitude 0 = 255."""

    name = "solarize"
    value_range = (255.0, 0.0)

    lut_reads_pixels = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def lut(self, images, params):
        B, C = images.shape[:2]
        thr = params["value"].to(torch.float64).view(B, 1, 1)
        v = torch.arange(256, device=images.device, dtype=torch.float64).view(1, 1, 256)
        out = torch.where(v >= thr, 255 - v, v)
        return out.to(torch.uint8).expand(B, C, 256)

    def apply_params(self, images, params):
        if images.dtype != torch.uint8:
            return super().apply_params(images, params)
        # integers v >= thr exactly when v >= ceil(thr); 255 - v is v ^ 255: a compare and an xor
        # in uint8, no table (torch.where on uint8 is several times slower than both)
        B = images.shape[0]
        t = torch.ceil(params["value"].to(torch.float64)).clamp(0, 256).view(B, 1, 1, 1)
        mask = images >= t.clamp(max=255).to(torch.uint8)
        if bool((t > 255).any()):
            mask &= t <= 255
        return images ^ mask.view(torch.uint8).mul_(255)

    def _float_map(self, images, params):
        thr = params["value"].to(images.dtype).view(-1, 1, 1, 1) / 255.0
        return torch.where(images >= thr, 1.0 - images, images)


class Posterize(_Lut):
    """Keeps the ``bits`` most significant bits (``F.posterize``); Table A.2: [2, 8] bits, magnitude 0 = 8."""

    name = "posterize"
    value_range = (8.0, 2.0)

    lut_reads_pixels = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def magnitude_to_value(self, magnitude, sign=None):
        return super().magnitude_to_value(magnitude).round()

    def lut(self, images, params):
        B, C = images.shape[:2]
        bits = params["value"].round().to(torch.int64).clamp(0, 8).view(B, 1, 1)
        mask = (((1 << (8 - bits)) - 1) ^ 0xFF).to(torch.uint8)
        return (torch.arange(256, device=images.device, dtype=torch.uint8).view(1, 1, 256) & mask).expand(B, C, 256)

    def apply_params(self, images, params):
        if images.dtype != torch.uint8:
            return super().apply_params(images, params)
        # the table is v & mask: one uint8 pass
        B = images.shape[0]
        bits = params["value"].round().to(torch.int64).clamp(0, 8).view(B, 1, 1, 1)
        return images & (((1 << (8 - bits)) - 1) ^ 0xFF).to(torch.uint8)

    def _float_map(self, images, params):
        levels = (2.0 ** params["value"].round()).to(images.dtype).view(-1, 1, 1, 1)
        return images.mul(levels).floor_().clamp_(min=0).minimum(levels - 1).div_(levels)


class _Enhance(Op):
    """Enhance ops: magnitudes map to ``delta`` in ``value_range`` ([0, 0.99]); factor ``1 ± delta``."""

    symmetric = True
    value_range = (0.0, 0.99)

    def magnitude_to_value(self, magnitude, sign=None):
        delta = super().magnitude_to_value(magnitude, None)
        return 1.0 + (delta * sign if sign is not None else delta)


class Brightness(_Enhance):
    """``F.adjust_brightness(img, factor)``; factor ``1 ± delta``, delta in [0, 0.99] (Table A.2)."""

    name = "brightness"
    kind = "lut"

    lut_reads_pixels = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def lut(self, images, params):
        B, C = images.shape[:2]
        r = params["value"].to(torch.float32).view(B, 1, 1)
        v = torch.arange(256, device=images.device, dtype=torch.float32).view(1, 1, 256)
        return (v * r).clamp_(0, 255).to(torch.uint8).expand(B, C, 256)

    def _apply(self, images, params):
        return images.mul(params["value"].to(images.dtype).view(-1, 1, 1, 1)).clamp_(0, 1)


def _gray_floor(images: torch.Tensor) -> torch.Tensor:
    """The grayscale image torchvision blends with: floored for uint8; ``[B, 1, H, W]`` float32."""
    if images.shape[1] == 1:
        return images.to(torch.float32)
    if images.dtype == torch.uint8:
        return K.gray_uint8_exact(images).floor_()
    r, g, b = images.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


class Contrast(_Enhance):
    """``F.adjust_contrast(img, factor)`` (blend with the mean grey level); factor ``1 ± delta``."""

    name = "contrast"
    kind = "lut"

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def lut(self, images, params):
        return self._lut_from_mean(_gray_floor(images).mean(dim=(-3, -2, -1)), images.shape[1], params)

    def lut_indexed(self, images, index, params):
        C, H, W = images.shape[1:]
        # the float32 mean of integers is exact while every partial sum is (sum < 2**24): then the
        # compiled integer sum divided in float32 is the torch mean, whatever torch's summation order
        if C in (1, 3) and H * W * 255 < (1 << 24) and N.available(images):
            mean = N.grey_sum(images, index).to(torch.float32).div_(H * W)
            return self._lut_from_mean(mean, C, params)
        return super().lut_indexed(images, index, params)

    @staticmethod
    def _lut_from_mean(mean, C, params):
        B = mean.shape[0]
        mean = mean.view(B, 1, 1)
        r = params["value"].to(torch.float64)
        r32 = r.to(torch.float32).view(B, 1, 1)
        alpha = (1.0 - r).to(torch.float32).view(B, 1, 1)
        v = torch.arange(256, device=mean.device, dtype=torch.float32).view(1, 1, 256)
        return K.fma32(v * r32, mean, alpha).clamp_(0, 255).to(torch.uint8).expand(B, C, 256)

    def _apply(self, images, params):
        r = params["value"].to(images.dtype).view(-1, 1, 1, 1)
        mean = _gray_floor(images).mean(dim=(-3, -2, -1), keepdim=True)
        return (images * r + mean * (1 - r)).clamp_(0, 1)


class Color(_Enhance):
    """``F.adjust_saturation(img, factor)`` (blend with the grey image); factor ``1 ± delta``."""

    name = "color"

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def native_apply(self, images, params, index=None, out=None, out_index=None):
        if images.shape[1] != 3 or not N.available(images):
            return None
        r = params["value"].to(torch.float64)
        return N.color(images, r.to(torch.float32), (1.0 - r).to(torch.float32), index, out, out_index)

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images
        y = self.native_apply(images, params)
        if y is not None:
            return y
        gray = _gray_floor(images)
        if images.dtype == torch.uint8:
            r = params["value"].to(torch.float64)
            r32 = r.to(torch.float32).view(-1, 1, 1, 1)
            alpha = (1.0 - r).to(torch.float32).view(-1, 1, 1, 1)
            return K.fma32_trunc_exact(images.to(torch.float32).mul_(r32), gray, alpha).clamp_(0, 255).to(torch.uint8)
        r = params["value"].to(images.dtype).view(-1, 1, 1, 1)
        return (images * r + gray * (1 - r)).clamp_(0, 1)


class Sharpness(_Enhance):
    """``F.adjust_sharpness(img, factor)`` (blend with a 3×3 smoothing, borders kept); factor ``1 ± delta``."""

    name = "sharpness"

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def native_apply(self, images, params, index=None, out=None, out_index=None):
        if images.shape[-2] <= 2 or images.shape[-1] <= 2 or not N.available(images):
            return None
        alpha = (1.0 - params["value"].to(torch.float64)).to(torch.float32)
        return N.sharpness(images, alpha, index, out, out_index)

    def _apply(self, images, params):
        B, C, H, W = images.shape
        if H <= 2 or W <= 2:
            return images
        y = self.native_apply(images, params)
        if y is not None:
            return y
        fp = images.is_floating_point()
        r = params["value"].to(torch.float64)
        if fp:
            a, b = 1.0 / 13.0, 5.0 / 13.0
            kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=images.dtype, device=images.device)
            x = images.clone()
            blurred = F.conv2d(images, kernel.expand(C, 1, 3, 3), groups=C)
            view = x[..., 1:-1, 1:-1]
            view.add_((blurred - view) * (1.0 - r).to(images.dtype).view(B, 1, 1, 1))
            return x.clamp_(0, 1)
        # torchvision rounds the 3×3 blur (weights 1/13, centre 5/13) of integers: S/13 is never a
        # half-integer, so round(S/13) = floor((2S + 13) / 26); 2S + 13 is odd, so the quotient is at
        # least 1/26 from an integer and float32's rounding (< 4e-5 below 256) cannot move the floor.
        # Sums of at most 13·255 are exact in float32.
        xf = images.to(torch.float32)
        inner = xf[..., 1:-1, 1:-1]
        rows = xf[..., :-2, :] + xf[..., 1:-1, :]
        rows += xf[..., 2:, :]
        S = rows[..., :-2] + rows[..., 1:-1]
        S += rows[..., 2:]
        S.add_(inner, alpha=4)
        d = S.mul_(2.0 / 26.0).add_(13.0 / 26.0).floor_().sub_(inner)  # blurred - centre, exact integers
        alpha = (1.0 - r).to(torch.float32).view(B, 1, 1, 1)
        y = K.fma32_trunc_exact(inner, d, alpha)
        out = images.clone()
        out[..., 1:-1, 1:-1] = y.clamp_(0, 255)
        return out


class Hue(Op):
    """``F.adjust_hue(img, factor)``; factor in [-0.5, 0.5] (magnitudes map to [0, 0.5], random sign)."""

    name = "hue"
    symmetric = True
    value_range = (0.0, 0.5)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def native_apply(self, images, params, index=None, out=None, out_index=None):
        if images.shape[1] != 3 or not N.available(images):
            return None
        return N.hue(images, params["value"].to(torch.float32), index, out, out_index)

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images
        y = self.native_apply(images, params)
        if y is not None:
            return y
        fp = images.is_floating_point()
        x = images if fp else images.to(torch.float32).mul_(1.0 / 255)
        hsv = K.rgb_to_hsv(x)
        h, s, v = hsv.unbind(1)
        h = h.add(params["value"].to(torch.float32).view(-1, 1, 1)).remainder_(1.0)
        out = K.hsv_to_rgb(torch.stack((h, s, v), dim=1))
        return out.to(images.dtype) if fp else out.mul_(255 + 1.0 - 1e-3).to(torch.uint8)


class Grayscale(Op):
    """``F.rgb_to_grayscale(img, num_output_channels=C)``: grey replicated on every channel; parameter-free."""

    name = "grayscale"
    has_magnitude = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def native_apply(self, images, params, index=None, out=None, out_index=None):
        if images.shape[1] != 3 or not N.available(images):
            return None
        return N.grayscale(images, index, out, out_index)

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images.clone()
        y = self.native_apply(images, params)
        if y is not None:
            return y
        if images.dtype == torch.uint8:
            g = K.gray_uint8_exact(images).to(torch.uint8)
        else:
            g = _gray_floor(images)
        return g.expand_as(images).contiguous()


class ColorJitter(Op):
    """torchvision's ``ColorJitter(s, s, s)``: brightness, contrast and saturation factors each
    uniform in ``[1 - s, 1 + s]``, applied in a random order per image (torchvision permutes its
    sub-transforms at every call); the default pipeline of TrivialAugment's ImageNet training
    (``s = 0.4``). Magnitudes map to the strength ``s`` (``value_range`` (0, 0.4)).

    ``apply(images, s)`` is the deterministic form: factors ``1 + s`` in torchvision's order
    brightness, contrast, saturation, i.e. ``F.adjust_saturation(F.adjust_contrast(
    F.adjust_brightness(img, 1 + s), 1 + s), 1 + s)``; ``apply_params`` takes ``{"factors" [B, 3],
    "order" [B, 3]}`` (a permutation of 0 = brightness, 1 = contrast, 2 = saturation) for replay,
    each step bit-identical to torchvision's on uint8.
    """

    name = "color_jitter"
    value_range = (0.0, 0.4)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)
        self._steps = (Brightness(), Contrast(), Color())

    def sample_params(self, images, magnitude, generator):
        s = self.magnitude_to_value(magnitude.to(torch.float64)).view(-1, 1)
        n = images.shape[0]
        u = torch.rand(n, 3, generator=generator, device=images.device, dtype=torch.float64)
        order = torch.argsort(torch.rand(n, 3, generator=generator, device=images.device, dtype=torch.float64), dim=1)
        return {"factors": 1.0 - s + 2.0 * s * u, "order": order}

    def apply(self, images, value=0.0):
        B = images.shape[0]
        f = 1.0 + K.per_image(value, B, images.device).to(torch.float64).view(-1, 1).expand(B, 3)
        order = torch.arange(3, device=images.device).expand(B, 3)
        return self.apply_params(images, {"factors": f, "order": order})

    def apply_params(self, images, params):
        factors, order = params["factors"].to(torch.float64), params["order"].to(torch.int64)
        out = images.clone()
        # images with the same permutation go through the three steps together
        perms, group = torch.unique(order, dim=0, return_inverse=True)
        for g in range(perms.shape[0]):
            idx = torch.nonzero(group == g, as_tuple=False).flatten()
            x = out[idx]
            for step in perms[g].tolist():
                x = self._steps[step].apply_params(x, {"value": factors[idx, step]})
            out[idx] = x
        return out
