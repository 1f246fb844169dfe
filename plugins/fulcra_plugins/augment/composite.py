"""Batched composite augmentation: K sampled ops per image, applied in grouped, fused calls.

For each composition stage the images are reordered so that those receiving the same op are
contiguous; ops are numbered so that all affine ops (Shear, Translate, Rotate, RandomCrop) are one
contiguous run and all lookup-table ops (AutoContrast, Equalize, Invert, Solarize, Posterize,
Contrast, Brightness) another. Each stage then costs one gather for every geometric image, one
table lookup for every uint8 LUT image, and one call per remaining op (Color, Sharpness, Hue,
Cutout, Grayscale, RandomResizedCrop) on a contiguous slice. The permutation is carried from stage to
stage and undone once at the end.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from . import _kernels as K
from .ops import ALL_OPS, Op

__all__ = ["build_ops", "CompositeAugment", "BUILTIN_OPS"]

BUILTIN_OPS: dict[str, type[Op]] = {cls.name: cls for cls in ALL_OPS}


def build_ops(names: Sequence[str], ranges: Mapping[str, Sequence[float]] | None = None) -> list:
    """Instantiate ops by name, with optional ``{name: [v0, v1]}`` value-range overrides.

    Bundled ops are built directly; any other name is looked up as an ``augmentations`` plugin,
    so a third-party op joins a search space from the config alone.
    """
    ranges = dict(ranges or {})
    ops = []
    for n in names:
        vr = ranges.get(n)
        if n in BUILTIN_OPS:
            ops.append(BUILTIN_OPS[n](value_range=vr))
        else:
            import fulcra

            ops.append(fulcra.create("augmentations", n, **({"value_range": list(vr)} if vr is not None else {})))
    return ops


_KIND_RANK = {"identity": 0, "affine": 1, "lut": 2, "other": 3}


class CompositeAugment:
    """Applies per-image compositions of ops in grouped calls.

    Args:
        ops: the N op instances (index ``n`` in ``op_index`` refers to ``ops[n]``).
    """

    def __init__(self, ops: Sequence):
        self.ops = list(ops)
        n = len(self.ops)
        kinds = [getattr(op, "kind", "other") for op in self.ops]
        # processing order: identity, affine run, lut run, others (ties by position)
        self._order = sorted(range(n), key=lambda i: (_KIND_RANK.get(kinds[i], 3), i))
        rank = torch.empty(n, dtype=torch.int64)
        rank[torch.tensor(self._order)] = torch.arange(n)
        self._rank = rank  # op index -> processing rank
        self._kinds = kinds
        self._first = torch.tensor([bool(getattr(op, "first", False)) for op in self.ops])

    def __call__(
        self, images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Apply ``K`` stages per image.

        Args:
            images: ``[B, C, H, W]`` uint8 or float in [0, 1].
            op_index: ``[B, K]`` int64 op indices into ``ops``.
            magnitude: ``[B, K]`` float magnitudes in [0, 1].
            generator: source of every remaining random choice (signs, positions, crops).

        Returns:
            ``[B, C, H, W]`` augmented images, same dtype and device. Ops flagged ``first``
            (RandomResizedCrop) are moved to the front of each image's composition.
        """
        B, Kst = op_index.shape
        dev = images.device
        if Kst == 0 or B == 0:
            return images
        op_index = op_index.to(dev)
        magnitude = magnitude.to(dev, torch.float32)
        if bool(self._first.any()):
            first = self._first.to(dev)[op_index]  # [B, K]
            key = (~first).long() * Kst + torch.arange(Kst, device=dev)
            srt = key.argsort(dim=1)
            op_index = op_index.gather(1, srt)
            magnitude = magnitude.gather(1, srt)
        rank = self._rank.to(dev)
        n_ops = len(self.ops)
        x = images
        perm = torch.arange(B, device=dev)
        for k in range(Kst):
            ops_k = op_index[perm, k]
            order = torch.argsort(rank[ops_k], stable=True)
            x = x.index_select(0, order)
            perm = perm[order]
            ops_sorted = ops_k[order]
            mags = magnitude[perm, k]
            counts = torch.bincount(rank[ops_sorted], minlength=n_ops).tolist()
            x = self._stage(x, mags, counts, generator)
        return x.index_select(0, torch.argsort(perm))

    def _stage(self, x, mags, counts, generator):
        """One stage on images sorted by processing rank; ``counts[r]`` images get op ``_order[r]``."""
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        y = torch.empty_like(x)
        if counts[0]:  # identity images (processing rank 0) are copied, every other slice is written below
            y[: counts[0]] = x[: counts[0]]
        H, W = x.shape[-2:]
        aff_mats, aff_lo, aff_hi = [], None, None
        lut_tabs, lut_lo, lut_hi = [], None, None
        for r, n in enumerate(self._order):
            lo, hi = starts[r], starts[r + 1]
            if lo == hi:
                continue
            op, kind = self.ops[n], self._kinds[n]
            if kind == "identity":
                if r != 0:
                    y[lo:hi] = x[lo:hi]
                continue
            sub = x[lo:hi]
            params = op.sample_params(sub, mags[lo:hi], generator)
            if kind == "affine":
                aff_mats.append(op.matrix(params, H, W))
                aff_lo = lo if aff_lo is None else aff_lo
                aff_hi = hi
            elif kind == "lut" and x.dtype == torch.uint8:
                lut_tabs.append(op.lut(sub, params).expand(hi - lo, x.shape[1], 256))
                lut_lo = lo if lut_lo is None else lut_lo
                lut_hi = hi
            else:
                y[lo:hi] = op.apply_params(sub, params)
        if aff_mats:
            y[aff_lo:aff_hi] = K.warp_nearest(x[aff_lo:aff_hi], torch.cat(aff_mats))
        if lut_tabs:
            y[lut_lo:lut_hi] = K.apply_lut(x[lut_lo:lut_hi], torch.cat(lut_tabs))
        return y
