"""Distillation losses against their formulas, written out element by element."""

import math

import pytest
import torch

from fulcra_plugins.distill.losses import combine, distill_loss, dkd_loss, hard_kd_loss, kd_loss


def _kd_reference(s, t, T):
    # T^2 * mean_i sum_k p_t log(p_t / p_s), with p = softmax(logits / T), in float64 loops
    total = 0.0
    for i in range(s.shape[0]):
        zs = [math.exp(v / T) for v in s[i].tolist()]
        zt = [math.exp(v / T) for v in t[i].tolist()]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return T * T * total / s.shape[0]


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_matches_formula_with_t_squared(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    assert kd_loss(s, t, T).item() == pytest.approx(_kd_reference(s, t, T), rel=1e-5)
    # T^2 scaling: same KL, explicit factor
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), log_target=True, reduction="batchmean"
    )
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl.item(), rel=1e-5)


def test_kd_zero_iff_equal_and_gradient_only_to_student():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    assert kd_loss(s, s.detach()).item() == pytest.approx(0.0, abs=1e-6)
    kd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_kd_segmentation_is_per_pixel_mean_with_mask():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    per_pixel = torch.stack(
        [kd_loss(s[b, :, i, j][None], t[b, :, i, j][None]) for b in range(2) for i in range(3) for j in range(4)]
    )
    assert kd_loss(s, t).item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    mask = torch.rand(2, 3, 4, generator=g) > 0.5
    expected = per_pixel[mask.reshape(-1)].mean()
    assert kd_loss(s, t, mask=mask).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hard_label_kd_is_ce_to_teacher_argmax():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    ref = torch.nn.functional.cross_entropy(s, t.argmax(1))
    assert hard_kd_loss(s, t).item() == pytest.approx(ref.item(), rel=1e-6)


def test_dkd_matches_decomposition():
    g = torch.Generator().manual_seed(2)
    s, t, y = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.tensor([0, 3, 4])
    T, a, b = 4.0, 1.0, 8.0
    ref = 0.0
    for i in range(3):
        ps = torch.softmax(s[i] / T, 0).double()
        pt = torch.softmax(t[i] / T, 0).double()
        k = int(y[i])
        bs, bt = torch.stack([ps[k], 1 - ps[k]]), torch.stack([pt[k], 1 - pt[k]])
        tckd = (bt * (bt / bs).log()).sum()
        keep = [j for j in range(5) if j != k]
        ns, nt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd = (nt * (nt / ns).log()).sum()
        ref += T * T * (a * tckd + b * nckd)
    assert dkd_loss(s, t, y).item() == pytest.approx(ref.item() / 3, rel=1e-4)
    assert distill_loss("dkd", s, t, labels=y).item() == pytest.approx(ref.item() / 3, rel=1e-4)


def test_combine_eq_4_2():
    assert combine(torch.tensor(2.0), torch.tensor(4.0), 0.5).item() == 3.0
    assert combine(torch.tensor(2.0), torch.tensor(4.0), 0.0).item() == 2.0
    with pytest.raises(ValueError):
        distill_loss("nope", torch.zeros(1, 2), torch.zeros(1, 2))


def _crd_reference(zs, zt, tau):
    # ½ (mean_i -log softmax_j(zs_i·zt_j/τ)[i] + mean_j -log softmax_i(zs_i·zt_j/τ)[j]), float64 loops
    n = zs.shape[0]
    sim = [[float(zs[i].double() @ zt[j].double()) / tau for j in range(n)] for i in range(n)]
    rows = sum(-sim[i][i] + math.log(sum(math.exp(v) for v in sim[i])) for i in range(n)) / n
    cols = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (rows + cols)


def test_crd_matches_its_formula_and_rewards_aligned_embeddings():
    from fulcra_plugins.distill.losses import CRDEmbed, crd_loss

    g = torch.Generator().manual_seed(0)
    zs = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    zt = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    assert float(crd_loss(zs, zt, 0.5)) == pytest.approx(_crd_reference(zs, zt, 0.5), rel=1e-5)
    assert float(crd_loss(zs, zs, 0.5)) < float(crd_loss(zs, zs[[1, 2, 3, 4, 5, 0]], 0.5))
    # the embedding heads: the teacher's features are detached, both heads learn
    embed = CRDEmbed(5, 7, dim=3)
    fs, ft = torch.randn(4, 5, requires_grad=True), torch.randn(4, 7, requires_grad=True)
    a, b = embed(fs, ft)
    assert a.shape == b.shape == (4, 3) and torch.allclose(a.norm(dim=-1), torch.ones(4))
    crd_loss(a, b).backward()
    assert fs.grad is not None and ft.grad is None
    assert embed.student.weight.grad.abs().sum() > 0 and embed.teacher.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        crd_loss(zs, zt[:3])
    # distill_loss("crd") is its KD part on logits (the workflow adds β·CRD on features)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(distill_loss("crd", s, t, temperature=2.0), kd_loss(s, t, 2.0))
