"""Batched kernels shared by the augmentation ops: per-image parameters, uint8 fast paths.

Every kernel takes a batch ``[B, C, H, W]`` (uint8 in [0, 255] or float in [0, 1]) and per-image
parameters ``[B]``, and reproduces the arithmetic of ``torchvision.transforms.v2.functional`` so that
uint8 results are bit-identical for the photometric kernels. Two facts drive the implementation:

* torchvision's blends ``a.mul(r).add_(b, alpha=1 - r)`` run as a fused multiply-add in float32
  (``vec::fmadd`` on CPU, contracted ``fma`` on CUDA). With a per-image ``r`` that cannot be an
  ``alpha`` scalar, so :func:`fma32` emulates the single rounding in float64 (the float32 products
  are exact in float64).
* Most photometric ops map each channel value through a function that depends only on the image, so
  they are 256-entry lookup tables per (image, channel): :func:`apply_lut` gathers them in uint8
  with int32 indices, no float image is ever materialised.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "per_image",
    "fma32",
    "apply_lut",
    "identity_lut",
    "gray_uint8_exact",
    "inverse_affine",
    "source_index",
    "warp_index",
    "warp_nearest",
    "warp_nearest_torch",
    "warp_native_available",
    "crop_resize_bilinear",
    "crop_resize_bilinear_torch",
    "rgb_to_hsv",
    "hsv_to_rgb",
]


def per_image(value, batch: int, device, dtype=torch.float64) -> torch.Tensor:
    """A float or ``[B]`` tensor as a ``[B]`` tensor of ``dtype`` on ``device``."""
    v = torch.as_tensor(value, dtype=dtype, device=device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected a scalar or [{batch}] per-image values, got shape {tuple(v.shape)}")
    return v


def fma32(s: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``float32(s + other * alpha)`` with a single rounding (float32 fused multiply-add).

    ``s``, ``other`` float32 tensors (broadcastable), ``alpha`` float32-representable values. Returns
    float32.
    """
    return (s.to(torch.float64) + other.to(torch.float64) * alpha.to(torch.float64)).to(torch.float32)


