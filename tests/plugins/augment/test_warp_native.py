"""The compiled nearest-pixel warp (_warp.c through fulcra.native) against the torch reference
(``source_index`` + ``warp_index``): bit-identical outputs and source pixels for every warp op,
dtype, size, channel count, batch size and thread count; the FULCRA_NATIVE=0 switch."""

from __future__ import annotations

import math

import pytest
import torch

from fulcra import native
from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment, build_ops
from fulcra_plugins.augment import _kernels as K

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler: only the torch path exists")
pytestmark = needs_cc

WARP_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "random_crop")
SIZES = [(1, 1), (1, 7), (5, 1), (2, 3), (17, 40), (32, 32), (61, 61), (33, 96)]


@pytest.fixture(autouse=True)
def kernel(monkeypatch):
    """The kernel tests exercise the kernel even in a run with FULCRA_NATIVE=0 set for the rest."""
    monkeypatch.delenv("FULCRA_NATIVE", raising=False)
    assert K.warp_native_available(), native.reason(K._WARP_C)


def _images(b, c, h, w, seed, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)
    return x.to(dtype) / 255 if dtype.is_floating_point else x.to(dtype)


def _random_matrices(b, h, w, seed):
    """Rotations, shears, translations and centres of every size and sign, plus exact ties."""
    g = torch.Generator().manual_seed(seed)
    u = lambda s: (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * s  # noqa: E731
    th = K.inverse_affine(u(180), u(1.5 * w), u(1.5 * h), u(50), u(50), u(w), u(h))
    # exact ties: shear factor 1 (45°), rotations by multiples of 90°, half-pixel translations
    ties = K.inverse_affine(
        torch.tensor([0.0, 90.0, -90.0, 180.0, 0.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 0.0, 0.5, 0.0, -2.5, 0.5], dtype=torch.float64),
        torch.tensor([0.0, 0.5, 0.0, 1.5, 0.0, -0.5], dtype=torch.float64),
        torch.tensor([45.0, 0.0, 0.0, 0.0, -45.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 45.0], dtype=torch.float64),
        torch.tensor([-w / 2, 0.0, 0.0, 0.0, -w / 2, 0.0], dtype=torch.float64),
        torch.tensor([-h / 2, 0.0, 0.0, 0.0, -h / 2, 0.0], dtype=torch.float64),
    )
    return torch.cat([th, ties])


@pytest.mark.parametrize("h,w", SIZES)
def test_source_pixels_match_the_reference(h, w):
    th = _random_matrices(40, h, w, h * 100 + w)
    ref = K.source_index(th, h, w)
    got = K.warp_source_native(th, h, w)
    Wp = w + 2
    border = (ref // Wp == 0) | (ref // Wp == h + 1) | (ref % Wp == 0) | (ref % Wp == w + 1)
    assert torch.equal(got < 0, border)  # the same pixels are filled
    assert torch.equal(got[~border], ref[~border])  # and the others read the same source


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.int16, torch.bool])
@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("h,w", SIZES)
def test_warp_nearest_is_the_reference(h, w, c, dtype):
    x = _images(9, c, h, w, h + w + c, torch.uint8)
    x = (x > 127) if dtype == torch.bool else x.to(dtype)
    th = _random_matrices(9, h, w, 7 * h + w)
    # the tie matrices come after the random ones: warp them too
    xs = torch.cat([x, x[: th.shape[0] - 9]])
    ref = K.warp_nearest_torch(xs, th)
    got = K.warp_nearest(xs, th)
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.is_contiguous()
    assert torch.equal(got, ref)


