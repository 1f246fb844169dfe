"""The base of the bundled ops: fusion hooks (``kind``, ``lut``, ``matrix``) and the uint8/float
dispatch; see :mod:`.ops` for the value conventions."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fulcra.interfaces import BaseAugmentationOp

from . import _kernels as K
from . import _native as N

__all__ = ["Op", "Identity"]


class Op(BaseAugmentationOp):
    """Base of the bundled ops: adds fusion hooks and a uint8/float dispatch.

    Attributes:
        kind: ``"lut"``, ``"affine"``, ``"identity"`` or ``"other"`` (how the composite may fuse it).
        has_magnitude: False for parameter-free ops (AutoContrast, Equalize, Invert, Grayscale, Identity).
    """

    kind = "other"
    has_magnitude = True
    #: whether :meth:`lut` reads the pixels (False: only the batch's shape and device)
    lut_reads_pixels = True

    def __init__(self, value_range: Sequence[float] | None = None):
        """
        Args:
            value_range: ``[v0, v1]``, the op's value at magnitude 0 and at magnitude 1 (default: the
                op's Table A.2 range; written high-to-low for ops that weaken as the value grows).
        """
        super().__init__(value_range)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(value_range={self.value_range})"

    # --- fusion hooks -------------------------------------------------------------------------
    def lut(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """``[B, C, 256]`` uint8 table for uint8 ``images`` (``kind == "lut"`` only)."""
        raise NotImplementedError

    def lut_indexed(self, images: torch.Tensor, index: torch.Tensor | None, params: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`lut` of ``images[index]`` (all images when ``index`` is None) without gathering
        them where the table needs no pixels or a compiled kernel computes its statistics in place."""
        if index is None:
            return self.lut(images, params)
        if not self.lut_reads_pixels:
            return self.lut(images[:1].expand(index.numel(), *images.shape[1:]), params)
        return self.lut(images.index_select(0, index.to(images.device)), params)

    def native_apply(
        self,
        images: torch.Tensor,
        params: Mapping[str, Any],
        index: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        out_index: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The op on ``images[index]`` by a compiled whole-batch kernel (:mod:`._native`), written
        into ``out[out_index]`` (a new tensor when ``out`` is None) and returned; None, with nothing
        written, where the op has no kernel for these images (CUDA, float, no compiler, ...). The
        result is bit-identical to :meth:`apply_params` on ``images[index]``."""
        if self.kind == "lut" and N.available(images):
            n = images.shape[0] if index is None else index.numel()
            if _sliceable(params, n):
                return N.lut(images, self.lut_indexed(images, index, params), index, out, out_index)
        return None

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
            y = self.native_apply(images, params)
            return y if y is not None else K.apply_lut(images, self.lut(images, params))
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


class Identity(Op):
    """Returns the images unchanged."""

    name = "identity"
    kind = "identity"
    has_magnitude = False

    def __init__(self, value_range: Sequence[float] | None = None):
        super().__init__(value_range)


class _Lut(Op):
    """Photometric ops that are a 256-entry table per image and channel on uint8."""

    kind = "lut"

    def _apply(self, images, params):
        return self._float_map(images, params)


def _sliceable(params: Mapping, n: int) -> bool:
    """Whether every parameter is a per-image ``[n, ...]`` tensor."""
    return all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n for v in params.values())
