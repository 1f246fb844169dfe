"""Retraining and search steps in B_aug groups (Table A.4 "8×128") with the official code's
stabilisers, against explicit per-augmentation loops: each group's gradient from its own forward
pass, clipped to a norm, averaged; the validation gradient clipped tensor by tensor; the
REINFORCE weights from the clipped gradients."""

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from fulcra.policy import Policy
from fulcra_plugins.slack import Slack
from fulcra_plugins.slack.layerwise import layerwise_hypergradient
from fulcra_plugins.slack.slack import hypergradient

ce = nn.functional.cross_entropy


def _clip(ts, c):
    n = torch.sqrt(sum((t.double() ** 2).sum() for t in ts))
    return min(1.0, c / (float(n) + 1e-6))


def _reference(model, logits, mu, pol, x, y, idx, mags, xv, yv, eta, clip, val_clip, joint):
    """One τ at a time: ∇ l_τ (its own forward pass, or the joint one when ``joint``), c_τ, the
    clipped mean, θ̂, v clipped per tensor, Ĝ = -(η/B) Σ c_τ (vᵀ ∇ l_τ) ∇ log p(τ)."""
    params = list(model.parameters())
    n_aug = idx.shape[0]
    if joint:
        per = ce(model(x), y, reduction="none").view(n_aug, -1).mean(1)
        grads = [torch.autograd.grad(per[t], params, retain_graph=True) for t in range(n_aug)]
    else:
        grads = [torch.autograd.grad(ce(model(xg), yg), params) for xg, yg in zip(x.chunk(n_aug), y.chunk(n_aug))]
    cs = [_clip(g, clip) if clip > 0 else 1.0 for g in grads]
    g_mean = [sum(c * g[i] for c, g in zip(cs, grads)) / n_aug for i in range(len(params))]
    names = [n for n, _ in model.named_parameters()]
    th = {n: (p.detach() - eta * g).requires_grad_(True) for n, p, g in zip(names, params, g_mean)}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    v = torch.autograd.grad(ce(functional_call(model, {**th, **bufs}, (xv,)), yv), list(th.values()))
    if val_clip > 0:
        v = [vi * _clip([vi], val_clip) for vi in v]
    G_l, G_m = torch.zeros_like(logits), torch.zeros_like(mu)
    for t in range(n_aug):
        w = cs[t] * sum((gi * vi).sum() for gi, vi in zip(grads[t], v))
        s_l, s_m = torch.autograd.grad(pol.log_prob(idx[t : t + 1], mags[t : t + 1], logits, mu).sum(), [logits, mu])
        G_l += -eta / n_aug * w * s_l
        G_m += -eta / n_aug * w * s_m
    return g_mean, G_l, G_m, cs


def _norms(model, x, y, n_aug):
    params = list(model.parameters())
    return [
        float(torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(ce(model(xg), yg), params))))
        for xg, yg in zip(x.chunk(n_aug), y.chunk(n_aug))
    ]


@pytest.mark.parametrize("val_clip", [0.0, 1e-3])
def test_layerwise_groups_with_clipping_equal_the_per_augmentation_loop(hyper_problem, val_clip):
    h = hyper_problem
    state = {k: v.clone() for k, v in h.model.state_dict().items()}
    norms = sorted(_norms(h.model, h.x, h.y, h.n_aug))
    clip = 0.5 * (norms[0] + norms[1])  # clips some groups, not all
    h.model.load_state_dict(state)
    args = (h.model, h.pol, h.logits, h.mu, h.x, h.y, h.idx, h.mags, h.xv, h.yv, 0.1, ce)
    g, Gl, Gm, _, _ = layerwise_hypergradient(*args, clip=clip, val_clip=val_clip)
    h.model.load_state_dict(state)
    g_ref, Gl_ref, Gm_ref, cs = _reference(
        h.model, h.logits, h.mu, h.pol, h.x, h.y, h.idx, h.mags, h.xv, h.yv, 0.1, clip, val_clip, joint=False
    )
    assert min(cs) < 1.0 and max(cs) == 1.0
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(Gl, Gl_ref, atol=1e-12) and Gl.abs().max() > 0
    assert torch.allclose(Gm, Gm_ref, atol=1e-12)
    # clipping changed the answer (the test would notice a path that ignores it)
    h.model.load_state_dict(state)
    Gl0 = layerwise_hypergradient(*args)[1]
    assert not torch.allclose(Gl0, Gl, atol=1e-9)


