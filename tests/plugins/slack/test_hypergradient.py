"""The batched REINFORCE hypergradient against a per-augmentation reference and a closed form."""

import torch
import torch.nn as nn
from torch.func import functional_call

from fulcra.policy import Policy
from fulcra_plugins.slack.slack import hypergradient


def _reference(model, policy, logits, mu, x_aug, y_aug, idx, mags, x_val, y_val, eta, loss_fn):
    """-(η/B_aug) Σ_τ (∇l_val(θ̂)ᵀ ∇l_τ(θ)) ∇φ log p(τ), one τ at a time with explicit gradients.

    BatchNorm sees the joint batch, as in the batched formulation, so l_τ is taken from the joint forward."""
    params = [p for p in model.parameters()]
    n_aug = idx.shape[0]
    per = loss_fn(model(x_aug), y_aug, reduction="none").view(n_aug, -1).mean(1)
    grads = [torch.autograd.grad(per[t], params, retain_graph=True) for t in range(n_aug)]
    g_mean = [sum(g[i] for g in grads) / n_aug for i in range(len(params))]
    names = [n for n, _ in model.named_parameters()]
    theta_hat = {n: (p.detach() - eta * g).requires_grad_(True) for n, p, g in zip(names, params, g_mean)}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    lv = loss_fn(functional_call(model, {**theta_hat, **bufs}, (x_val,)), y_val, reduction="mean")
    v = torch.autograd.grad(lv, list(theta_hat.values()))
    G_l, G_m = torch.zeros_like(logits), torch.zeros_like(mu)
    for t in range(n_aug):
        w = sum((gi * vi).sum() for gi, vi in zip(grads[t], v))
        s_l, s_m = torch.autograd.grad(policy.log_prob(idx[t : t + 1], mags[t : t + 1], logits, mu).sum(), [logits, mu])
        G_l += -eta / n_aug * w * s_l
        G_m += -eta / n_aug * w * s_m
    return g_mean, G_l, G_m


def test_batched_hypergradient_equals_per_augmentation_reference(hyper_problem):
    h = hyper_problem
    model, pol, logits, mu, x, y, idx, xv, yv = h.model, h.pol, h.logits, h.mu, h.x, h.y, h.idx, h.xv, h.yv
    mags = h.mags
    ce = nn.functional.cross_entropy
    g, Gl, Gm, _, _ = hypergradient(model, pol, logits, mu, x, y, idx, mags, xv, yv, 0.1, ce)
    g_ref, Gl_ref, Gm_ref = _reference(model, pol, logits, mu, x, y, idx, mags, xv, yv, 0.1, ce)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(Gl, Gl_ref, atol=1e-12) and Gl.abs().max() > 0
    assert torch.allclose(Gm, Gm_ref, atol=1e-12)


class _Shift(nn.Module):
    """θ ∈ R^d; "input" x is the augmentation's target a_τ·m, output θ − x."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return self.theta - x


def _half_sq(out, target, reduction="mean"):
    per = 0.5 * (out**2).sum(-1)
    return per if reduction == "none" else per.mean()


def test_reinforce_mean_matches_exact_hypergradient():
    """l(θ, τ) = ½‖θ − a_t m‖², l_val(θ) = ½‖θ − b‖²: with E[m] = μ/2 under the smoothed uniform,
    F̂(φ) = ½‖θ − η(θ − Σ_t p_t a_t μ_t/2) − b‖² is known in closed form; its autograd gradient must be
    the mean of the REINFORCE estimates."""
    torch.manual_seed(0)
    d, N = 3, 4
    A = torch.randn(N, d, dtype=torch.float64)
    b = torch.randn(d, dtype=torch.float64)
    theta = torch.randn(d, dtype=torch.float64)
    eta = 0.5
    ops = ["rotate", "shear_x", "solarize", "cutout"]
    pol = Policy.uniform(ops, 1)
    logits = torch.tensor([[0.3, -0.5, 0.8, 0.0]], dtype=torch.float64, requires_grad=True)
    mu = torch.tensor([0.6, 0.9, 0.4, 0.7], dtype=torch.float64, requires_grad=True)

    p = torch.softmax(logits[0], -1)
    theta_hat = theta - eta * (theta - (p[:, None] * A * (mu[:, None] / 2)).sum(0))
    F_exact = 0.5 * ((theta_hat - b) ** 2).sum()
    gl_exact, gm_exact = torch.autograd.grad(F_exact, [logits, mu])

    model = _Shift(theta)
    sampler = Policy(ops, logits.detach().float(), mu.detach().float(), pol.ranges)
    gen = torch.Generator().manual_seed(0)
    acc_l, acc_m, reps, n_aug = 0, 0, 20, 4000
    for _ in range(reps):
        idx, m = sampler.sample(n_aug, gen)
        m = m.double()
        x = A[idx[:, 0]] * m[:, :1]
        Gl, Gm = hypergradient(
            model, pol, logits, mu, x, torch.zeros(n_aug), idx, m, b[None], torch.zeros(1), eta, _half_sq
        )[1:3]
        acc_l, acc_m = acc_l + Gl / reps, acc_m + Gm / reps
    scale_l, scale_m = gl_exact.abs().max(), gm_exact.abs().max()
    assert (acc_l - gl_exact).abs().max() < 0.05 * scale_l, (acc_l, gl_exact)
    assert (acc_m - gm_exact).abs().max() < 0.08 * scale_m, (acc_m, gm_exact)


def test_layerwise_hypergradient_equals_per_augmentation_reference(hyper_problem):
    """The one-backward formulation against explicit per-τ gradients (per-group BatchNorm in both)."""
    from fulcra_plugins.slack.layerwise import grouped_batchnorm, layerwise_hypergradient, supports_layerwise

    h = hyper_problem
    model, pol, logits, mu, x, y, idx, xv, yv = h.model, h.pol, h.logits, h.mu, h.x, h.y, h.idx, h.xv, h.yv
    mags, n_aug, n_t = h.mags, h.n_aug, h.n_t
    assert supports_layerwise(model)
    ce = nn.functional.cross_entropy
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g, Gl, Gm, _, _ = layerwise_hypergradient(model, pol, logits, mu, x, y, idx, mags.double(), xv, yv, 0.1, ce)
    model.load_state_dict(state)

    class _GroupedModel(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inp):
            if inp.shape[0] == n_aug * n_t:
                with grouped_batchnorm(self.m, n_aug):
                    return self.m(inp)
            return self.m(inp)

    wrapped = _GroupedModel(model)
    g_ref, Gl_ref, Gm_ref = _reference(wrapped, pol, logits, mu, x, y, idx, mags.double(), xv, yv, 0.1, ce)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(Gl, Gl_ref, atol=1e-12) and Gl.abs().max() > 0
    assert torch.allclose(Gm, Gm_ref, atol=1e-12)
