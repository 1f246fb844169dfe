"""The layerwise hypergradient's two conv paths (per-group weight gradients; linear conv forward
with v when the per-group gradients would not fit GROUP_GRAD_BYTES) agree."""

import torch

import fulcra_plugins.slack.layerwise as L
from fulcra.policy import Policy
from fulcra_plugins.slack.models import SmallCNN


def test_group_weight_gradients_equal_linear_forward(monkeypatch):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=4).double()
    pol = Policy.uniform(["identity", "rotate", "invert", "cutout"], 2)
    logits = torch.randn(2, 4, dtype=torch.float64).requires_grad_(True)
    mu = torch.tensor([0.7, 0.5, 0.9, 0.3], dtype=torch.float64).requires_grad_(True)
    n_aug, n_t = 3, 5
    idx, mags = pol.sample(n_aug, torch.Generator().manual_seed(1))
    x = torch.randn(n_aug * n_t, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (n_aug * n_t,))
    xv, yv = torch.randn(6, 3, 12, 12, dtype=torch.float64), torch.randint(0, 4, (6,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    outs = []
    for budget in (L.GROUP_GRAD_BYTES, 0):
        monkeypatch.setattr(L, "GROUP_GRAD_BYTES", budget)
        model.load_state_dict(state)
        outs.append(L.layerwise_hypergradient(model, pol, logits, mu, x, y, idx, mags.double(), xv, yv, 0.1))
    (g1, l1, m1, *_), (g0, l0, m0, *_) = outs
    for a, b in zip(g1, g0):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(l1, l0, atol=1e-12) and l1.abs().max() > 0
    assert torch.allclose(m1, m0, atol=1e-12)
