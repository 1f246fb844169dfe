"""The layerwise hypergradient's two conv paths (per-group weight gradients; linear conv forward
with v when the per-group gradients would not fit GROUP_GRAD_BYTES) agree."""

import torch

import fulcra_plugins.slack.layerwise as L


def test_group_weight_gradients_equal_linear_forward(monkeypatch, hyper_problem):
    h = hyper_problem
    model, pol, logits, mu, x, y, idx, mags, xv, yv = (
        h.model,
        h.pol,
        h.logits,
        h.mu,
        h.x,
        h.y,
        h.idx,
        h.mags,
        h.xv,
        h.yv,
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    outs = []
    for budget in (L.GROUP_GRAD_BYTES, 0):
        monkeypatch.setattr(L, "GROUP_GRAD_BYTES", budget)
        model.load_state_dict(state)
        outs.append(L.layerwise_hypergradient(model, pol, logits, mu, x, y, idx, mags, xv, yv, 0.1))
    (g1, l1, m1, *_), (g0, l0, m0, *_) = outs
    for a, b in zip(g1, g0):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(l1, l0, atol=1e-12) and l1.abs().max() > 0
    assert torch.allclose(m1, m0, atol=1e-12)
