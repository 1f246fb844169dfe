"""Histogram ops: AutoContrast and Equalize (per-channel tables computed from each image)."""

from __future__ import annotations

from typing import Sequence

import torch

from . import _kernels as K
from . import _native as N
from ._base import _Lut

__all__ = ["AutoContrast", "Equalize"]


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
        return AutoContrast._scale(lo, hi, bound)

    @staticmethod
    def _scale(lo: torch.Tensor, hi: torch.Tensor, bound: float):
        eq = hi == lo
        inv_scale = (hi - lo).mul_(1.0 / bound)
        lo = torch.where(eq, torch.zeros_like(lo), lo)
        inv_scale = torch.where(eq, torch.ones_like(inv_scale), inv_scale)
        return lo, inv_scale

    def lut(self, images, params):
        return self._lut_from(*self._stats(images, 255.0))

    def lut_indexed(self, images, index, params):
        if not N.available(images):
            return super().lut_indexed(images, index, params)
        mm = N.minmax(images, index).to(torch.float32).unsqueeze(-1)  # [n, C, 2, 1]
        return self._lut_from(*self._scale(mm[:, :, :1], mm[:, :, 1:], 255.0))

    @staticmethod
    def _lut_from(lo, inv):
        """The table of ``lo``, ``inv`` ``[B, C, 1, 1]`` float32 (:meth:`_scale`)."""
        v = torch.arange(256, dtype=torch.float32, device=lo.device).view(1, 1, 256)
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
            hist = torch.stack(
                [torch.bincount(ch.reshape(-1), minlength=256) for ch in images.reshape(B * C, H, W)]
            ).view(B, C, 256)
        else:
            offs = torch.arange(B * C, device=images.device, dtype=torch.int64).view(B, C, 1) * 256
            flat = images.reshape(B, C, H * W).to(torch.int64) + offs
            hist = torch.bincount(flat.view(-1), minlength=B * C * 256).view(B, C, 256)
        return self._lut_from(hist, H * W)

    def lut_indexed(self, images, index, params):
        if not N.available(images):
            return super().lut_indexed(images, index, params)
        H, W = images.shape[-2:]
        return self._lut_from(N.hist(images, index), H * W)

    @staticmethod
    def _lut_from(hist: torch.Tensor, npix: int) -> torch.Tensor:
        """PIL's equalisation table of per-channel histograms ``[B, C, 256]`` int64 of ``npix`` pixels."""
        cum = hist.cumsum(-1)
        last = cum.argmax(dim=-1, keepdim=True)
        step = (npix - hist.gather(-1, last)).div(255, rounding_mode="floor")  # [B, C, 1]
        lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
        lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1).to(torch.uint8)
        ident = torch.arange(256, dtype=torch.uint8, device=hist.device).expand_as(lut)
        return torch.where(step != 0, lut, ident)

    def _float_map(self, images, params):
        u8 = images.mul(255 + 1.0 - 1e-3).to(torch.uint8)
        return K.apply_lut(u8, self.lut(u8, params)).to(images.dtype).mul_(1.0 / 255)
