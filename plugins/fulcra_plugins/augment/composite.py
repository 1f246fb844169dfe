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

from fulcra.policy import build_ops

from . import _kernels as K
from . import _native as N
from .ops import ALL_OPS, Op

__all__ = ["build_ops", "CompositeAugment", "BUILTIN_OPS"]

BUILTIN_OPS: dict[str, type[Op]] = {cls.name: cls for cls in ALL_OPS}


_KIND_RANK = {"identity": 0, "affine": 1, "lut": 2, "other": 3}


class CompositeAugment:
    """Applies per-image compositions of ops in grouped calls (the ``composite`` applier plugin).

    Args:
        ops: the N op instances (index ``n`` in ``op_index`` refers to ``ops[n]``): any
            :class:`~fulcra.interfaces.AugmentationOp`. Ops with ``sample_params``/``apply_params``
            are replayable and chunked; the bundled affine and table ops are fused; an op with only
            the protocol's ``__call__`` is called once per stage on the images that drew it.
    """

    def __init__(self, ops: Sequence):
        self.ops = list(ops)
        n = len(self.ops)
        # only the bundled ops' fusion hooks are trusted; any other op is applied through its own call
        kinds = [op.kind if isinstance(op, Op) else "other" for op in self.ops]
        # processing order: identity, affine run, lut run, others (ties by position)
        self._order = sorted(range(n), key=lambda i: (_KIND_RANK.get(kinds[i], 3), i))
        rank = torch.empty(n, dtype=torch.int64)
        rank[torch.tensor(self._order)] = torch.arange(n)
        self._rank = rank  # op index -> processing rank
        self._kinds = kinds
        self._first = torch.tensor([bool(getattr(op, "first", False)) for op in self.ops])

    def __call__(
        self,
        images: torch.Tensor,
        op_index: torch.Tensor,
        magnitude: torch.Tensor,
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
        # ``perm`` is the grouping order (images sorted by processing rank, stably, stage after stage):
        # it fixes which image receives which random draw, exactly as when the images themselves were
        # permuted; the images stay in their original order and each group is gathered chunk by chunk
        perm = torch.arange(B, device=dev)
        for k in range(Kst):
            ops_k = op_index[perm, k]
            order = torch.argsort(rank[ops_k], stable=True)
            perm = perm[order]
            ops_sorted = ops_k[order]
            mags = magnitude[perm, k]
            counts = torch.bincount(rank[ops_sorted], minlength=n_ops).tolist()
            x = self._stage(x, perm, mags, counts, generator)
        return x

    def _chunk(self, x: torch.Tensor) -> int:
        """Images per kernel call: keeps every intermediate of a call well below glibc's mmap threshold
        (so memory is reused, not page-faulted afresh) and close to the CPU caches. CUDA takes all."""
        if x.device.type != "cpu":
            return 1 << 30
        per_image = x[0].numel()
        return max(1, self.chunk_values // max(per_image, 1))

    #: values (pixels × channels) per kernel call on CPU: one image at 224×224 (read in place, no
    #: gather copy), whole groups at 32×32 (few calls)
    chunk_values = 1 << 17

    def _stage(self, x, perm, mags, counts, generator):
        """One stage: ``perm[starts[r]:starts[r + 1]]`` are the original indices of the images that get
        op ``_order[r]``; draws happen group by group in rank order. Returns a new ``[B, C, H, W]``."""
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        y = _Out(x)
        H, W = x.shape[-2:]
        step = self._chunk(x)
        # compiled whole-group kernels (uint8 on CPU, _native.py): one call per op and stage, reading
        # the images in place and writing straight into the output
        nat = N.available(x)
        proxy_src = x[:1]
        aff_idx, aff_mats = [], []
        lut_segs = []  # (op, original indices, params)
        for r, n in enumerate(self._order):
            lo, hi = starts[r], starts[r + 1]
            if lo == hi:
                continue
            op, kind = self.ops[n], self._kinds[n]
            gidx = perm[lo:hi]
            if kind == "identity":
                y.put(gidx, x, gidx)
                continue
            if not _replayable(op):
                # only the AugmentationOp protocol: the op draws its own randomness from `generator`
                y.put(gidx, op(x.index_select(0, gidx), mags[lo:hi], generator))
                continue
            # the bundled ops only read the batch's shape and device to draw their parameters
            if type(op) in _SHAPE_ONLY:
                sub = proxy_src.expand(hi - lo, *x.shape[1:])
            else:
                sub = x.index_select(0, gidx)
            params = op.sample_params(sub, mags[lo:hi], generator)
            if kind == "affine":
                aff_idx.append(gidx)
                if type(op).matrix is Op.matrix:  # arguments for one batched inverse_affine below
                    aff_mats.append(op.affine_args(params, H, W))
                else:
                    aff_mats.append(op.matrix(params, H, W))
            elif (
                kind == "lut"
                and x.dtype == torch.uint8
                and _sliceable(params, hi - lo)
                and (nat or step > 1 or type(op).apply_params is Op.apply_params)
            ):
                # tables fused across ops pay off for many small images; one large image at a time
                # goes through the op's own uint8 path when it has one (Invert, Posterize, Solarize)
                lut_segs.append((op, gidx, params))
            elif (
                nat and isinstance(op, Op) and y.native(gidx, lambda dst, di: op.native_apply(x, params, gidx, dst, di))
            ):
                pass
            elif not _sliceable(params, hi - lo):
                y.put(gidx, op.apply_params(x.index_select(0, gidx), params))
            else:
                for a in range(0, hi - lo, step):
                    b = min(a + step, hi - lo)
                    ci = gidx[a:b]
                    y.put(ci, op.apply_params(_take(x, ci), _slice(params, a, b)))
        if aff_idx:
            idx = torch.cat(aff_idx)
            if all(isinstance(m, tuple) for m in aff_mats):
                # every matrix is elementwise float64 arithmetic on its own image's arguments, so
                # one call on the concatenated arguments gives the same matrices as one call per op
                mats = K.inverse_affine(*(torch.cat(a) for a in zip(*aff_mats)))
            else:
                mats = torch.cat([K.inverse_affine(*m) if isinstance(m, tuple) else m for m in aff_mats])
            for a in range(0, idx.numel(), step):
                ci = idx[a : a + step]
                y.put(ci, K.warp_nearest(_take(x, ci), mats[a : a + step]))
        if lut_segs:
            if nat:
                self._luts_native(x, y, lut_segs)
            else:
                self._luts(x, y, lut_segs, step)
        return y.finish()

    @staticmethod
    def _luts_native(x, y, segs):
        """All uint8 lookup-table images of a stage in one compiled call: each op's tables for its
        whole group (statistics computed in place), then one pass over every image."""
        C = x.shape[1]
        idx = torch.cat([s[1] for s in segs])
        tabs = [op.lut_indexed(x, gidx, params).expand(gidx.numel(), C, 256) for op, gidx, params in segs]
        table = tabs[0] if len(tabs) == 1 else torch.cat(tabs)
        y.native(idx, lambda dst, di: N.lut(x, table, idx, dst, di))

    @staticmethod
    def _luts(x, y, segs, step):
        """All uint8 lookup-table images of a stage, one gather per chunk over the ops' tables."""
        C = x.shape[1]
        idx = torch.cat([s[1] for s in segs])
        bounds = [0]
        for s in segs:
            bounds.append(bounds[-1] + s[1].numel())
        total = bounds[-1]
        for a in range(0, total, step):
            b = min(a + step, total)
            ci = idx[a:b]
            sub = _take(x, ci)
            tabs = []
            for (op, _, params), s0, s1 in zip(segs, bounds[:-1], bounds[1:]):
                lo, hi = max(a, s0), min(b, s1)
                if lo >= hi:
                    continue
                tabs.append(op.lut(sub[lo - a : hi - a], _slice(params, lo - s0, hi - s0)).expand(hi - lo, C, 256))
            y.put(ci, K.apply_lut(sub, tabs[0] if len(tabs) == 1 else torch.cat(tabs)))


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` along the batch dimension; a view (no copy) for a single image."""
    if idx.numel() == 1:
        i = int(idx)
        return x[i : i + 1]
    return x.index_select(0, idx)


class _Out:
    """The output of a stage, filled group by group: ``put(idx, src)`` means ``y[idx] = src`` along
    the batch dimension.

    ``index_copy_`` moves one element at a time on CPU, so: large CPU images are copied one memcpy
    per image into the output; small CPU images are collected and placed by one ``cat`` and one
    row gather (``index_select``) at the end; CUDA uses ``index_copy_``.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.mode = "index" if x.device.type != "cpu" else ("rows" if x[0].numel() >= 8192 else "collect")
        self.y = None if self.mode == "collect" else torch.empty_like(x)
        self.idx: list = []
        self.parts: list = []

    def native(self, idx: torch.Tensor, write) -> bool:
        """``write(dst, dst_idx)`` fills images ``dst_idx`` of ``dst`` with the results for ``idx``
        (a compiled kernel) and returns them, or returns None having written nothing; True if it
        wrote. CPU only."""
        if self.mode == "rows":
            return write(self.y, idx) is not None
        out = write(None, None)
        if out is None:
            return False
        self.idx.append(idx)
        self.parts.append(out)
        return True

    def put(self, idx: torch.Tensor, src: torch.Tensor, src_idx: torch.Tensor | None = None) -> None:
        if self.mode == "rows":
            y = self.y
            if idx.numel() == 1:  # one image (a warped one): one memcpy
                y[int(idx)].copy_(src[0 if src_idx is None else int(src_idx)])
                return
            if src.is_contiguous() and src.dtype == y.dtype and N.available(src) and y.is_contiguous():
                N.copy_rows(src, y, idx, src_idx)  # one memcpy per image in one call
                return
            dst = idx.tolist()
            srcs = src_idx.tolist() if src_idx is not None else range(len(dst))
            for i, j in zip(dst, srcs):
                y[i].copy_(src[j])
            return
        if src_idx is not None:
            src = src.index_select(0, src_idx)
        if self.mode == "index":
            self.y.index_copy_(0, idx, src)
        else:
            self.idx.append(idx)
            self.parts.append(src)

    def finish(self) -> torch.Tensor:
        if self.mode != "collect":
            return self.y
        idx = torch.cat(self.idx)
        inv = torch.empty_like(idx)
        inv[idx] = torch.arange(idx.numel(), device=idx.device)
        out = self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)
        return out.index_select(0, inv)


def _replayable(op) -> bool:
    """Whether an op splits its draws from their application (``BaseAugmentationOp``'s contract)."""
    return callable(getattr(op, "sample_params", None)) and callable(getattr(op, "apply_params", None))


def _sliceable(params: Mapping, n: int) -> bool:
    """Whether every parameter is a per-image ``[n, ...]`` tensor (so a chunk can take a slice)."""
    return all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n for v in params.values())


def _slice(params: Mapping, a: int, b: int) -> dict:
    return {k: v[a:b] for k, v in params.items()}


# ops whose ``sample_params`` reads only the shape and device of the batch (not its pixels)
_SHAPE_ONLY = frozenset(ALL_OPS)