@pytest.mark.parametrize("name", WARP_OPS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_warp_op_matches_the_torch_path(name, dtype, monkeypatch):
    op = BUILTIN_OPS[name]()
    limit = {"translate_x": 40.0, "translate_y": 40.0, "rotate": 180.0, "random_crop": 12.0}.get(name, 1.0)
    for h, w in ((32, 32), (61, 61), (23, 50)):
        for b in (1, 7):
            x = _images(b, 3, h, w, b * h, dtype)
            values = [0.0, limit, -limit, 0.3 * limit, -0.71 * limit] if name != "random_crop" else [0.0, 3.0, limit]
            g = torch.Generator().manual_seed(h + b)
            per_image = (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * limit
            if name == "random_crop":
                per_image = per_image.abs()
            sampled = op.sample_params(x, torch.rand(b, generator=g), g)
            calls = [lambda v=v: op.apply(x, v) for v in values]
            calls += [lambda: op.apply(x, per_image), lambda: op.apply_params(x, sampled)]
            native_out = [f() for f in calls]
            monkeypatch.setenv("FULCRA_NATIVE", "0")
            assert not K.warp_native_available()
            torch_out = [f() for f in calls]
            monkeypatch.delenv("FULCRA_NATIVE")
            for a, r in zip(native_out, torch_out):
                assert torch.equal(a, r), (name, h, w, b)


def test_a_batch_equals_its_images_one_by_one():
    x = _images(12, 3, 45, 38, 3)
    th = _random_matrices(12, 45, 38, 5)
    xs = torch.cat([x, x[: th.shape[0] - 12]])
    whole = K.warp_nearest(xs, th)
    for i in range(xs.shape[0]):
        assert torch.equal(K.warp_nearest(xs[i : i + 1], th[i : i + 1]), whole[i : i + 1])


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_count_does_not_change_the_output(threads):
    lib = K._warp_lib()
    x = _images(5, 3, 71, 90, 4)
    th = _random_matrices(5, 71, 90, 9)[:5].contiguous()
    outs = []
    for t in (1, threads):
        out = torch.empty_like(x)
        assert lib.fulcra_warp_nearest(x.data_ptr(), out.data_ptr(), th.data_ptr(), 5, 3, 71, 90, 1, t) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], K.warp_nearest_torch(x, th))
    # and through warp_nearest with torch's thread count above the parallel threshold
    old = torch.get_num_threads()
    try:
        big = _images(4, 3, 150, 160, 6)
        th2 = _random_matrices(4, 150, 160, 2)[:4].contiguous()
        torch.set_num_threads(1)
        one = K.warp_nearest(big, th2)
        torch.set_num_threads(threads)
        assert big.numel() >= K._WARP_PARALLEL_MIN
        assert torch.equal(K.warp_nearest(big, th2), one)
    finally:
        torch.set_num_threads(old)


def test_composite_policy_is_the_same_with_and_without_the_kernel(monkeypatch):
    names = sorted(BUILTIN_OPS)
    for shape in ((24, 3, 32, 32), (3, 3, 130, 140)):
        x = _images(*shape, seed=1)
        g = torch.Generator().manual_seed(2)
        idx = torch.randint(0, len(names), (shape[0], 3), generator=g)
        mags = torch.rand(shape[0], 3, generator=g)
        aug = CompositeAugment(build_ops(names))
        with_kernel = aug(x, idx, mags, torch.Generator().manual_seed(3))
        monkeypatch.setenv("FULCRA_NATIVE", "0")
        without = aug(x, idx, mags, torch.Generator().manual_seed(3))
        monkeypatch.delenv("FULCRA_NATIVE")
        assert torch.equal(with_kernel, without)


def test_non_contiguous_and_grad_inputs_take_the_torch_path():
    x = _images(3, 3, 40, 40, 2)
    th = _random_matrices(3, 20, 20, 1)[:3]
    view = x[:, :, ::2, 1::2]
    assert torch.equal(K.warp_nearest(view, th), K.warp_nearest_torch(view.contiguous(), th))
    xf = (x.float() / 255).requires_grad_(True)
    out = K.warp_nearest(xf, K.inverse_affine(*(torch.full((3,), 10.0, dtype=torch.float64),) * 5))
    out.sum().backward()  # the torch path keeps autograd working
    assert xf.grad is not None


def test_non_finite_matrices_behave_as_the_reference():
    x = _images(2, 3, 8, 8, 0)
    th = _random_matrices(2, 8, 8, 0)[:2].clone()
    th[0, 0, 2] = math.inf  # a translation to infinity: the reference fills the image with zeros
    th[1, 1, 1] = 1e300  # finite in float64, infinite in float32
    assert torch.equal(K.warp_nearest(x, th), K.warp_nearest_torch(x, th))
    th[0, 0, 0] = math.nan  # the reference fails on a NaN matrix (an out-of-range index)
    with pytest.raises(RuntimeError):
        K.warp_nearest_torch(x, th)
    with pytest.raises(RuntimeError):
        K.warp_nearest(x, th)


