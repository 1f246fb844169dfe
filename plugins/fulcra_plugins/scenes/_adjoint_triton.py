"""A fused uplift kernel (``Wᵀ F`` and ``Wᵀ 1``) over gsplat's tile intersections, in Triton.

LUDVIG's uplift (thesis Eq. 5.3) needs, per Gaussian ``i``, ``Σ_p w_i(p) F(p)`` and
``Σ_p w_i(p)``, where ``w_i(p) = α_i(p) T_i(p)`` is the alpha-compositing weight of ``i`` at pixel
``p``. Autograd through ``gsplat.rasterization`` computes these as the colour gradient, but its
backward kernel also computes every geometry gradient. This kernel computes only the weights:

* one program per (image, tile, channel block); the tile's ``TILE x TILE`` pixels are a block of
  the program (the feature map of the tile ``[P, C]`` is loaded once);
* it walks the tile's depth-sorted Gaussians (``flatten_ids[isect_offsets[tile]:next]``) front
  to back, ``BLOCK_K`` at a time, exactly as gsplat 1.5's ``rasterize_to_pixels_3dgs_fwd``
  composites: pixel centres at ``+0.5``, ``σ = ½(a dx² + c dy²) + b dx dy`` with
  ``(a, b, c)`` the conic, ``α = min(0.999, o·exp(-σ))``, Gaussians with ``σ < 0`` or
  ``α < 1/255`` skipped (they leave the transmittance alone), and the exclusive early stop: the
  first Gaussian whose ``T·(1-α)`` would fall to ``1e-4`` or below is not counted, nor any
  after it; pixels outside the image never count;
* within a block, the transmittance before each Gaussian is an (inclusive) cumulative product
  along the block divided by the Gaussian's own ``1-α`` (``≥ 0.001``, so the quotient is right
  to a few ulps), carried from block to block; the loop leaves a tile once all its pixels are
  saturated or its list is exhausted;
* the weights ``[P, BLOCK_K]`` (pixels by Gaussians, so each pixel's scan runs along its row) are
  reduced over the tile's pixels inside the program: ``wᵀ @ F`` (``tl.dot`` in IEEE float32 by
  default, never plain TF32) and ``Σ_p w``; then one atomic add per Gaussian per tile per
  channel (Gaussians whose weight in the tile is zero add nothing).

Any ``D`` runs without recompiling: ``D`` is a runtime argument and channels are covered by
blocks of 16, 32 or 64 (the only compiled variants), one program per block, so memory per
program is bounded by one channel block whatever ``D``. The outputs are float32 sums over tiles
made with atomic adds: on a GPU their order (and so the last bits of each sum) is not fixed, as
in gsplat's own backward; under the Triton interpreter (CPU) programs run in order and the result
is deterministic.

Inputs are gsplat's own projection and intersection outputs (``fully_fused_projection``,
``isect_tiles``, ``isect_offset_encode``), packed or not; see :func:`rasterize_adjoint`.
The CPU tests run this very kernel under ``TRITON_INTERPRET=1`` against a per-pixel loop and the
``torch`` backend's fused adjoint (``tests/plugins/scenes/test_gsplat_adjoint.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "rasterize_adjoint",
    "adjoint_from_projection",
    "channel_block",
    "interpreted",
    "compile_ahead",
    "ALPHA_MIN",
    "ALPHA_MAX",
    "T_MIN",
]

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
# what the kernel reads: compiled Triton sees module globals only as constexprs
_ALPHA_MIN = tl.constexpr(ALPHA_MIN)
_ALPHA_MAX = tl.constexpr(ALPHA_MAX)
_T_MIN = tl.constexpr(T_MIN)
BLOCK_K = 32  # Gaussians per step along a tile's depth list (tl.dot needs >= 16)
MAX_CHANNEL_BLOCK = 64


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1`` when triton was imported)."""
    from triton.runtime.interpreter import InterpretedFunction  # not imported by `import triton`

    return isinstance(_adjoint_kernel, InterpretedFunction)


def channel_block(d: int, max_block: int = MAX_CHANNEL_BLOCK) -> int:
    """The channel block for ``d`` channels: a power of two in [16, ``max_block``] (tl.dot's minimum
    is 16), so at most three compiled variants cover every ``D``."""
    if max_block not in (16, 32, 64):
        raise ValueError(f"channel block must be 16, 32 or 64, got {max_block}")
    return int(min(max_block, max(16, triton.next_power_of_2(max(1, int(d))))))