def fma32_trunc_exact(s: torch.Tensor, other: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """:func:`fma32` in one ``addcmul`` pass over float64 copies, for chunk-sized batches.

    ``other`` holds integers (|other| < 2**16) and ``alpha`` float32 values, so ``other * alpha`` is
    exact in float64 and the float64 sum rounded to float32 is the fused float32 result (the same
    arithmetic as :func:`fma32`), in one pass that stays in cache when the images are processed a few
    at a time. Returns float32.
    """
    a64 = alpha.to(torch.float64)
    return torch.addcmul(s.to(torch.float64), other.to(torch.float64), a64).to(torch.float32)


def identity_lut(batch: int, channels: int, device) -> torch.Tensor:
    """``[B, C, 256]`` uint8 identity lookup table."""
    return torch.arange(256, dtype=torch.uint8, device=device).expand(batch, channels, 256).clone()


def apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Maps uint8 ``images [B, C, H, W]`` through per-(image, channel) tables ``lut [B, C, 256]`` uint8.

    One gather over the flattened tables with int32 indices (4 bytes per pixel rather than the
    8 of ``gather``'s int64), the image stays uint8 throughout.
    """
    B, C, H, W = images.shape
    if images.device.type == "cpu" and H * W * B <= (1 << 17):
        # a few images: a gather per (image, channel) row with int64 indices that stay in cache is
        # ~30% faster than the flat index_select below
        return torch.gather(lut.reshape(B, C, 256), 2, images.reshape(B, C, H * W).long()).view(B, C, H, W)
    offs = (torch.arange(B * C, device=images.device, dtype=torch.int32) * 256).view(B, C, 1, 1)
    idx = images.to(torch.int32).add_(offs)
    return lut.reshape(-1).index_select(0, idx.view(-1)).view(B, C, H, W)


def gray_uint8_exact(images: torch.Tensor) -> torch.Tensor:
    """torchvision's ``r*0.2989 + g*0.587 + b*0.114`` (a chain of float32 FMAs) for uint8 RGB.

    Returns float32 ``[B, 1, H, W]`` (not truncated).
    """
    r, g, b = images.unbind(dim=-3)
    # the very calls torchvision makes: constant alphas run the same fused kernel, bit for bit
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def inverse_affine(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    cx: torch.Tensor | float = 0.0,
    cy: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Batched ``torchvision``'s ``_get_inverse_affine_matrix`` (scale 1), in float64.

    All arguments ``[B]`` (degrees for angles and shears, pixels for translations and the centre,
    the centre relative to the image centre). Returns ``[B, 2, 3]`` float64 inverse matrices.
    """
    rot = torch.deg2rad(angle)
    sx = torch.deg2rad(shear_x)
    sy = torch.deg2rad(shear_y)
    cx = torch.as_tensor(cx, dtype=torch.float64, device=angle.device)
    cy = torch.as_tensor(cy, dtype=torch.float64, device=angle.device)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    cxt, cyt = cx + tx, cy + ty
    m2 = cx - m0 * cxt - m1 * cyt
    m5 = cy - m3 * cxt - m4 * cyt
    return torch.stack([torch.stack([m0, m1, m2], -1), torch.stack([m3, m4, m5], -1)], -2)


_CACHE: dict = {}


def _cached(key, make):
    """Small constant tensors (pixel-centre coordinates) built once per size and device."""
    t = _CACHE.get(key)
    if t is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        t = _CACHE[key] = make()
    return t


def _centres(n: int, dev) -> torch.Tensor:
    """Centred pixel coordinates ``j + 0.5 - n / 2`` ``[n]`` float64 (torchvision's base grid)."""
    return _cached(
        ("centres", n, str(dev)), lambda: torch.arange(n, dtype=torch.float64, device=dev).add_(0.5 - 0.5 * n)
    )


def source_index(theta: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Nearest source pixel of every output pixel of an affine warp, decided with fixed rounding.

    torchvision computes the sampling grid with one float32 GEMM ``[HW, 3] × [3, 2]`` and lets
    ``grid_sample`` round it to the nearest pixel. How a GEMM rounds depends on the BLAS code path
    (MKL's AVX2/AVX-512/SSE kernels, the batch size that selects one), so the nearest pixel flips
    where the exact coordinate is within a few float32 ulps of a half-integer, and the same image
    warped differently alone and in a batch, or on another CPU. Here every step is elementwise with
    a fixed rounding, on CPU and CUDA alike:

    1. the rescaled inverse matrix in float32, as torchvision forms it (``theta / (size / 2)``);
    2. the source pixel coordinate ``(x·r0 + y·r1 + r2 + 1) · size / 2 − 0.5`` split into a column
       part and a row part, each computed in float64 (``[B, W]`` and ``[B, H]`` values) and rounded
       to float32; their float32 sum (one rounding) is the coordinate, within 2 ulps of exact;
    3. round half to even (``grid_sample``'s nearest rule), then clamp to the one-pixel zero border
       of a padded image, so that out-of-image sources read zeros.

    A pixel can differ from torchvision's only where the exact coordinate lies within a few float32
    ulps of a half-integer (a tie, e.g. a shear of exactly 1), where torchvision's own answer
    depends on its GEMM's code path.

    Args:
        theta: ``[B, 2, 3]`` inverse matrices in centred pixel coordinates (:func:`inverse_affine`).
        H, W: image size.

    Returns:
        ``[B, H * W]`` int64: for every output pixel, the row-major index of its source in the image
        zero-padded by one pixel on each side (``(H + 2) × (W + 2)``, see :func:`warp_index`).
    """
    B = theta.shape[0]
    dev = theta.device
    scale = torch.tensor([0.5 * W, 0.5 * H], dtype=torch.float32, device=dev).view(1, 2, 1)
    r = theta.to(torch.float32).div(scale).to(torch.float64)  # [B, 2, 3]: torchvision's rescaled theta, transposed
    xs = _centres(W, dev).view(1, W)
    ys = _centres(H, dev).view(1, H)
    pix = []
    for c, size in ((0, W), (1, H)):
        half = 0.5 * size
        col = (xs * r[:, c, 0:1]).mul_(half).to(torch.float32).view(B, 1, W)
        row = (ys * r[:, c, 1:2]).add_(r[:, c, 2:3] + 1.0).mul_(half).sub_(0.5).to(torch.float32).view(B, H, 1)
        # padded coordinates: -1 and size are the zero border
        pix.append(torch.add(col, row).round_().clamp_(-1.0, float(size)).add_(1.0))
    px, py = pix
    Wp = W + 2
    if (H + 2) * Wp < (1 << 24):  # exact in float32
        lin = py.mul_(Wp).add_(px)
    else:
        lin = py.to(torch.int64).mul_(Wp).add_(px.to(torch.int64))
    return lin.to(torch.int64).view(B, H * W)


def warp_index(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Moves pixels by ``index`` ``[B, H * W]`` from :func:`source_index` (indices into the image
    zero-padded by one pixel): one gather per image, without any float conversion of the ``C``
    channels. ``images`` ``[B, C, H, W]``, any dtype; returns the same shape and dtype."""
    B, C, H, W = images.shape
    padded = F.pad(images, (1, 1, 1, 1)).view(B, C, (H + 2) * (W + 2))
    return padded.gather(2, index.view(B, 1, H * W).expand(B, C, H * W)).view(B, C, H, W)


def warp_nearest(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-image affine warp, nearest neighbour, zero fill: torchvision's ``affine``/``rotate``.

    Args:
        images: ``[B, C, H, W]`` uint8 or float.
        theta: ``[B, 2, 3]`` inverse matrices in centred pixel coordinates (:func:`inverse_affine`).

    Returns ``[B, C, H, W]`` of the input dtype. Each image's result depends only on that image and
    its matrix (not on the batch, the thread count, the BLAS library or the device): see
    :func:`source_index` for how the nearest pixel is decided.

    Contiguous CPU images go through the compiled kernel ``_warp.c`` (:mod:`fulcra.native`), which
    decides every source pixel with the very arithmetic of :func:`source_index` and copies it in
    one pass per output row, bit-identical to :func:`warp_nearest_torch` (the reference, and the path
    on CUDA, without a C compiler or with ``FULCRA_NATIVE=0``).
    """
    if images.device.type == "cpu":
        lib = _warp_lib()
        if lib is not None and _native_warp_ok(images, theta):
            return _warp_native(lib, images, theta)
    return warp_nearest_torch(images, theta)


def warp_nearest_torch(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """:func:`warp_nearest` in torch operations (:func:`source_index` + :func:`warp_index`): the
    reference of the compiled kernel, and the path on every device."""
    return warp_index(images, source_index(theta, images.shape[-2], images.shape[-1]))


_WARP_C = Path(__file__).with_name("_warp.c")


def _warp_lib():
    """The compiled warp kernel, or None (said once per reason) when unavailable (cached by
    :func:`fulcra.native.kernel` per value of ``FULCRA_NATIVE``, so switching it takes effect at once)."""
    from fulcra import native

    vp, i64, ci, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    sig = {
        "fulcra_warp_nearest": [vp, vp, vp, i64, i64, i64, i64, ci, ci],
        "fulcra_warp_index": [vp, i64, i64, i64, vp],
        "fulcra_crop_resize": [vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, ci, ci],
        "fulcra_crop_axis": [i64, d, d, vp, vp, vp],
    }
    return native.kernel(_WARP_C, sig, what="augment: compiled warp kernel", fallback="the torch path", openmp=True)


def warp_native_available() -> bool:
    """Whether :func:`warp_nearest` uses the compiled kernel for contiguous CPU images."""
    return _warp_lib() is not None


def _native_warp_ok(images: torch.Tensor, theta: torch.Tensor) -> bool:
    if images.ndim != 4:
        return False
    B, _, H, W = images.shape
    return (
        images.is_contiguous()
        and images.numel() > 0
        and images.element_size() in (1, 2, 4, 8)
        and not (images.requires_grad and torch.is_grad_enabled())
        and theta.shape == (B, 2, 3)
        and theta.device.type == "cpu"
        and H * W < (1 << 31)
    )


#: output values per call below which the kernels run on one thread: one 224×224 RGB image (the
#: composite's chunk on CPU) takes ~0.1 ms, where waking a thread team costs more than it saves
_WARP_PARALLEL_MIN = 1 << 18


def _warp_native(lib, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    B, C, H, W = images.shape
    th = theta
    if th.dtype != torch.float64 or th.requires_grad or not th.is_contiguous():
        th = th.detach().to(torch.float64).contiguous()  # exact: source_index rounds it to float32 first
    out = torch.empty((B, C, H, W), dtype=images.dtype)
    from fulcra import native

    threads = native.threads() if images.numel() >= _WARP_PARALLEL_MIN else 1  # 1 in forked children
    rc = lib.fulcra_warp_nearest(
        images.data_ptr(), out.data_ptr(), th.data_ptr(), B, C, H, W, images.element_size(), threads
    )
    if rc != 0:
        # -3: a non-finite matrix (the reference fills with zeros for infinities, fails on NaNs);
        # -1: out of memory in the kernel. The reference decides (and says what is wrong).
        return warp_nearest_torch(images, theta)
    return out


def warp_source_native(theta: torch.Tensor, H: int, W: int) -> torch.Tensor | None:
    """The compiled kernel's source pixel of every output pixel, ``[B, H * W]`` int64 indices into
    the zero-padded image like :func:`source_index`'s (None when the kernel is unavailable). For
    tests: comparing it with :func:`source_index` checks the coordinate arithmetic itself."""
    lib = _warp_lib()
    if lib is None:
        return None
    th = theta.detach().to(torch.float64).contiguous()
    idx = torch.empty(th.shape[0], H, W, dtype=torch.int32)
    if lib.fulcra_warp_index(th.data_ptr(), th.shape[0], H, W, idx.data_ptr()) != 0:
        raise MemoryError("augment: warp kernel out of memory")
    idx = idx.to(torch.int64)
    fill = idx < 0
    y, x = torch.div(idx, W, rounding_mode="floor"), idx.remainder(W)
    lin = (y + 1) * (W + 2) + (x + 1)
    # sources outside the image: the reference clamps them onto the zero border; any border index
    # reads the same zero, so report the reference's own choice there
    return torch.where(fill, -1, lin).view(th.shape[0], H * W)


def _crop_axis(n: int, start: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling along one axis of a per-image crop resized back to ``n`` pixels: half-pixel
    centres, source coordinates clamped to the crop. ``start``, ``length`` ``[B]``; returns the two
    source indices ``[B, n]`` int64 and the weight of the second ``[B, n]`` float32."""
    B = start.shape[0]
    start, length = start.to(torch.float32).view(B, 1), length.to(torch.float32).view(B, 1)
    j = torch.arange(n, device=start.device, dtype=torch.float32).view(1, n)
    s = ((j + 0.5) * (length / n) - 0.5).clamp(min=0)
    s = torch.minimum(s, length - 1) + start  # [B, n], within [start, start + length - 1]
    i0 = s.floor()
    w1 = s - i0
    i0 = i0.to(torch.int64)
    i1 = torch.minimum(i0 + 1, (start + length - 1).to(torch.int64))
    return i0, i1, w1


def crop_resize_bilinear(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """Per-image crop ``[top:top+height, left:left+width]`` resized bilinearly back to ``H, W``
    (see :func:`crop_resize_bilinear_torch`, the reference).

    Contiguous uint8 and float32 CPU images go through the compiled kernel ``_warp.c``, which
    repeats the reference's float32 operations in the same order (one output row at a time, no
    full-size float temporaries), bit-identical to it; other dtypes, CUDA, no C compiler or
    ``FULCRA_NATIVE=0`` run the reference.
    """
    if images.device.type == "cpu" and images.dtype in (torch.uint8, torch.float32):
        lib = _warp_lib()
        if lib is not None and _native_crop_ok(images):
            B, C, H, W = images.shape
            box = [_f64(t, B) for t in (top, left, height, width)]
            if all(t is not None for t in box):
                out = torch.empty((B, C, H, W), dtype=images.dtype)
                from fulcra import native

                threads = native.threads() if images.numel() >= _WARP_PARALLEL_MIN else 1  # 1 in forked children
                rc = lib.fulcra_crop_resize(
                    images.data_ptr(),
                    out.data_ptr(),
                    *(t.data_ptr() for t in box),
                    B,
                    C,
                    H,
                    W,
                    int(images.is_floating_point()),
                    threads,
                )
                if rc == 0:
                    return out
                # a box outside its image (or out of memory): the reference, which says what is wrong
    return crop_resize_bilinear_torch(images, top, left, height, width)


def _f64(t, n: int) -> torch.Tensor | None:
    """A per-image box coordinate as a contiguous ``[n]`` float64 CPU tensor (None if it is not one)."""
    if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (n,) and t.is_contiguous():
        return t if t.device.type == "cpu" else None
    t = torch.as_tensor(t)
    if t.device.type != "cpu" or t.numel() != n or t.is_complex():
        return None
    return t.detach().reshape(n).to(torch.float64).contiguous()


def _native_crop_ok(images: torch.Tensor) -> bool:
    return (
        images.ndim == 4
        and images.numel() > 0
        and images.is_contiguous()
        and not (images.requires_grad and torch.is_grad_enabled())
        and images.shape[-2] * images.shape[-1] < (1 << 31)
    )


def crop_axis_native(n: int, start: float, length: float):
    """The compiled kernel's axis tables ``(i0, i1, w1)`` for one crop span (as :func:`_crop_axis`
    gives them for one image), or None when the kernel is unavailable or the span is outside
    ``[0, n)``. For tests."""
    lib = _warp_lib()
    if lib is None:
        return None
    i0, i1 = torch.empty(n, dtype=torch.int32), torch.empty(n, dtype=torch.int32)
    w1 = torch.empty(n, dtype=torch.float32)
    if lib.fulcra_crop_axis(n, float(start), float(length), i0.data_ptr(), i1.data_ptr(), w1.data_ptr()) != 0:
        return None
    return i0.to(torch.int64), i1.to(torch.int64), w1


def crop_resize_bilinear_torch(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """Per-image crop ``[top:top+height, left:left+width]`` resized bilinearly back to ``H, W``.

    Matches ``resized_crop(..., antialias=True)`` for crops no larger than the image (upsampling,
    where antialiasing does nothing) to within one level for uint8 (torchvision's uint8 resize
    uses fixed-point arithmetic): half-pixel centres, source coordinates clamped to the crop.
    Separable, with elementwise float32 arithmetic in a fixed order (rows, then columns), so an
    image's result depends on nothing but that image and its box (``grid_sample``'s bilinear kernel
    rounds differently in its scalar and vector builds).

    Args:
        images: ``[B, C, H, W]`` uint8 or float.
        top, left, height, width: ``[B]`` integer-valued tensors (pixels).
    """
    B, C, H, W = images.shape
    y0, y1, wy = _crop_axis(H, top, height)
    x0, x1, wx = _crop_axis(W, left, width)
    fp = images.is_floating_point()

    def rows(i):
        r = images.gather(2, i.view(B, 1, H, 1).expand(B, C, H, W))
        return r if fp else r.to(torch.float32)

    wy = wy.view(B, 1, H, 1)
    v = rows(y0).mul_(1 - wy).add_(rows(y1).mul_(wy))  # [B, C, H, W]: rows interpolated

    def cols(i):
        return v.gather(3, i.view(B, 1, 1, W).expand(B, C, H, W))

    wx = wx.view(B, 1, 1, W)
    out = cols(x0).mul_(1 - wx).add_(cols(x1).mul_(wx))
    return out if fp else out.round_().clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_rgb_to_hsv`` on float ``[..., 3, H, W]`` in [0, 1]."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    channels_range_divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / channels_range_divisor).unbind(dim=-3)
    mask_maxc_neq_r = maxc != r
    mask_maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(mask_maxc_eq_g & mask_maxc_neq_r)
    hr = bc.sub_(gc).mul_(~mask_maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(mask_maxc_neq_r.logical_and_(mask_maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


_HSV_SELECT = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_hsv_to_rgb`` on float ``[B, 3, H, W]``."""
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _HSV_SELECT.to(img.device)[:, i].moveaxis(0, -3)
    return vpqt.gather(-3, select)


def atan_degrees(v: torch.Tensor) -> torch.Tensor:
    """Shear factor -> shear angle in degrees (torchvision's AutoAugment convention)."""
    return torch.rad2deg(torch.atan(v))
