"""The batched ops against torchvision.transforms.v2.functional (uint8: photometric identical,
affine warps identical except at provable rounding ties, RandomResizedCrop within 1% of pixels off
by more than 2 levels), per-image parameters, dtypes, devices, seeds."""

import math

import pytest
import torch

import fulcra
from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment, build_ops

F = pytest.importorskip("torchvision.transforms.v2.functional")

# torchvision's blends (``img.mul(r).add_(other, alpha=1 - r)``) round once in ATen's FMA builds
# (AVX2, AVX-512) and twice in its scalar build (ATEN_CPU_CAPABILITY=default); fulcra always rounds
# once, so exact parity holds only where torchvision's result is the fused one
TV_BLENDS_FUSED = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
BLENDS = {"color", "sharpness"}

B, H, W = 6, 24, 28


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)
    x[1] = x[1] // 4 + 60  # a low-contrast image (autocontrast, equalize)
    x[2, :, :8] = 0  # flat regions
    return x


def _per_image(fn, x, vals):
    return torch.stack([fn(x[i : i + 1], float(vals[i]))[0] for i in range(len(vals))])


def _shear(axis):
    def f(im, v):
        s = [math.degrees(math.atan(v)), 0.0] if axis == 0 else [0.0, math.degrees(math.atan(v))]
        return F.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=s, center=[0, 0])

    return f


def _rrc(im, s):
    h = min(max(round(math.sqrt(s) * H), 1), H)
    w = min(max(round(math.sqrt(s) * W), 1), W)
    return F.resized_crop(im, round((H - h) / 2), round((W - w) / 2), h, w, [H, W], antialias=True)


def _cutout(im, s):
    s = int(s)
    y0, x0 = max(0, H // 2 - s // 2), max(0, W // 2 - s // 2)
    y1, x1 = min(H, H // 2 - s // 2 + s), min(W, W // 2 - s // 2 + s)
    return F.erase(im, y0, x0, y1 - y0, x1 - x0, torch.tensor(0))


FACTORS = [0.01, 0.5, 1.0, 1.3, 1.99, 1.77]
# name: (reference(img, value), values, kind): kind "affine" = nearest-pixel warp (exact but at ties),
# "resample" = bilinear resampling (tolerance), "exact" = bit-identical
CASES = {
    "identity": (lambda im, v: im, [0] * B, "exact"),
    "shear_x": (_shear(0), [0.1, 0.5, -0.7, 1.0, 0.3, -0.05], "affine"),
    "shear_y": (_shear(1), [0.1, 0.5, -0.7, 1.0, 0.3, -0.05], "affine"),
    "translate_x": (lambda im, v: F.affine(im, 0.0, [v, 0.0], 1.0, [0.0, 0.0]), [3, -5, 10, 0, -20, 7], "affine"),
    "translate_y": (lambda im, v: F.affine(im, 0.0, [0.0, v], 1.0, [0.0, 0.0]), [3, -5, 10, 0, -20, 7], "affine"),
    "rotate": (lambda im, v: F.rotate(im, v), [10, -30, 45, 90, -77, 3], "affine"),
    "auto_contrast": (lambda im, v: F.autocontrast(im), [0] * B, "exact"),
    "equalize": (lambda im, v: F.equalize(im), [0] * B, "exact"),
    "invert": (lambda im, v: F.invert(im), [0] * B, "exact"),
    "solarize": (lambda im, v: F.solarize(im, v), [0, 128, 255, 17.5, 200, 100], "exact"),
    "posterize": (lambda im, v: F.posterize(im, int(v)), [2, 3, 4, 5, 8, 7], "exact"),
    "contrast": (F.adjust_contrast, FACTORS, "exact"),
    "brightness": (F.adjust_brightness, FACTORS, "exact"),
    "sharpness": (F.adjust_sharpness, FACTORS, "exact"),
    "color": (F.adjust_saturation, FACTORS, "exact"),
    "hue": (F.adjust_hue, [0.1, -0.2, 0.5, -0.5, 0.33, 0.0], "exact"),
    "grayscale": (lambda im, v: F.rgb_to_grayscale(im, 3), [0] * B, "exact"),
    "cutout": (_cutout, [0, 4, 9, 16, 33, 40], "exact"),
    "random_crop": (lambda im, v: F.crop(F.pad(im, [int(v)]), 0, 0, H, W), [0, 1, 4, 8, 16, 3], "exact"),
    "random_resized_crop": (_rrc, [1.0, 0.5, 0.05, 0.8, 0.3, 0.1], "resample"),
    "color_jitter": (
        lambda im, v: F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(im, 1 + v), 1 + v), 1 + v),
        [0.0, 0.1, 0.4, -0.3, 0.25, -0.4],
        "exact",
    ),
}


