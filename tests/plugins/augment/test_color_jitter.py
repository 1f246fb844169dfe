"""color_jitter: torchvision's ColorJitter(s, s, s) (TrivialAugment's ImageNet default), bit-identical."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F

from fulcra_plugins.augment import ColorJitter

STEPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 20, 24), dtype=torch.uint8, generator=g)


def test_sampled_jitter_equals_torchvision_step_by_step():
    x = _images()
    op = ColorJitter()
    g = torch.Generator().manual_seed(1)
    params = op.sample_params(x, torch.ones(len(x)), g)
    f, order = params["factors"], params["order"]
    assert f.shape == (len(x), 3) and ((f >= 0.6 - 1e-12) & (f <= 1.4 + 1e-12)).all()
    assert (order.sort(dim=1).values == torch.arange(3)).all()  # a permutation per image
    assert len({tuple(r) for r in order.tolist()}) == 6  # every order occurs in 64 images
    out = op.apply_params(x, params)
    for i in range(len(x)):
        want = x[i : i + 1]
        for step in order[i].tolist():
            want = STEPS[step](want, float(f[i, step]))
        assert torch.equal(out[i : i + 1], want), i


def test_magnitude_is_the_strength_and_zero_is_identity():
    x = _images(8)
    op = ColorJitter()
    assert torch.equal(op(x, torch.zeros(8), torch.Generator().manual_seed(0)), x)
    p = op.sample_params(x, torch.full((8,), 0.5), torch.Generator().manual_seed(0))
    assert ((p["factors"] >= 0.8 - 1e-12) & (p["factors"] <= 1.2 + 1e-12)).all()


def test_batch_independence_and_float_images():
    x = _images(16)
    op = ColorJitter()
    p = op.sample_params(x, torch.ones(16), torch.Generator().manual_seed(3))
    whole = op.apply_params(x, p)
    half = op.apply_params(x[:5], {k: v[:5] for k, v in p.items()})
    assert torch.equal(whole[:5], half)
    xf = x.float() / 255
    outf = op.apply_params(xf, p)
    assert outf.dtype == torch.float32
    for i in range(len(x)):  # float images: torchvision's float steps in the same order
        want = xf[i : i + 1]
        for step in p["order"][i].tolist():
            want = STEPS[step](want, float(p["factors"][i, step]))
        torch.testing.assert_close(outf[i : i + 1], want, rtol=0, atol=2e-6)
