"""The compiled uint8 colour and histogram kernels (``_colour.c``, built by :mod:`fulcra.native`).

Each wrapper works on a whole batch in one call: it reads images ``sidx`` of a contiguous CPU uint8
``src [N, C, H, W]`` and writes images ``didx`` of ``dst`` (same C, H, W), so the composite gathers
and writes back without copies. The kernels reproduce the torch reference paths of ``colour.py``
and ``histogram.py`` bit for bit (the tests compare them); :func:`available` is False, and the
callers run the torch path, on CUDA, for float images, with ``FULCRA_NATIVE=0`` or without a C
compiler (said once in the log).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("_colour.c")


def lib():
    """The loaded kernel library, or None (the reason logged once). Cached by
    :func:`fulcra.native.kernel` without touching the file system: called for every group of
    every stage."""
    from fulcra import native

    vp, i64, ci = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    sig = {
        "fulcra_grey_floor": [vp, i64, i64, vp],
        "fulcra_grey_sum": [vp, vp, i64, i64, i64, vp, ci],
        "fulcra_color": [vp, vp, vp, vp, i64, i64, vp, vp, ci],
        "fulcra_sharpness": [vp, vp, vp, vp, i64, i64, i64, i64, vp, ci],
        "fulcra_lut": [vp, vp, vp, vp, i64, i64, i64, vp, ci],
        "fulcra_hist": [vp, vp, i64, i64, i64, vp, ci],
        "fulcra_minmax": [vp, vp, i64, i64, i64, vp, ci],
        "fulcra_copy_rows": [vp, vp, vp, vp, i64, i64],
        "fulcra_grayscale": [vp, vp, vp, vp, i64, i64, ci],
        "fulcra_hue": [vp, vp, vp, vp, i64, i64, vp, ci],
    }
    return native.kernel(_SRC, sig, what="augment: compiled colour kernels", fallback="the torch path", openmp=True)


def available(images: torch.Tensor) -> bool:
    """Whether the kernels can run on ``images``: a contiguous CPU uint8 ``[B, C, H, W]`` batch and a
    loaded library."""
    return (
        images.dtype == torch.uint8
        and images.device.type == "cpu"
        and images.ndim == 4
        and images.is_contiguous()
        and lib() is not None
    )


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _index(idx: torch.Tensor | None, n: int) -> torch.Tensor:
    if idx is None:
        return torch.arange(n, dtype=torch.int64)
    return idx.to(device="cpu", dtype=torch.int64).contiguous()


def _check(src: torch.Tensor, dst: torch.Tensor | None, sidx: torch.Tensor, didx: torch.Tensor | None) -> None:
    # the kernels trust their pointers: an index out of range would read or write outside the batch
    for name, t, idx in (("src", src, sidx), ("dst", dst, didx)):
        if t is None:
            continue
        if t.dtype != torch.uint8 or t.device.type != "cpu" or not t.is_contiguous() or t.ndim != 4:
            raise TypeError(f"augment native kernels: {name} must be a contiguous CPU uint8 [B, C, H, W] tensor")
        if idx.numel() and not _in_range(idx, t.shape[0]):
            raise IndexError(f"augment native kernels: {name} index out of range [0, {t.shape[0]})")
    if dst is not None and dst.shape[1:] != src.shape[1:]:
        raise ValueError(f"augment native kernels: dst images {tuple(dst.shape[1:])} != src {tuple(src.shape[1:])}")


def _in_range(idx: torch.Tensor, n: int) -> bool:
    lo, hi = torch.aminmax(idx)
    return int(lo) >= 0 and int(hi) < n


def _threads() -> int:
    from fulcra import native

    return native.threads()  # 1 in a forked child: libgomp's pool does not survive fork()


def _run(rc: int, name: str) -> None:
    if rc != 0:
        raise MemoryError(f"augment native kernel {name} failed (status {rc})")


def _out(src: torch.Tensor, sidx: torch.Tensor, dst: torch.Tensor | None, didx: torch.Tensor | None):
    if dst is None:
        dst = torch.empty((sidx.numel(), *src.shape[1:]), dtype=torch.uint8)
        didx = torch.arange(sidx.numel(), dtype=torch.int64)
    else:
        didx = _index(didx, sidx.numel())
    if didx.numel() != sidx.numel():
        raise ValueError("augment native kernels: sidx and didx differ in length")
    _check(src, dst, sidx, didx)
    return dst, didx


def color(src, r32, alpha, sidx=None, dst=None, didx=None) -> torch.Tensor:
    """Color (``adjust_saturation``) of RGB images; ``r32``, ``alpha`` per image (float32 values)."""
    sidx = _index(sidx, src.shape[0])
    dst, didx = _out(src, sidx, dst, didx)
    n = sidx.numel()
    if src.shape[1] != 3:
        raise ValueError("augment native color: images must have 3 channels")
    r32 = r32.to(torch.float32).contiguous()
    alpha = alpha.to(torch.float32).contiguous()
    H, W = src.shape[-2:]
    rc = lib().fulcra_color(_p(src), _p(sidx), _p(dst), _p(didx), n, H * W, _p(r32), _p(alpha), _threads())
    _run(rc, "color")
    return dst


def hue(src, factor, sidx=None, dst=None, didx=None) -> torch.Tensor:
    """Hue (``adjust_hue``) of RGB images; ``factor`` per image (float32 values)."""
    sidx = _index(sidx, src.shape[0])
    dst, didx = _out(src, sidx, dst, didx)
    if src.shape[1] != 3:
        raise ValueError("augment native hue: images must have 3 channels")
    factor = factor.to(torch.float32).contiguous()
    H, W = src.shape[-2:]
    rc = lib().fulcra_hue(_p(src), _p(sidx), _p(dst), _p(didx), sidx.numel(), H * W, _p(factor), _threads())
    _run(rc, "hue")
    return dst


def grayscale(src, sidx=None, dst=None, didx=None) -> torch.Tensor:
    """Grayscale of RGB images: ``floor(grey)`` on the three channels."""
    sidx = _index(sidx, src.shape[0])
    dst, didx = _out(src, sidx, dst, didx)
    if src.shape[1] != 3:
        raise ValueError("augment native grayscale: images must have 3 channels")
    H, W = src.shape[-2:]
    _run(lib().fulcra_grayscale(_p(src), _p(sidx), _p(dst), _p(didx), sidx.numel(), H * W, _threads()), "grayscale")
    return dst


def sharpness(src, alpha, sidx=None, dst=None, didx=None) -> torch.Tensor:
    """Sharpness (``adjust_sharpness``) of images at least 3×3; ``alpha`` per image (float32)."""
    sidx = _index(sidx, src.shape[0])
    dst, didx = _out(src, sidx, dst, didx)
    C, H, W = src.shape[1:]
    alpha = alpha.to(torch.float32).contiguous()
    rc = lib().fulcra_sharpness(_p(src), _p(sidx), _p(dst), _p(didx), sidx.numel(), C, H, W, _p(alpha), _threads())
    _run(rc, "sharpness")
    return dst


def lut(src, table, sidx=None, dst=None, didx=None) -> torch.Tensor:
    """Maps each image and channel through ``table [n, C, 256]`` uint8 (``_kernels.apply_lut``)."""
    sidx = _index(sidx, src.shape[0])
    dst, didx = _out(src, sidx, dst, didx)
    n, C = sidx.numel(), src.shape[1]
    table = table.to(torch.uint8).expand(n, C, 256).contiguous()
    H, W = src.shape[-2:]
    rc = lib().fulcra_lut(_p(src), _p(sidx), _p(dst), _p(didx), n, C, H * W, _p(table), _threads())
    _run(rc, "lut")
    return dst


def hist(src, sidx=None) -> torch.Tensor:
    """``[n, C, 256]`` int64 histograms of each image's channels."""
    sidx = _index(sidx, src.shape[0])
    _check(src, None, sidx, None)
    n, C, H, W = sidx.numel(), *src.shape[1:]
    out = torch.empty((n, C, 256), dtype=torch.int64)
    _run(lib().fulcra_hist(_p(src), _p(sidx), n, C, H * W, _p(out), _threads()), "hist")
    return out


