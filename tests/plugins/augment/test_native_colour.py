"""The compiled colour and histogram kernels (augment/_colour.c) against the torch path they replace:
bit-identical for every op, value, size, channel count and batch; exhaustive where the arithmetic
has a finite domain (the grey level of every RGB triple, every (pixel, grey) pair of Color); the same
output for 1 and 2 threads; the composite the same with and without the kernels."""

import pytest
import torch

from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment, build_ops
from fulcra_plugins.augment import _kernels as K
from fulcra_plugins.augment import _native as N

pytestmark = pytest.mark.skipif(N.lib() is None, reason="no C compiler for the native kernels")

OPS = [
    "color",
    "sharpness",
    "contrast",
    "brightness",
    "posterize",
    "solarize",
    "invert",
    "equalize",
    "auto_contrast",
    "hue",
    "grayscale",
]
ENHANCE = [0.01, 0.37, 1.0, 1.5, 2.0, 1.99, 0.0, 0.5, 2.5, -1.0, 1e5]
VALUES = {
    "color": ENHANCE,
    "sharpness": ENHANCE,
    "contrast": ENHANCE,
    "brightness": ENHANCE,
    "posterize": [8, 7, 5, 2, 1, 0, 2.5],
    "solarize": [255, 256, 254.5, 128, 1, 0, 0.3],
    "invert": [0],
    "equalize": [0],
    "auto_contrast": [0],
    "hue": [0.2, -0.5, 0.5, 0.0, -0.13, 0.4999, 1e-8, -1e-8],
    "grayscale": [0],
}
SHAPES = [(1, 3, 1, 1), (2, 3, 1, 7), (3, 3, 3, 3), (5, 3, 17, 23), (4, 1, 61, 61), (7, 3, 32, 32), (2, 3, 224, 224)]


def _images(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    if shape[0] > 1:
        x[1] = 77  # constant (Equalize, AutoContrast: identity tables)
    if shape[0] > 2:
        x[2] = x[2] // 128 * 255  # two levels
    if shape[0] > 3:
        x[3] = x[3] // 4 + 60  # low contrast
    return x


def _torch_path(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setenv("FULCRA_NATIVE", "0")
        assert N.lib() is None
        return fn()


@pytest.mark.parametrize("name", OPS)
def test_ops_native_equal_torch(name, monkeypatch):
    op = BUILTIN_OPS[name]()
    for k, shape in enumerate(SHAPES):
        x = _images(shape, k)
        vals = VALUES[name]
        per_image = torch.tensor([vals[i % len(vals)] for i in range(shape[0])], dtype=torch.float64)
        for v in [*vals, per_image]:
            got = op.apply(x, v)
            want = _torch_path(monkeypatch, lambda: op.apply(x, v))
            assert got.dtype == torch.uint8 and torch.equal(got, want), (name, shape, v)
        # the composite's form: images picked by index, written into another batch at other indices
        params = {"value": per_image}
        sidx = torch.arange(shape[0] - 1, -1, -1)
        out = torch.zeros((shape[0] + 2, *shape[1:]), dtype=torch.uint8)
        didx = sidx + 2
        y = op.native_apply(x, params, sidx, out, didx)
        if y is not None:
            want = _torch_path(monkeypatch, lambda: op.apply_params(x[sidx], {"value": per_image}))
            assert torch.equal(out[didx], want), (name, shape)
            assert not out[:2].any()


def test_grey_floor_every_rgb_triple():
    v = torch.arange(1 << 24, dtype=torch.int64)
    x = torch.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).to(torch.uint8).view(1, 3, 4096, 4096)
    want = K.gray_uint8_exact(x).floor_().to(torch.uint8)
    assert torch.equal(N.grey_floor(x.contiguous()), want)


@pytest.mark.parametrize(
    "r, shape",
    [(0.37, (4, 1024, 4096)), (1.5, (4, 1024, 4096)), (0.01, (16384, 32, 32)), (0.37, (16384, 32, 32))],
    ids=["table-0.37", "table-1.5", "float-0.01", "float-0.37"],
)
def test_color_every_pixel_grey_pair(r, shape, monkeypatch):
    # every RGB triple once: every (value, floor(grey)) pair that can occur, in every channel; large
    # images take the kernel's tabulated path, 32x32 ones its float32 path
    v = torch.arange(1 << 24, dtype=torch.int64)
    rgb = torch.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).to(torch.uint8)  # [3, 2**24]
    n, h, w = shape
    x = rgb.view(3, n, h, w).transpose(0, 1).contiguous()
    op = BUILTIN_OPS["color"]()
    got = op.apply(x, r)
    want = _torch_path(monkeypatch, lambda: op.apply(x, r))
    assert torch.equal(got, want)


