"""A small hypergradient problem shared by the hypergradient tests (float64, fixed seeds)."""

from types import SimpleNamespace

import pytest
import torch

from fulcra.policy import Policy
from fulcra_plugins.slack.models import SmallCNN


@pytest.fixture
def hyper_problem() -> SimpleNamespace:
    """SmallCNN, a uniform 2-stage policy over 4 ops, 3 sampled augmentations × 5 training images,
    6 validation images; everything float64 so the references agree to ~1e-12."""
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
    return SimpleNamespace(
        model=model,
        pol=pol,
        logits=logits,
        mu=mu,
        n_aug=n_aug,
        n_t=n_t,
        idx=idx,
        mags=mags.double(),
        x=x,
        y=y,
        xv=xv,
        yv=yv,
    )