def test_no_compiler_falls_back_to_the_torch_path(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("FULCRA_NATIVE_CACHE", str(tmp_path / "cache"))
    # a new CC is a new key of native.kernel's cache: the load is tried afresh
    with caplog.at_level("WARNING"):
        assert not K.warp_native_available()
    assert "no C compiler" in native.reason(K._WARP_C)
    assert any("compiled warp kernel unavailable" in r.getMessage() for r in caplog.records)
    x = _images(3, 3, 20, 21, 0)
    th = _random_matrices(3, 20, 21, 0)[:3]
    assert torch.equal(K.warp_nearest(x, th), K.warp_nearest_torch(x, th))
    box = _boxes(3, 20, 21, 0)
    assert torch.equal(K.crop_resize_bilinear(x, *box), K.crop_resize_bilinear_torch(x, *box))


def test_disabled_kernel_is_reported(monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    assert not K.warp_native_available()
    x = _images(2, 3, 9, 9, 0)
    th = _random_matrices(2, 9, 9, 0)[:2]
    assert torch.equal(K.warp_nearest(x, th), K.warp_nearest_torch(x, th))


# ---- crop + bilinear resize (RandomResizedCrop) --------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 32, 61, 224, 500])
def test_crop_axis_tables_match_the_reference(n):
    lengths = sorted({1, 2, 3, n // 3 + 1, n // 2 + 1, n - 1, n} - {0})
    lengths = [m for m in lengths if 1 <= m <= n] if n > 64 else range(1, n + 1)
    for m in lengths:
        for start in sorted({0, (n - m) // 2, n - m}):
            ref = K._crop_axis(n, torch.tensor([float(start)]), torch.tensor([float(m)]))
            got = K.crop_axis_native(n, start, m)
            assert got is not None
            for r, g in zip(ref, got):
                assert torch.equal(r[0], g), (n, m, start)
    assert K.crop_axis_native(n, 0, n + 1) is None  # a span outside the axis


def _boxes(b, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    hh = (torch.rand(b, generator=g, dtype=torch.float64) * h).floor().clamp(1, h)
    ww = (torch.rand(b, generator=g, dtype=torch.float64) * w).floor().clamp(1, w)
    top = (torch.rand(b, generator=g, dtype=torch.float64) * (h - hh + 1)).floor()
    left = (torch.rand(b, generator=g, dtype=torch.float64) * (w - ww + 1)).floor()
    hh[0], ww[0], top[0], left[0] = h, w, 0, 0  # the whole image
    return top, left, hh, ww


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("h,w", SIZES + [(224, 224)])
def test_crop_resize_is_the_reference(h, w, c, dtype):
    b = 6 if h < 224 else 2
    x = _images(b, c, h, w, h * w + c, dtype)
    box = _boxes(b, h, w, h + w)
    got = K.crop_resize_bilinear(x, *box)
    ref = K.crop_resize_bilinear_torch(x, *box)
    assert got.dtype == ref.dtype and torch.equal(got, ref)
    for i in range(b):  # batch-independent
        one = K.crop_resize_bilinear(x[i : i + 1], *(t[i : i + 1] for t in box))
        assert torch.equal(one, ref[i : i + 1])


def test_random_resized_crop_op_matches_the_torch_path(monkeypatch):
    op = BUILTIN_OPS["random_resized_crop"]()
    for dtype in (torch.uint8, torch.float32):
        x = _images(9, 3, 45, 60, 1, dtype)
        g = torch.Generator().manual_seed(4)
        params = op.sample_params(x, torch.rand(9, generator=g), g)
        calls = [lambda: op.apply_params(x, params)] + [lambda s=s: op.apply(x, s) for s in (1.0, 0.5, 0.05)]
        native_out = [f() for f in calls]
        monkeypatch.setenv("FULCRA_NATIVE", "0")
        torch_out = [f() for f in calls]
        monkeypatch.delenv("FULCRA_NATIVE")
        assert all(torch.equal(a, r) for a, r in zip(native_out, torch_out))


def test_crop_resize_thread_count_and_fallbacks():
    x = _images(4, 3, 150, 160, 2)
    box = _boxes(4, 150, 160, 8)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.crop_resize_bilinear(x, *box)
        torch.set_num_threads(2)
        assert x.numel() >= K._WARP_PARALLEL_MIN
        assert torch.equal(K.crop_resize_bilinear(x, *box), one)
    finally:
        torch.set_num_threads(old)
    # float64 and non-contiguous images take the reference path
    xd = x.double() / 255
    assert torch.equal(K.crop_resize_bilinear(xd, *box), K.crop_resize_bilinear_torch(xd, *box))
    view = x[:, :, :, :80]
    small = _boxes(4, 150, 80, 3)
    assert torch.equal(K.crop_resize_bilinear(view, *small), K.crop_resize_bilinear_torch(view.contiguous(), *small))
    # a box outside the image: the reference's own error
    bad = (box[0], box[1], box[2] + 200, box[3])
    with pytest.raises(RuntimeError):
        K.crop_resize_bilinear(x, *bad)