# sizes change with every view: never specialise on them (Triton would otherwise compile variants
# for values equal to 1 or divisible by 16), so one compiled kernel per channel block serves all
@triton.jit(do_not_specialize=["n_isects", "n_tiles_total", "tiles_per_image", "tile_width", "height", "width", "D"])
def _adjoint_kernel(
    means2d_ptr,  # [R, 2] float32 (R = I * N unpacked, nnz packed)
    conics_ptr,  # [R, 3] float32
    opac_ptr,  # [R] float32
    offsets_ptr,  # [I * TH * TW] int32: start of each tile in flatten_ids
    flat_ptr,  # [n_isects] int32: row of means2d/conics/opacities
    img_ptr,  # [I, H, W, D] float32, contiguous
    out_ptr,  # [R, D] float32, accumulated into
    wsum_ptr,  # [R] float32, accumulated into
    n_isects,
    n_tiles_total,
    tiles_per_image,
    tile_width,
    height,
    width,
    D,
    TILE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tid = tl.program_id(0)  # global tile index over I * TH * TW (gsplat's isect_offsets order)
    cid = tl.program_id(1)  # channel block
    image = tid // tiles_per_image
    tile = tid % tiles_per_image
    ty = tile // tile_width
    tx = tile % tile_width

    pix = tl.arange(0, TILE * TILE)
    py = ty * TILE + pix // TILE
    px = tx * TILE + pix % TILE
    inside = (py < height) & (px < width)
    fx = px.to(tl.float32) + 0.5
    fy = py.to(tl.float32) + 0.5

    chans = cid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = chans < D
    row = (image * height + py) * width + px
    feats = tl.load(
        img_ptr + row.to(tl.int64)[:, None] * D + chans[None, :], mask=inside[:, None] & cmask[None, :], other=0.0
    )  # [P, C]

    start = tl.load(offsets_ptr + tid)
    end = tl.load(offsets_ptr + tid + 1, mask=tid + 1 < n_tiles_total, other=n_isects)
    # transmittance of each pixel; 0 outside the image, so those pixels never count
    T = tl.where(inside, 1.0, 0.0)
    first_block = cid == 0
    k0 = start
    while (k0 < end) & (tl.max(T, axis=0) > _T_MIN):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < end
        g = tl.load(flat_ptr + ks, mask=kmask, other=0)
        g64 = g.to(tl.int64)
        mx = tl.load(means2d_ptr + 2 * g64, mask=kmask, other=0.0)
        my = tl.load(means2d_ptr + 2 * g64 + 1, mask=kmask, other=0.0)
        ca = tl.load(conics_ptr + 3 * g64, mask=kmask, other=0.0)
        cb = tl.load(conics_ptr + 3 * g64 + 1, mask=kmask, other=0.0)
        cc = tl.load(conics_ptr + 3 * g64 + 2, mask=kmask, other=0.0)
        op = tl.load(opac_ptr + g64, mask=kmask, other=0.0)

        # pixels along axis 0 and Gaussians along axis 1: the scan runs along each pixel's row
        dx = mx[None, :] - fx[:, None]  # [P, K] (gsplat: delta = mean - pixel)
        dy = my[None, :] - fy[:, None]
        sigma = 0.5 * (ca[None, :] * dx * dx + cc[None, :] * dy * dy) + cb[None, :] * dx * dy
        alpha = tl.minimum(op[None, :] * tl.exp(-sigma), _ALPHA_MAX)
        alpha = tl.where((sigma >= 0.0) & (alpha >= _ALPHA_MIN) & kmask[None, :], alpha, 0.0)
        one_minus = 1.0 - alpha
        next_T = T[:, None] * tl.cumprod(one_minus, axis=1)  # T after each Gaussian, [P, K]
        counted = next_T > _T_MIN  # exclusive stop; monotone along K, so nothing after it counts
        w = tl.where(counted, alpha * (next_T / one_minus), 0.0)  # alpha * T before the Gaussian
        # the last column is the transmittance after the block (<= T_MIN once the pixel stopped)
        T = tl.min(next_T, axis=1)

        wsum = tl.sum(w, axis=0)  # [K]
        hit = kmask & (wsum > 0.0)
        acc = tl.dot(tl.trans(w), feats, input_precision=DOT_PRECISION)  # [K, C]
        tl.atomic_add(
            out_ptr + g64[:, None] * D + chans[None, :], acc, mask=hit[:, None] & cmask[None, :], sem="relaxed"
        )
        tl.atomic_add(wsum_ptr + g64, wsum, mask=hit & first_block, sem="relaxed")
        k0 += BLOCK_K


def compile_ahead(
    capability: int = 90,
    block_k: int = BLOCK_K,
    block_c: int = MAX_CHANNEL_BLOCK,
    dot_precision: str = "ieee",
    num_warps: int = 8,
    tile: int = 16,
):
    """Compile the kernel for a CUDA compute capability without a GPU (Triton's compiler and the
    wheel's ``ptxas``): the compiled kernel, whose ``asm`` holds ``ttir``/``ttgir``/``ptx``/``cubin``.

    What only the compiler checks (constexpr globals, loop-carried types, dot shapes) fails here,
    which the interpreter never runs; ``benchmarks/bench_adjoint_compile.py`` reports registers and
    spills from it. Needs Triton >= 3.3 (its ``ASTSource(signature, constexprs)``); written and
    tested with 3.8.
    """
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {"TILE": tile, "BLOCK_K": block_k, "BLOCK_C": block_c, "DOT_PRECISION": dot_precision}
    fn = getattr(_adjoint_kernel, "fn", _adjoint_kernel)
    sig = {}
    for name in inspect.signature(fn).parameters:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in ("offsets_ptr", "flat_ptr") else "*fp32"
        else:
            sig[name] = "i32"
    src = ASTSource(fn=_adjoint_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


def rasterize_adjoint(
    means2d: torch.Tensor,  # [I, N, 2] or [nnz, 2]
    conics: torch.Tensor,  # [I, N, 3] or [nnz, 3]
    opacities: torch.Tensor,  # [I, N] or [nnz]
    images: torch.Tensor,  # [I, H, W, D]
    tile_size: int,
    isect_offsets: torch.Tensor,  # [I, TH, TW] int32
    flatten_ids: torch.Tensor,  # [n_isects] int32
    max_channel_block: int = MAX_CHANNEL_BLOCK,
    block_k: int = BLOCK_K,
    num_warps: int = 0,
    dot_precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The transpose of gsplat's ``rasterize_to_pixels`` for the colours: ``Wᵀ F`` and ``Wᵀ 1``.

    The arguments are what ``gsplat.rasterization`` passes to ``rasterize_to_pixels``, with
    ``images`` in place of the colours (for the antialiased mode, ``opacities`` already multiplied
    by the compensations).

    Args:
        means2d, conics, opacities: gsplat's projected Gaussians, unpacked (``[I, N, ...]``) or
            packed (``[nnz, ...]``); rows that no intersection names are never read.
        images: per-pixel features ``[I, H, W, D]``, float32, any ``D >= 1``.
        tile_size: gsplat's tile side (16 by default); ``tile_size**2`` must be a power of two.
        isect_offsets: ``[I, TH, TW]`` int32 from ``isect_offset_encode``.
        flatten_ids: ``[n_isects]`` int32 from ``isect_tiles`` (row indices into the flattened
            ``[I * N]`` or ``[nnz]`` rows).
        max_channel_block: 16, 32 or 64: the most channels one program holds.
        block_k: Gaussians per step along a tile's list (16, 32 or 64; changes only float rounding).
        num_warps: warps per program (0: 8 for 16-px tiles, 4 for smaller ones).
        dot_precision: ``"ieee"`` (float32 FMAs, the default) or ``"tf32x3"`` (tensor cores, three
            TF32 passes: float32-like accuracy; for benchmarking on a GPU).

    Returns:
        ``(numerator [R, D], weights [R])`` float32 with ``R = I * N`` (unpacked) or ``nnz``
        (packed): per row, ``Σ_p w(p) F(p)`` and ``Σ_p w(p)`` over the pixels of its image.

    Raises:
        ValueError: on inconsistent shapes or devices (naming the argument).
    """
    if images.ndim != 4:
        raise ValueError(f"rasterize_adjoint: images must be [I, H, W, D], got {list(images.shape)}")
    n_img, height, width, d = images.shape
    rows = means2d.reshape(-1, 2).shape[0]
    th, tw = isect_offsets.shape[-2:]
    if isect_offsets.numel() != n_img * th * tw:
        raise ValueError(f"rasterize_adjoint: isect_offsets {list(isect_offsets.shape)} is not [I={n_img}, TH, TW]")
    if th != -(-height // tile_size) or tw != -(-width // tile_size):
        raise ValueError(
            f"rasterize_adjoint: isect_offsets tiles {th}x{tw} do not cover {height}x{width} with tile {tile_size}"
        )
    P = tile_size * tile_size
    if P & (P - 1) or P < 16:
        raise ValueError(f"rasterize_adjoint: tile_size**2 must be a power of two >= 16, got tile_size {tile_size}")
    for name, t, last in (("conics", conics, 3), ("opacities", opacities, 1)):
        if t.numel() != rows * last:
            raise ValueError(f"rasterize_adjoint: {name} {list(t.shape)} does not match means2d {list(means2d.shape)}")
    dev = images.device
    for name, t in (
        ("means2d", means2d),
        ("conics", conics),
        ("opacities", opacities),
        ("isect_offsets", isect_offsets),
        ("flatten_ids", flatten_ids),
    ):
        if t.device != dev:
            raise ValueError(f"rasterize_adjoint: {name} is on {t.device}, images on {dev}")
    out = torch.zeros(rows, d, device=dev, dtype=torch.float32)
    wsum = torch.zeros(rows, device=dev, dtype=torch.float32)
    n_tiles = n_img * th * tw
    if flatten_ids.numel() == 0 or n_tiles == 0 or d == 0:
        return out, wsum
    if dot_precision not in ("ieee", "tf32x3"):
        raise ValueError(f"rasterize_adjoint: dot_precision must be 'ieee' or 'tf32x3', got {dot_precision!r}")
    if block_k not in (16, 32, 64):
        raise ValueError(f"rasterize_adjoint: block_k must be 16, 32 or 64, got {block_k}")
    block_c = channel_block(d, max_channel_block)
    grid = (n_tiles, triton.cdiv(d, block_c))
    _adjoint_kernel[grid](
        means2d.contiguous().float(),
        conics.contiguous().float(),
        opacities.contiguous().float(),
        isect_offsets.contiguous().to(torch.int32),
        flatten_ids.contiguous().to(torch.int32),
        images.contiguous().float(),
        out,
        wsum,
        flatten_ids.numel(),
        n_tiles,
        th * tw,
        tw,
        height,
        width,
        d,
        TILE=tile_size,
        BLOCK_K=block_k,
        BLOCK_C=block_c,
        DOT_PRECISION=dot_precision,
        num_warps=num_warps or (8 if P >= 256 else 4),
    )
    return out, wsum


def adjoint_from_projection(
    n: int,
    means2d: torch.Tensor,  # [1, N, 2] or [nnz, 2]
    conics: torch.Tensor,  # [1, N, 3] or [nnz, 3]
    opacities: torch.Tensor,  # [1, N] or [nnz]
    images: torch.Tensor,  # [H, W, D]
    tile_size: int,
    isect_offsets: torch.Tensor,  # [1, TH, TW]
    flatten_ids: torch.Tensor,  # [n_isects]
    gaussian_ids: torch.Tensor | None = None,  # [nnz] (packed only)
    max_channel_block: int = MAX_CHANNEL_BLOCK,
    **tuning,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's ``Wᵀ F`` ``[N, D]`` and ``Wᵀ 1`` ``[N]`` from gsplat's projection of one camera.

    Unpacked rows are the Gaussians themselves; packed rows are mapped back through
    ``gaussian_ids`` (unique within one camera, so the scatter is a plain assignment).
    ``tuning``: ``block_k``, ``num_warps``, ``dot_precision`` of :func:`rasterize_adjoint`.
    """
    num, wsum = rasterize_adjoint(
        means2d, conics, opacities, images[None], tile_size, isect_offsets, flatten_ids, max_channel_block, **tuning
    )
    if gaussian_ids is None:
        if num.shape[0] != n:
            raise ValueError(f"adjoint_from_projection: unpacked rows {num.shape[0]} != N={n} (one camera)")
        return num, wsum
    ids = gaussian_ids.long()
    full = num.new_zeros(n, num.shape[1])
    full[ids] = num
    weights = wsum.new_zeros(n)
    weights[ids] = wsum
    return full, weights
