"""Tests that would catch a wrong SLACK method (issue item 7): sampling, density, KL, REINFORCE, file."""

import json
import math

import numpy as np
import pytest
import torch

from fulcra.errors import FormatError
from fulcra.policy import Policy, smoothed_uniform_log_density


def test_sampling_frequencies_match_pi():
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.05, 0.05, 0.1, 0.3, 0.5]])
    pol = Policy(
        ["identity", "rotate", "shear_x", "invert", "solarize"],
        torch.log(probs.clamp_min(1e-12)),
        torch.tensor([1.0, 0.5, 0.8, 1.0, 0.3]),
    )
    n = 40000
    idx, mags = pol.sample(n, torch.Generator().manual_seed(0))
    for k in range(2):
        freq = torch.bincount(idx[:, k], minlength=5).double() / n
        # 5 standard errors of a binomial proportion
        se = torch.sqrt(probs[k].double() * (1 - probs[k].double()) / n)
        assert ((freq - probs[k].double()).abs() <= 5 * se + 1e-9).all(), (k, freq, probs[k])
    # smoothed uniform on [0, μ]: mean μ/2, variance μ²/12 + σ²
    sel = idx[:, 1] == 4
    m = mags[sel, 1].double()
    assert abs(m.mean() - 0.15) < 0.01
    assert abs(m.var() - (0.3**2 / 12 + 0.01)) < 0.003


def test_sampling_is_reproducible_from_generator():
    pol = Policy.uniform(["identity", "rotate", "cutout"], 3)
    a = pol.sample(64, torch.Generator().manual_seed(3))
    b = pol.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("mu", [0.05, 0.3, 0.75, 1.0])
def test_smoothed_uniform_density_integrates_to_one_and_is_the_convolution(mu):
    sigma = 0.1
    h = 1e-3
    m = torch.arange(-1.0, 2.0, h, dtype=torch.float64)
    dens = smoothed_uniform_log_density(m, torch.tensor(mu, dtype=torch.float64), sigma).exp()
    assert abs(float(dens.sum() * h) - 1.0) < 1e-3
    # numerical convolution of U(0, μ) with N(0, σ²) on the same grid
    uni = ((m >= 0) & (m <= mu)).double() / mu
    t = torch.arange(-6 * sigma, 6 * sigma + h / 2, h, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (t / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    conv = np.convolve(uni.numpy(), gauss.numpy(), mode="same") * h
    inner = (m > -0.5) & (m < 1.5)
    assert np.abs(conv[inner.numpy()] - dens[inner].numpy()).max() < 2e-2 * dens.max().item()


def test_log_prob_matches_manual_formula_and_magnitude_free_ops():
    pol = Policy(
        ["identity", "rotate"],
        torch.tensor([[0.3, -0.2], [1.0, 0.0]]),
        torch.tensor([0.9, 0.6]),
        {"identity": None, "rotate": [0.0, 90.0]},
    )
    idx = torch.tensor([[0, 1], [1, 1]])
    m = torch.tensor([[0.4, 0.2], [-0.05, 0.7]])
    lp = torch.log_softmax(pol.logits, -1)
    dens = lambda x, mu: float(smoothed_uniform_log_density(torch.tensor(x), torch.tensor(mu)))
    want0 = lp[0, 0] + lp[1, 1] + dens(0.2, 0.6)  # identity has no magnitude term
    want1 = lp[0, 1] + lp[1, 1] + dens(-0.05, 0.6) + dens(0.7, 0.6)
    got = pol.log_prob(idx, m)
    assert torch.allclose(got, torch.stack([want0, want1]).float(), atol=1e-5)


def test_kl_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    anchor = torch.randn(3, 7, generator=g, dtype=torch.float64)
    kl = Policy.kl(logits, anchor)
    (auto,) = torch.autograd.grad(kl, logits)
    assert torch.allclose(Policy.kl_grad(logits, anchor), auto, atol=1e-12)
    assert float(Policy.kl(anchor, anchor)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl.detach()) > 0


def test_policy_file_round_trip(tmp_path):
    pol = Policy(
        ["identity", "shear_x", "cutout"],
        torch.tensor([[0.1, 2.0, -1.0], [0.0, 0.0, 0.5]]),
        torch.tensor([0.75, 0.4, 0.9]),
        {"identity": None, "shear_x": [0.0, 0.5], "cutout": [0.0, 1.0]},
    )
    path = pol.save(tmp_path / "policy.json")
    d = json.loads(path.read_text())
    assert set(d) >= {"ops", "probs", "mu", "ranges"}
    assert len(d["probs"]) == 2 and all(len(r) == 3 for r in d["probs"])
    assert d["ranges"]["shear_x"] == [0.0, 0.5] and d["ranges"]["identity"] is None
    back = Policy.load(path)
    assert back.ops == pol.ops and back.ranges == pol.ranges
    assert torch.allclose(back.probs(), pol.probs(), atol=1e-6)
    assert torch.allclose(back.mu, pol.mu)
    d["probs"][0] = [0.5, 0.5]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(FormatError, match="probs"):
        Policy.load(bad)


def test_as_transform_per_image_and_batch():
    pol = Policy.uniform(["identity", "rotate", "invert", "cutout", "random_resized_crop"], 2)
    t = pol.as_transform(seed=0)
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    out = t(img)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(pol.as_transform(seed=0)(img), out)  # a seed fixes the result
    fl = t(img.float() / 255)
    assert fl.dtype == torch.float32 and fl.shape == img.shape
    pil = pytest.importorskip("PIL.Image")
    im = pil.fromarray(img.permute(1, 2, 0).numpy())
    assert t(im).size == im.size


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    pol = Policy.uniform(["identity", "rotate", "invert"], 3)
    from fulcra_plugins.slack.plots import plot_evolution, plot_pie

    plot_pie(pol, tmp_path / "pie.png")
    plot_evolution(pol, [pol.probs().numpy(), pol.probs().numpy()], tmp_path / "evo.png")
    assert (tmp_path / "pie.png").stat().st_size > 1000 and (tmp_path / "evo.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("mu", [float("nan"), 0.5], r"field 'mu' must be 2 numbers in \(0, 1\]"),
        ("mu", [0.0, 0.5], r"field 'mu'"),
        ("sigma", -1, r"field 'sigma' must be a number >= 0, got -1"),
        ("sigma", "wide", r"field 'sigma'"),
        ("ranges", {"rotate": [0]}, r"field 'ranges.rotate' must be \[v0, v1\]"),
        ("probs", [[0.5, float("nan")]], r"field 'probs'"),
    ],
)
def test_policy_file_with_bad_values_is_refused(tmp_path, field, value, match):
    d = {"ops": ["identity", "rotate"], "probs": [[0.5, 0.5]], "mu": [0.5, 0.5], "ranges": {"rotate": [0, 30]}}
    d[field] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    with pytest.raises(FormatError, match=r"p\.json: " + match):
        Policy.load(path)
