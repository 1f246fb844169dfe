"""The SLACK transforms as batched :class:`~fulcra.interfaces.BaseAugmentationOp` plugins.

Conventions (thesis app. A.2.2, Table A.2):

* ``value_range = (v0, v1)`` is the value at magnitude 0 and at magnitude 1; a magnitude ``m`` in
  [0, 1] maps linearly to ``v0 + (v1 - v0) m``. For ops whose strength decreases with their value
  the range is written high-to-low (Solarize ``(255, 0)``, Posterize ``(8, 2)``,
  RandomResizedCrop ``(1, 0.05)``) so magnitude 0 is always the weakest transform.
* Symmetric ops (Shear, Translate, Rotate, the enhance ops, Hue) get a random sign per image.
* The enhance ops (Brightness, Color, Contrast, Sharpness) map to a delta in ``[0, 0.99]``; their
  ``apply`` takes torchvision's enhancement factor ``1 + sign * delta``.
* Size-relative ops (Translate, Cutout, RandomCrop) map magnitudes to a fraction of the image side;
  their ``apply`` takes pixels, as ``torchvision.transforms.v2.functional`` does.
* Every op takes ``[B, C, H, W]`` uint8 or float and per-image values ``[B]`` (or one float), and
  returns the same dtype, device and shape. uint8 photometric results are bit-identical to
  torchvision's; geometric ops use nearest sampling with zero fill (torchvision's AutoAugment
  defaults) and RandomResizedCrop bilinear resampling.

Two fusable families let the composite applier (:mod:`.composite`) process many ops in one pass:
``kind = "lut"`` ops expose :meth:`lut` (a 256-entry table per image and channel for uint8
images), ``kind = "affine"`` ops expose :meth:`matrix` (an inverse affine matrix per image).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from fulcra.interfaces import BaseAugmentationOp

from . import _kernels as K

__all__ = [
    "Op", "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast",
    "Equalize", "Invert", "Solarize", "Posterize", "Contrast", "Brightness", "Sharpness", "Color",
    "Cutout", "RandomCrop", "RandomResizedCrop", "Grayscale", "Hue", "ALL_OPS",
]


class Op(BaseAugmentationOp):
    """Base of the bundled ops: adds fusion hooks and a uint8/float dispatch.

    Attributes:
        kind: ``"lut"``, ``"affine"``, ``"identity"`` or ``"other"`` (how the composite may fuse it).
        has_magnitude: False for parameter-free ops (AutoContrast, Equalize, Invert, Grayscale, Identity).
    """

    kind = "other"
    has_magnitude = True

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(value_range={self.value_range})"

    # --- fusion hooks -------------------------------------------------------------------------
    def lut(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """``[B, C, 256]`` uint8 table for uint8 ``images`` (``kind == "lut"`` only)."""
        raise NotImplementedError

    def matrix(self, params: Mapping[str, Any], height: int, width: int) -> torch.Tensor:
        """``[B, 2, 3]`` float64 inverse affine matrices (``kind == "affine"`` only)."""
        return K.inverse_affine(*self.affine_args(params, height, width))

    def affine_args(self, params: Mapping[str, Any], height: int, width: int) -> tuple:
        """``(angle, tx, ty, shear_x, shear_y, cx, cy)``, each ``[B]`` float64, the arguments of
        :func:`~._kernels.inverse_affine` (``kind == "affine"`` only): the composite concatenates
        them over all affine ops of a stage and builds every matrix in one call."""
        raise NotImplementedError

    def apply_params(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        if self.kind == "identity":
            return images
        if self.kind == "lut" and images.dtype == torch.uint8:
            return K.apply_lut(images, self.lut(images, params))
        if self.kind == "affine":
            return K.warp_nearest(images, self.matrix(params, images.shape[-2], images.shape[-1]))
        return self._apply(images, params)

    def apply(self, images: torch.Tensor, value: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Deterministic form: ``value`` is torchvision's parameter for this op, one float or ``[B]``.

        Args:
            images: ``[B, C, H, W]`` uint8 in [0, 255] or float in [0, 1].
            value: float or ``[B]`` (ignored by parameter-free ops).
        Returns:
            ``[B, C, H, W]``, same dtype and device.
        """
        return self.apply_params(images, {"value": K.per_image(value, images.shape[0], images.device)})

    def _apply(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def _float_map(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
class Identity(Op):
    """Returns the images unchanged."""

    name = "identity"
    kind = "identity"
    has_magnitude = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


# --- geometric ------------------------------------------------------------------------------------
class _Affine(Op):
    kind = "affine"
    symmetric = True

    def _apply(self, images, params):  # pragma: no cover - apply_params handles affine ops
        return K.warp_nearest(images, self.matrix(params, images.shape[-2], images.shape[-1]))


class ShearX(_Affine):
    """Horizontal shear by factor ``v`` (Table A.2: [0, 1], random sign).

    ``apply(images, v)`` equals ``F.affine(img, angle=0, translate=[0, 0], scale=1,
    shear=[degrees(atan(v)), 0], center=[0, 0])``, nearest, zero fill (torchvision's AutoAugment call).
    """

    name = "shear_x"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return z, z, z, K.atan_degrees(v), z, z - width * 0.5, z - height * 0.5


class ShearY(_Affine):
    """Vertical shear by factor ``v`` (Table A.2: [0, 1], random sign); ``shear=[0, degrees(atan(v))]``."""

    name = "shear_y"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return z, z, z, z, K.atan_degrees(v), z - width * 0.5, z - height * 0.5


class _Translate(_Affine):
    axis = 0

    def sample_params(self, images, magnitude, generator):
        frac = super().sample_params(images, magnitude, generator)["value"]
        side = images.shape[-1] if self.axis == 0 else images.shape[-2]
        return {"value": frac.to(torch.float64) * side}

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return (z, v, z, z, z, z, z) if self.axis == 0 else (z, z, v, z, z, z, z)


class TranslateX(_Translate):
    """Horizontal translation; magnitudes map to a fraction of the width (Table A.2: [0, 0.75]),
    ``apply(images, pixels)`` equals ``F.affine(img, 0, [pixels, 0], 1, [0, 0])``, zero fill."""

    name = "translate_x"
    value_range = (0.0, 0.75)
    axis = 0

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


class TranslateY(_Translate):
    """Vertical translation; magnitudes map to a fraction of the height (Table A.2: [0, 0.75]),
    ``apply(images, pixels)`` equals ``F.affine(img, 0, [0, pixels], 1, [0, 0])``, zero fill."""

    name = "translate_y"
    value_range = (0.0, 0.75)
    axis = 1

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


class Rotate(_Affine):
    """Rotation in degrees (Table A.2: [0, 90], random sign); ``apply(images, deg)`` equals
    ``F.rotate(img, deg)`` (about the centre, nearest, zero fill)."""

    name = "rotate"
    value_range = (0.0, 90.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def affine_args(self, params, height, width):
        v = params["value"].to(torch.float64)
        z = torch.zeros_like(v)
        return -v, z, z, z, z, z, z


# --- lookup-table photometric ops -----------------------------------------------------------------
class _Lut(Op):
    kind = "lut"

    def _apply(self, images, params):
        return self._float_map(images, params)


class AutoContrast(_Lut):
    """Stretches each channel to the full range (``F.autocontrast``); parameter-free."""

    name = "auto_contrast"
    has_magnitude = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    @staticmethod
    def _stats(x: torch.Tensor, bound: float):
        lo = x.amin(dim=(-2, -1), keepdim=True).to(torch.float32)
        hi = x.amax(dim=(-2, -1), keepdim=True).to(torch.float32)
        eq = hi == lo
        inv_scale = (hi - lo).mul_(1.0 / bound)
        lo = torch.where(eq, torch.zeros_like(lo), lo)
        inv_scale = torch.where(eq, torch.ones_like(inv_scale), inv_scale)
        return lo, inv_scale

    def lut(self, images, params):
        lo, inv = self._stats(images, 255.0)  # [B, C, 1, 1]
        v = torch.arange(256, dtype=torch.float32, device=images.device).view(1, 1, 256)
        return (v - lo[..., 0]).div_(inv[..., 0]).clamp_(0, 255).to(torch.uint8)

    def _float_map(self, images, params):
        lo, inv = self._stats(images, 1.0)
        return (images - lo).div_(inv).clamp_(0, 1)


class Equalize(_Lut):
    """Histogram equalisation per channel, PIL's scheme as ``F.equalize``; parameter-free."""

    name = "equalize"
    has_magnitude = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def lut(self, images, params):
        B, C, H, W = images.shape
        if B * C <= 8 and images.dtype == torch.uint8:
            # a few large images: one histogram per channel straight from uint8, no int64 copy
            hist = torch.stack([torch.bincount(ch.reshape(-1), minlength=256)
                                for ch in images.reshape(B * C, H, W)]).view(B, C, 256)
        else:
            offs = torch.arange(B * C, device=images.device, dtype=torch.int64).view(B, C, 1) * 256
            flat = images.reshape(B, C, H * W).to(torch.int64) + offs
            hist = torch.bincount(flat.view(-1), minlength=B * C * 256).view(B, C, 256)
        cum = hist.cumsum(-1)
        last = cum.argmax(dim=-1, keepdim=True)
        step = (H * W - hist.gather(-1, last)).div(255, rounding_mode="floor")  # [B, C, 1]
        lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
        lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1).to(torch.uint8)
        ident = torch.arange(256, dtype=torch.uint8, device=images.device).expand_as(lut)
        return torch.where(step != 0, lut, ident)

    def _float_map(self, images, params):
        u8 = images.mul(255 + 1.0 - 1e-3).to(torch.uint8)
        return K.apply_lut(u8, self.lut(u8, params)).to(images.dtype).mul_(1.0 / 255)


class Invert(_Lut):
    """``255 - x`` (``F.invert``); parameter-free."""

    name = "invert"
    has_magnitude = False

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
        B, C = images.shape[:2]
        mean = _gray_floor(images).mean(dim=(-3, -2, -1)).view(B, 1, 1)
        r = params["value"].to(torch.float64)
        r32 = r.to(torch.float32).view(B, 1, 1)
        alpha = (1.0 - r).to(torch.float32).view(B, 1, 1)
        v = torch.arange(256, device=images.device, dtype=torch.float32).view(1, 1, 256)
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

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images
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

    def _apply(self, images, params):
        B, C, H, W = images.shape
        if H <= 2 or W <= 2:
            return images
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

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images
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

    def _apply(self, images, params):
        if images.shape[1] == 1:
            return images.clone()
        if images.dtype == torch.uint8:
            g = K.gray_uint8_exact(images).to(torch.uint8)
        else:
            g = _gray_floor(images)
        return g.expand_as(images).contiguous()


# --- ops with positional randomness -----------------------------------------------------------------
def _uniform(n: int, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


class Cutout(Op):
    """Zeroes a square patch (DeVries & Taylor); magnitudes map to its side as a fraction of the shorter
    image side (Table A.2: [0, 1]); the centre is uniform over the image, the patch clipped at borders.

    ``apply(images, side_px)`` cuts a centred square and equals ``F.erase(img, i, j, h, w, 0)`` on the
    same box; ``apply_params`` takes ``{"top", "left", "height", "width"}`` ``[B]`` for replay.
    """

    name = "cutout"
    value_range = (0.0, 1.0)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    @staticmethod
    def box(side: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, H: int, W: int) -> dict:
        side = side.round()
        y0 = (cy - torch.div(side, 2, rounding_mode="floor")).clamp(0, H)
        x0 = (cx - torch.div(side, 2, rounding_mode="floor")).clamp(0, W)
        y1 = (cy - torch.div(side, 2, rounding_mode="floor") + side).clamp(0, H)
        x1 = (cx - torch.div(side, 2, rounding_mode="floor") + side).clamp(0, W)
        return {"top": y0, "left": x0, "height": y1 - y0, "width": x1 - x0}

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        frac = self.magnitude_to_value(magnitude.to(torch.float64))
        n = images.shape[0]
        cy = (_uniform(n, generator, images.device) * H).floor()
        cx = (_uniform(n, generator, images.device) * W).floor()
        return self.box(frac * min(H, W), cy, cx, H, W)

    def apply(self, images, value=0.0):
        B, _, H, W = images.shape
        side = K.per_image(value, B, images.device)
        c = torch.full((B,), 0.0, dtype=torch.float64, device=images.device)
        return self.apply_params(images, self.box(side, c + H // 2, c + W // 2, H, W))

    def apply_params(self, images, params):
        B, C, H, W = images.shape
        dev = images.device
        t, l = params["top"].view(B, 1, 1), params["left"].view(B, 1, 1)
        h, w = params["height"].view(B, 1, 1), params["width"].view(B, 1, 1)
        ys = torch.arange(H, device=dev).view(1, H, 1)
        xs = torch.arange(W, device=dev).view(1, 1, W)
        inside = (ys >= t) & (ys < t + h) & (xs >= l) & (xs < l + w)
        return images.masked_fill(inside.unsqueeze(1), 0)


class RandomCrop(Op):
    """Zero-pads by ``p`` pixels and crops back a random ``H×W`` window (the CIFAR default crop);
    magnitudes map to ``p`` as a fraction of the shorter side (Table A.2: [0, 0.5]).

    Fused as an integer translation. ``apply(images, p)`` crops the top-left window:
    ``F.crop(F.pad(img, [p]), 0, 0, H, W)``; ``apply_params`` takes ``{"tx", "ty"}`` shifts ``[B]``.
    """

    name = "random_crop"
    kind = "affine"
    value_range = (0.0, 0.5)

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        p = (self.magnitude_to_value(magnitude.to(torch.float64)) * min(H, W)).round()
        n = images.shape[0]
        oy = (_uniform(n, generator, images.device) * (2 * p + 1)).floor()
        ox = (_uniform(n, generator, images.device) * (2 * p + 1)).floor()
        return {"tx": p - ox, "ty": p - oy}

    def apply(self, images, value=0.0):
        p = K.per_image(value, images.shape[0], images.device).round()
        return self.apply_params(images, {"tx": p, "ty": p})

    def affine_args(self, params, height, width):
        tx = params["tx"].to(torch.float64)
        z = torch.zeros_like(tx)
        return z, tx, params["ty"].to(torch.float64), z, z, z, z


class RandomResizedCrop(Op):
    """Crops a random box of area fraction ``s`` (aspect ratio log-uniform in [3/4, 4/3], uniform
    position) and resizes it back bilinearly; magnitudes map to ``s`` (Table A.2: [0.05, 1], written
    ``(1, 0.05)``: magnitude 0 keeps the whole image). Applied first in a composite when sampled.

    ``apply(images, s)`` crops the centred square-aspect box and equals ``F.resized_crop(img, top, left,
    h, w, [H, W])`` on it; ``apply_params`` takes ``{"top", "left", "height", "width"}`` ``[B]``.
    """

    name = "random_resized_crop"
    value_range = (1.0, 0.05)
    first = True

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)

    def sample_params(self, images, magnitude, generator):
        H, W = images.shape[-2:]
        n = images.shape[0]
        s = self.magnitude_to_value(magnitude.to(torch.float64)).clamp(1e-4, 1.0)
        log_r = torch.log(torch.tensor(3 / 4, dtype=torch.float64)) + _uniform(n, generator, images.device) * (
            2 * torch.log(torch.tensor(4 / 3, dtype=torch.float64))
        )
        ratio = torch.exp(log_r)
        w = (torch.sqrt(s * ratio) * W).round().clamp(1, W)
        h = (torch.sqrt(s / ratio) * H).round().clamp(1, H)
        top = (_uniform(n, generator, images.device) * (H - h + 1)).floor()
        left = (_uniform(n, generator, images.device) * (W - w + 1)).floor()
        return {"top": top, "left": left, "height": h, "width": w}

    def apply(self, images, value=1.0):
        B, _, H, W = images.shape
        s = K.per_image(value, B, images.device).clamp(1e-4, 1.0)
        h = (torch.sqrt(s) * H).round().clamp(1, H)
        w = (torch.sqrt(s) * W).round().clamp(1, W)
        return self.apply_params(images, {"top": ((H - h) / 2).round(), "left": ((W - w) / 2).round(), "height": h, "width": w})

    def apply_params(self, images, params):
        return K.crop_resize_bilinear(images, params["top"], params["left"], params["height"], params["width"])


ALL_OPS: tuple[type[Op], ...] = (
    Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, AutoContrast, Equalize, Invert, Solarize,
    Posterize, Contrast, Brightness, Sharpness, Color, Cutout, RandomCrop, RandomResizedCrop, Grayscale, Hue,
)