def minmax(src, sidx=None) -> torch.Tensor:
    """``[n, C, 2]`` uint8 minimum and maximum of each image's channels."""
    sidx = _index(sidx, src.shape[0])
    _check(src, None, sidx, None)
    n, C, H, W = sidx.numel(), *src.shape[1:]
    out = torch.empty((n, C, 2), dtype=torch.uint8)
    _run(lib().fulcra_minmax(_p(src), _p(sidx), n, C, H * W, _p(out), _threads()), "minmax")
    return out


def grey_sum(src, sidx=None) -> torch.Tensor:
    """``[n]`` int64 sums of ``floor(grey)`` (RGB) or of the values (one channel) of each image."""
    sidx = _index(sidx, src.shape[0])
    _check(src, None, sidx, None)
    n, C, H, W = sidx.numel(), *src.shape[1:]
    if C not in (1, 3):
        raise ValueError("augment native grey_sum: images must have 1 or 3 channels")
    out = torch.empty(n, dtype=torch.int64)
    _run(lib().fulcra_grey_sum(_p(src), _p(sidx), n, C, H * W, _p(out), _threads()), "grey_sum")
    return out


def copy_rows(src: torch.Tensor, dst: torch.Tensor, didx: torch.Tensor, sidx: torch.Tensor | None = None) -> None:
    """``dst[didx[i]] = src[sidx[i]]`` (``sidx`` default ``arange``), one memcpy per image in one call."""
    didx = _index(didx, src.shape[0])
    sidx = _index(sidx, didx.numel())
    if sidx.numel() != didx.numel():
        raise ValueError("augment native kernels: sidx and didx differ in length")
    _check(src, dst, sidx, didx)
    nbytes = src[0].numel() if src.shape[0] else 0
    _run(lib().fulcra_copy_rows(_p(src), _p(sidx), _p(dst), _p(didx), sidx.numel(), nbytes), "copy_rows")


def grey_floor(src: torch.Tensor) -> torch.Tensor:
    """``floor(grey)`` ``[B, 1, H, W]`` uint8 of contiguous RGB uint8 images (for the tests)."""
    _check(src, None, torch.zeros(0, dtype=torch.int64), None)
    B, C, H, W = src.shape
    if C != 3:
        raise ValueError("augment native grey_floor: images must have 3 channels")
    out = torch.empty((B, 1, H, W), dtype=torch.uint8)
    _run(lib().fulcra_grey_floor(_p(src), B, H * W, _p(out)), "grey_floor")
    return out
