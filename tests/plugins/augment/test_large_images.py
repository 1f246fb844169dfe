"""Large-image fast paths (one image per kernel call on CPU, direct uint8 Posterize/Solarize, uint8
Equalize histograms, float64 FMA for Color/Sharpness) against torchvision and against the table path,
and the chunked composite against op-by-op application."""

import pytest
import torch

from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment, build_ops
from fulcra_plugins.augment import _kernels as K

F = pytest.importorskip("torchvision.transforms.v2.functional")

# 3×160×176 = 84,480 values per image: above the composite's per-call chunk, so one image per call
H, W = 160, 176


@pytest.fixture(scope="module")
def big():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, H, W), dtype=torch.uint8, generator=g)
    x[1] = x[1] // 4 + 60  # low contrast
    x[2, :, :40] = 0  # flat region
    return x


CASES = {
    "posterize": (lambda im, v: F.posterize(im, int(v)), [2, 5, 8, 1]),
    "solarize": (F.solarize, [0.0, 17.5, 128.0, 255.0]),
    "equalize": (lambda im, v: F.equalize(im), [0, 0, 0, 0]),
    "color": (F.adjust_saturation, [0.01, 0.5, 1.3, 1.99]),
    "sharpness": (F.adjust_sharpness, [0.01, 0.5, 1.3, 1.99]),
    "contrast": (F.adjust_contrast, [0.01, 0.5, 1.3, 1.99]),
    "auto_contrast": (lambda im, v: F.autocontrast(im), [0, 0, 0, 0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_large_image_matches_torchvision(name, big):
    if name in ("color", "sharpness") and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torchvision's blends round twice in ATen's scalar build (ATEN_CPU_CAPABILITY=default)")
    op = BUILTIN_OPS[name]()
    ref_fn, vals = CASES[name]
    for i, v in enumerate(vals):
        out = op.apply(big[i : i + 1], float(v))
        assert torch.equal(out[0], ref_fn(big[i], v)), f"{name} image {i}"


@pytest.mark.parametrize("name", ["posterize", "solarize", "invert"])
def test_direct_uint8_paths_equal_tables(name, big):
    op = BUILTIN_OPS[name]()
    for v in [-3.0, 0.0, 0.5, 2.0, 100.3, 255.0, 255.5, 300.0] if name == "solarize" else [1.0, 2.0, 5.0, 8.0]:
        p = {"value": torch.full((big.shape[0],), v, dtype=torch.float64)}
        assert torch.equal(op.apply_params(big, p), K.apply_lut(big, op.lut(big, p))), v


def test_chunked_composite_equals_sequential(big):
    """Deterministic ops, three stages, one image per kernel call: same as op after op per image."""
    names = ["identity", "auto_contrast", "equalize", "invert", "solarize", "posterize", "grayscale"]
    ops = build_ops(names)
    g = torch.Generator().manual_seed(0)
    x = big.repeat(2, 1, 1, 1)
    idx = torch.randint(0, len(names), (x.shape[0], 3), generator=g)
    mags = torch.rand(x.shape[0], 3, generator=g)
    out = CompositeAugment(ops)(x, idx, mags, g)
    for i in range(x.shape[0]):
        y = x[i : i + 1]
        for k in range(3):
            y = ops[int(idx[i, k])](y, mags[i, k : k + 1])
        assert torch.equal(out[i], y[0]), i


def test_chunk_size_does_not_change_results(big):
    """The same draws and the same pixels whether a group is one call or one call per image."""
    names = ["shear_x", "rotate", "translate_y", "color", "sharpness", "brightness", "cutout", "random_crop"]
    idx = torch.randint(0, len(names), (big.shape[0] * 2, 2), generator=torch.Generator().manual_seed(1))
    mags = torch.rand(idx.shape, generator=torch.Generator().manual_seed(2))
    x = big.repeat(2, 1, 1, 1)
    outs = []
    for chunk in (1 << 17, 1 << 30):
        comp = CompositeAugment(build_ops(names))
        comp.chunk_values = chunk
        outs.append(comp(x, idx, mags, torch.Generator().manual_seed(3)))
    assert torch.equal(outs[0], outs[1])