def test_every_op_has_a_case():
    assert set(CASES) == set(BUILTIN_OPS)


def _source_coords(theta: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: the source pixel coordinates of every output pixel in float64 (error ~1e-13),
    from the float32 rescaled matrix torchvision forms, one image at a time. ``[h, w]`` each."""
    r = (theta.to(torch.float32) / torch.tensor([[0.5 * w], [0.5 * h]])).to(torch.float64)
    xs = torch.arange(w, dtype=torch.float64).view(1, w) + 0.5 - w / 2
    ys = torch.arange(h, dtype=torch.float64).view(h, 1) + 0.5 - h / 2
    gx = xs * r[0, 0] + ys * r[0, 1] + r[0, 2]
    gy = xs * r[1, 0] + ys * r[1, 1] + r[1, 2]
    return (gx + 1) * (w / 2) - 0.5, (gy + 1) * (h / 2) - 0.5


def _ties(coord: torch.Tensor, tol: float) -> torch.Tensor:
    """Where a coordinate is within ``tol`` pixels of a half-integer: the nearest pixel is then decided
    by the last float32 roundings, which in torchvision depend on its BLAS GEMM's code path."""
    return ((coord - coord.floor()) - 0.5).abs() < tol


# float32 grid values are below 4 in these cases: a few ulps (2.4e-7 each) times w / 2 is < 1e-5 px
TIE_TOL = 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_matches_torchvision_uint8(name, images):
    ref_fn, vals, kind = CASES[name]
    if name in BLENDS and not TV_BLENDS_FUSED:
        pytest.skip("torchvision's blends round twice in ATen's scalar build (see TV_BLENDS_FUSED)")
    op = BUILTIN_OPS[name]()
    vals = torch.tensor(vals, dtype=torch.float64)
    out = op.apply(images, vals)  # per-image values, one call
    ref = _per_image(ref_fn, images, vals)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    diff = (out.int() - ref.int()).abs()
    if kind == "resample":
        assert (diff > 2).float().mean() <= 0.01, f"{name}: {(diff > 2).float().mean():.4f} of pixels off"
    elif kind == "affine":
        theta = op.matrix({"value": vals}, H, W)
        n_ties = 0
        for i in range(B):
            cx, cy = _source_coords(theta[i], H, W)
            tie = _ties(cx, TIE_TOL) | _ties(cy, TIE_TOL)
            off = (diff[i] > 0).any(0)
            assert not (off & ~tie).any(), f"{name} image {i}: {int((off & ~tie).sum())} pixels differ away from ties"
            n_ties += int(tie.sum())
        # ties come only from values that put pixel centres exactly on half-integers (shear 1.0: one
        # whole image); a rounding regression would show up as mismatches away from them
        assert n_ties <= H * W, f"{name}: {n_ties} tie pixels"
    else:
        assert torch.equal(out, ref), f"{name}: {(diff > 0).sum()} pixels differ"


@pytest.mark.parametrize("name", sorted(BUILTIN_OPS))
def test_float_images_follow_uint8(name, images):
    """The float path (values in [0, 1]) agrees with the uint8 path up to quantisation."""
    op = BUILTIN_OPS[name]()
    vals = torch.tensor(CASES[name][1], dtype=torch.float64)
    out_f = op.apply(images.float() / 255, vals)
    out_u = op.apply(images, vals)
    assert out_f.dtype == torch.float32 and out_f.shape == images.shape
    assert 0 <= out_f.min() and out_f.max() <= 1
    diff = (out_f * 255 - out_u.float()).abs()
    assert (diff > 3).float().mean() < 0.02, f"{name}: float/uint8 disagree on {(diff > 3).float().mean():.3f}"


@pytest.mark.parametrize("name", sorted(BUILTIN_OPS))
def test_call_is_seeded_and_per_image(name, images):
    op = BUILTIN_OPS[name]()
    mag = torch.linspace(0, 1, B)
    a = op(images, mag, torch.Generator().manual_seed(1))
    b = op(images, mag, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # a batch call equals per-image calls with the same params
    params = op.sample_params(images, mag, torch.Generator().manual_seed(2))
    batched = op.apply_params(images, params)
    for i in range(B):
        sub = {k: v[i : i + 1] for k, v in params.items()}
        assert torch.equal(op.apply_params(images[i : i + 1], sub)[0], batched[i])


def test_magnitude_mapping_and_ranges_from_config():
    rot = fulcra.create("augmentations", "rotate", value_range=[0, 30])
    v = rot.magnitude_to_value(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(v, torch.tensor([0.0, 15.0, 30.0]))
    br = BUILTIN_OPS["brightness"]()
    assert torch.allclose(br.magnitude_to_value(torch.tensor([1.0]), torch.tensor([-1.0])), torch.tensor([0.01]))
    post = BUILTIN_OPS["posterize"]()
    assert post.magnitude_to_value(torch.tensor([0.0, 1.0])).tolist() == [8.0, 2.0]
    ops = build_ops(["rotate", "cutout"], {"rotate": [0, 5]})
    assert ops[0].value_range == (0.0, 5.0) and ops[1].value_range == (0.0, 1.0)


def _sequential_reference(ops, images, idx, mags):
    out = images.clone()
    for i in range(images.shape[0]):
        x = images[i : i + 1]
        for k in range(idx.shape[1]):
            x = ops[int(idx[i, k])](x, mags[i, k : k + 1])
        out[i] = x[0]
    return out


def test_composite_equals_sequential_application(images):
    """Deterministic ops (no sign or position draws): the fused, grouped composite equals applying each
    image's ops one after the other."""
    names = ["identity", "auto_contrast", "equalize", "invert", "solarize", "posterize", "grayscale"]
    ops = build_ops(names)
    g = torch.Generator().manual_seed(0)
    x = images.repeat(4, 1, 1, 1)
    idx = torch.randint(0, len(names), (x.shape[0], 3), generator=g)
    mags = torch.rand(x.shape[0], 3, generator=g)
    out = CompositeAugment(ops)(x, idx, mags, g)
    assert torch.equal(out, _sequential_reference(ops, x, idx, mags))


def test_composite_fused_affine_equals_per_op(images):
    """Affine ops with a zero-width symmetric range have no randomness left: the fused warp equals
    the op-by-op warps."""
    ops = build_ops(
        ["shear_x", "rotate", "translate_y", "brightness"],
        {"shear_x": [0.4, 0.4], "rotate": [20, 20], "translate_y": [0.2, 0.2], "brightness": [0.5, 0.5]},
    )
    for op in ops:
        op.symmetric = False
    x = images.repeat(3, 1, 1, 1)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 4, (x.shape[0], 2), generator=g)
    mags = torch.rand(x.shape[0], 2, generator=g)
    out = CompositeAugment(ops)(x, idx, mags, g)
    assert torch.equal(out, _sequential_reference(ops, x, idx, mags))


def test_random_resized_crop_goes_first(images):
    ops = build_ops(["invert", "random_resized_crop"], {"random_resized_crop": [0.25, 0.25]})
    idx = torch.tensor([[0, 1]] * B)  # sampled second, applied first
    mags = torch.ones(B, 2)
    out = CompositeAugment(ops)(images, idx, mags, torch.Generator().manual_seed(0))
    params = ops[1].sample_params(images, torch.ones(B), torch.Generator().manual_seed(0))
    want = ops[0].apply(ops[1].apply_params(images, params))
    assert torch.equal(out, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_cpu(name, images):
    op = BUILTIN_OPS[name]()
    vals = torch.tensor(CASES[name][1], dtype=torch.float64)
    cpu = op.apply(images, vals)
    gpu = op.apply(images.cuda(), vals.cuda()).cpu()
    diff = (cpu.int() - gpu.int()).abs()
    assert (diff > 2).float().mean() <= 0.01
    g = torch.Generator(device="cuda").manual_seed(0)
    out = op(images.cuda(), torch.rand(B, device="cuda", generator=g), g)
    assert out.device.type == "cuda" and out.dtype == torch.uint8