def test_double_backward_with_clipping_equals_the_joint_batch_loop(hyper_problem):
    h = hyper_problem
    state = {k: v.clone() for k, v in h.model.state_dict().items()}
    per = ce(h.model(h.x), h.y, reduction="none").view(h.n_aug, -1).mean(1)
    params = list(h.model.parameters())
    norms = sorted(
        float(torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(per[t], params, retain_graph=True))))
        for t in range(h.n_aug)
    )
    clip = 0.5 * (norms[0] + norms[1])
    h.model.load_state_dict(state)
    g, Gl, Gm, _, _ = hypergradient(
        h.model, h.pol, h.logits, h.mu, h.x, h.y, h.idx, h.mags, h.xv, h.yv, 0.1, ce, clip=clip, val_clip=1e-3
    )
    h.model.load_state_dict(state)
    g_ref, Gl_ref, Gm_ref, cs = _reference(
        h.model, h.logits, h.mu, h.pol, h.x, h.y, h.idx, h.mags, h.xv, h.yv, 0.1, clip, 1e-3, joint=True
    )
    assert min(cs) < 1.0
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(Gl, Gl_ref, atol=1e-12) and Gl.abs().max() > 0
    assert torch.allclose(Gm, Gm_ref, atol=1e-12)


class _Quiet:
    def step(self, **kw):
        pass

    def checkpoint(self, **kw):
        pass


class _NoSched:
    def step(self):
        pass


def test_retrain_step_averages_clipped_group_gradients():
    """The re-training step's model gradient is the mean over B_aug groups (one augmentation per
    group, same N_t images) of each group's gradient clipped to ``clip``."""
    from fulcra_plugins.slack.common import MethodAugment, channel_mean
    from fulcra_plugins.slack.models import SmallCNN

    torch.manual_seed(0)
    X = torch.randint(0, 256, (24, 3, 12, 12), dtype=torch.uint8)
    Y = torch.randint(0, 4, (24,))
    model = SmallCNN(num_classes=4, width=4).double()
    s = Slack(ops=["identity", "rotate", "invert", "cutout"], b_aug=3, batch_size=8, clip=0.3)
    pol = s.initial_policy()
    aug = MethodAugment(pol, pol.augmenter(), flip=True, cutout_last=True, fill=channel_mean(X))
    x_aug, y_aug, *_ = s._group_batch(pol, aug, X, Y, 0, (2, 0, 5), torch.device("cpu"))
    assert x_aug.shape[0] == 3 * 8 and torch.equal(y_aug[:8], y_aug[8:16])
    x_aug = x_aug.double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    grads = [torch.autograd.grad(ce(model(xg), yg), params) for xg, yg in zip(x_aug.chunk(3), y_aug.chunk(3))]
    cs = [_clip(g, 0.3) for g in grads]
    assert min(cs) < 1.0
    ref = [sum(c * g[i] for c, g in zip(cs, grads)) / 3 for i in range(len(params))]
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    class _Double:  # the step's augmenter, in float64
        def __call__(self, *a):
            return aug(*a).double()

    s._retrain_step(model, opt, _NoSched(), pol, _Double(), X, Y, 0, (2, 0, 5), torch.device("cpu"))
    for p, r in zip(model.parameters(), ref):
        assert torch.allclose(p.grad, r, atol=1e-10)