def _every_triple(n, h, w):
    v = torch.arange(1 << 24, dtype=torch.int64)
    rgb = torch.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).to(torch.uint8)  # [3, 2**24]
    return rgb.view(3, n, h, w).transpose(0, 1).contiguous()


def test_hue_grayscale_many_triples(monkeypatch):
    # every 7th RGB triple (2.4M pixels) for Hue's float32 chain; all of them: the slow test below
    x = _every_triple(16, 1024, 1024)[:, :, ::7].contiguous()
    for name, v in (("hue", 0.2), ("hue", -0.37), ("grayscale", 0)):
        op = BUILTIN_OPS[name]()
        assert torch.equal(op.apply(x, v), _torch_path(monkeypatch, lambda: op.apply(x, v))), (name, v)


@pytest.mark.slow
@pytest.mark.parametrize("v", [0.2, -0.5, 0.4999, -1e-8])
def test_hue_every_rgb_triple(v, monkeypatch):
    x = _every_triple(16, 1024, 1024)
    op = BUILTIN_OPS["hue"]()
    assert torch.equal(op.apply(x, v), _torch_path(monkeypatch, lambda: op.apply(x, v)))


@pytest.mark.parametrize("size", [20, 64])  # the float32 path, the tabulated path
def test_sharpness_dyadic_factors_exact_path(size, monkeypatch):
    # alpha = 1 - r dyadic: many blends land exactly on integers or near them (the flagged values)
    op = BUILTIN_OPS["sharpness"]()
    x = _images((6, 3, size, size), 3)
    for r in (0.5, 1.5, 0.75, 1.25, 1.0 + 2.0**-20, 1.0 - 2.0**-12):
        got = op.apply(x, r)
        assert torch.equal(got, _torch_path(monkeypatch, lambda: op.apply(x, r))), r


def test_contrast_large_image_falls_back(monkeypatch):
    # a float32 sum of more than 2**24 / 255 pixels is not exact: the torch mean decides there
    op = BUILTIN_OPS["contrast"]()
    x = _images((1, 3, 260, 260), 4)
    got = op.apply(x, 0.6)
    assert torch.equal(got, _torch_path(monkeypatch, lambda: op.apply(x, 0.6)))


def test_thread_count_independent():
    x = _images((9, 3, 45, 50), 5)
    vals = torch.linspace(0.01, 1.99, 9, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append([BUILTIN_OPS[n]().apply(x, vals) for n in OPS])
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(OPS, *outs):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("size", [32, 61, 224])
def test_composite_native_equal_torch(size, monkeypatch):
    names = sorted(BUILTIN_OPS)
    B = 24 if size < 224 else 10
    x = _images((B, 3, size, size), size)

    def run():
        g = torch.Generator().manual_seed(size)
        idx = torch.randint(0, len(names), (B, 3), generator=g)
        mags = torch.rand(B, 3, generator=g)
        return CompositeAugment(build_ops(names))(x, idx, mags, g)

    assert torch.equal(run(), _torch_path(monkeypatch, run))


def test_bad_indices_are_refused():
    x = _images((2, 3, 8, 8), 6)
    with pytest.raises(IndexError, match="src index out of range"):
        N.lut(x, torch.zeros(1, 3, 256, dtype=torch.uint8), sidx=torch.tensor([2]))
    with pytest.raises(TypeError, match="contiguous CPU uint8"):
        N.hist(x.float())


def test_disabled_by_switch(monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    assert not N.available(_images((1, 3, 4, 4), 7))


def _child(q):
    torch.set_num_threads(2)
    x = _images((4, 3, 40, 40), 8)
    q.put(BUILTIN_OPS["sharpness"]().apply(x, 1.7).sum().item())


def test_forked_worker_after_parallel_use():
    # DataLoader workers are forked from a parent that may have run the kernels on several threads:
    # GNU libgomp would hang in the child's first parallel region, so children use one thread
    import multiprocessing as mp

    x = _images((4, 3, 40, 40), 8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = BUILTIN_OPS["sharpness"]().apply(x, 1.7).sum().item()
    finally:
        torch.set_num_threads(before)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,), daemon=True)
    p.start()
    p.join(60)
    if p.exitcode is None:
        p.kill()
    assert p.exitcode == 0, "the forked worker hung or failed"
    assert q.get(timeout=5) == want