def test_upper_optimizer_is_rebuilt_at_every_anchor(tmp_path, monkeypatch):
    """The official code resets the policy optimiser (its momentum) whenever the anchor moves: one
    policy optimiser per round, plus the initial one."""
    from fulcra.interfaces import RunContext
    from fulcra_plugins.data import Digits
    from fulcra_plugins.slack.models import SmallCNN

    built = []
    real = torch.optim.SGD

    class Counting(real):
        def __init__(self, params, *a, **kw):
            params = list(params)
            if isinstance(params[0], dict) and len(params) == 2:  # π and μ groups: the policy optimiser
                built.append(1)
            super().__init__(params, *a, **kw)

    monkeypatch.setattr(torch.optim, "SGD", Counting)
    sp = Digits(size=12, seed=0).splits()
    s = Slack(space="cifar", pretrain_steps=2, rounds=3, retrain_steps=1, unrolled_steps=2, batch_size=8, b_aug=2)
    s.search(
        sp["train"],
        sp["val"],
        lambda: SmallCNN(num_classes=10, width=4),
        RunContext(out=tmp_path, device=torch.device("cpu"), hooks=_Quiet()),
    )
    assert len(built) == 1 + 3


def test_grouped_search_steps_are_deterministic():
    """Same seed, same groups, same clipped steps: two runs of a search step give equal weights."""
    from fulcra_plugins.slack.common import MethodAugment, channel_mean
    from fulcra_plugins.slack.models import SmallCNN

    X = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = SmallCNN(num_classes=10, width=4)
        s = Slack(space="cifar", b_aug=2, batch_size=8)
        pol = s.initial_policy()
        aug = MethodAugment(pol, pol.augmenter(), flip=True, cutout_last=True, fill=channel_mean(X))
        logits, mu = pol.logits.clone().requires_grad_(True), pol.mu.clone().requires_grad_(True)
        upper = torch.optim.SGD([logits, mu], lr=1.0, momentum=0.9)
        opt, sched = s._lower_opt(model, 10)
        s._retrain_step(model, opt, sched, pol, aug, X, Y, 0, (2, 0, 0), torch.device("cpu"))
        s._bilevel_step(
            model, opt, sched, pol, pol, aug, logits, mu, logits.detach().clone(), upper,
            X, Y, X, Y, 0, (3, 0, 1), 0.1, torch.device("cpu"), 1,
        )  # fmt: skip
        outs.append((logits.detach().clone(), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))
    assert not torch.equal(outs[0][0], Policy.uniform(s.ops, 3).logits)


def test_mu_is_clamped_to_the_official_bounds_after_a_policy_step():
    """μ ∈ [0.1, 1] after every policy step (official ``clip_m``; fulcra had [0.01, 1])."""
    from fulcra_plugins.slack.common import MethodAugment, channel_mean
    from fulcra_plugins.slack.models import SmallCNN

    X = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, width=4)
    s = Slack(space="cifar", b_aug=2, batch_size=8)
    pol = s.initial_policy()
    aug = MethodAugment(pol, pol.augmenter(), flip=False, cutout_last=True, fill=channel_mean(X))
    logits = pol.logits.clone().requires_grad_(True)
    mu = torch.where(torch.arange(len(s.ops)) % 2 == 0, 0.02, 2.0).requires_grad_(True)
    upper = torch.optim.SGD([logits, mu], lr=1e-6)
    opt, sched = s._lower_opt(model, 10)
    cur = Policy(s.ops, logits.detach(), mu.detach().clamp(0.1, 1), pol.ranges)
    s._bilevel_step(
        model, opt, sched, pol, cur, aug, logits, mu, logits.detach().clone(), upper,
        X, Y, X, Y, 0, (3, 0, 1), 0.1, torch.device("cpu"), 1,
    )  # fmt: skip
    assert float(mu.detach().min()) == pytest.approx(0.1) and float(mu.detach().max()) == pytest.approx(1.0)
