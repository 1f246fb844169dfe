"""The offline stand-in encoders: NT-Xent against a slow reference, label-free by construction,
cached atomically under a key of their whole configuration, and the student's feature distillation."""

import math

import pytest
import torch

from fulcra.backbone import create_backbone
from fulcra_plugins.distill import pretrain as pt


def _nt_xent_reference(z, tau):
    z = [torch.nn.functional.normalize(r.double(), dim=0) for r in z]
    n, total = len(z), 0.0
    for i in range(n):
        j = (i + n // 2) % n
        sims = {k: float(z[i] @ z[k]) / tau for k in range(n) if k != i}
        total += -sims[j] + math.log(sum(math.exp(v) for v in sims.values()))
    return total / n


def test_nt_xent_matches_its_formula_and_prefers_matched_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    assert float(pt.nt_xent(z, 0.3)) == pytest.approx(_nt_xent_reference(z, 0.3), rel=1e-5)
    a = torch.randn(4, 5, generator=g)
    matched = torch.cat([a, a + 0.01 * torch.randn(4, 5, generator=g)])
    assert float(pt.nt_xent(matched, 0.2)) < float(pt.nt_xent(torch.cat([a, a[[1, 2, 3, 0]]]), 0.2))
    with pytest.raises(ValueError, match="even"):
        pt.nt_xent(z[:5])


def _images(n=32, seed=0):
    return (torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


CFG = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.05, "temperature": 0.2, "image_size": 28, "seed": 0}
AUG = {"scale": (0.3, 1.0), "jitter": 0.4, "flip": False}


def _teacher(cache, images, **over):
    bb = create_backbone("dinov2_vits14", tiny=True, pretrained=True)
    return pt.pretrain_teacher_encoder(
        bb, images, spec={"backbone": "dinov2_vits14", "tiny": True}, cfg={**CFG, **over}, aug=AUG,
        cache_dir=cache, device=torch.device("cpu"),
    )  # fmt: skip


def test_teacher_encoder_is_cached_by_its_config_and_written_atomically(tmp_path, monkeypatch):
    images = _images()
    path, info = _teacher(tmp_path, images)
    assert path.is_file() and not info["cached"] and info["labels"] is False and info["images"] == 32
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.ckpt"))
    before = path.read_bytes()

    def no_training(*a, **k):
        raise AssertionError("a cached encoder was trained again")

    monkeypatch.setattr(pt, "_train", no_training)
    again, info2 = _teacher(tmp_path, images)
    assert again == path and info2["cached"] and again.read_bytes() == before
    # another schedule or other images: another key, trained anew
    with pytest.raises(AssertionError, match="trained again"):
        _teacher(tmp_path, images, epochs=2)
    with pytest.raises(AssertionError, match="trained again"):
        _teacher(tmp_path, _images(seed=1))


def test_teacher_pretraining_moves_the_weights_and_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    images = _images()
    a, _ = _teacher(tmp_path / "a", images)
    b, _ = _teacher(tmp_path / "b", images)
    wa, wb = load_file(str(a)), load_file(str(b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    torch.manual_seed(0)
    init = create_backbone("dinov2_vits14", tiny=True, pretrained=True).state_dict()
    assert max(float((wa[k] - init[k]).abs().max()) for k in wa) > 1e-4


def test_student_feature_distillation_brings_it_closer_to_the_teacher(tmp_path):
    images = _images(48)
    t_path, t_info = _teacher(tmp_path, images)
    teacher = create_backbone("dinov2_vits14", weights=str(t_path), tiny=True)
    torch.manual_seed(3)
    student = create_backbone("dinov2_vits14", tiny=True, pretrained=True)
    cfg = {**CFG, "epochs": 6, "lr": 3e-3, "teacher_image_size": 28}
    path, info = pt.distill_student_encoder(
        student, teacher, images, spec={"backbone": "dinov2_vits14", "teacher": t_info["key"]}, cfg=cfg, aug=AUG,
        cache_dir=tmp_path, device=torch.device("cpu"),
    )  # fmt: skip
    assert path.name.startswith("student-") and info["labels"] is False

    def r2(s, t):  # how much of the teacher's patch tokens an affine map of the student's explains
        s = torch.cat([s, torch.ones(len(s), 1)], 1)
        res = ((s @ torch.linalg.lstsq(s, t).solution - t) ** 2).sum()
        return 1 - float(res / ((t - t.mean(0)) ** 2).sum())

    x01 = torch.nn.functional.interpolate(images.float() / 255, size=28, mode="bilinear")

    def patches(bb):
        with torch.no_grad():
            p = bb.forward_tokens(bb.normalize(x01))["patch"]
        return p.flatten(2).transpose(1, 2).reshape(-1, p.shape[1])

    torch.manual_seed(3)
    fresh = create_backbone("dinov2_vits14", tiny=True, pretrained=True)
    trained = create_backbone("dinov2_vits14", weights=str(path), tiny=True)
    ft = patches(teacher)
    assert r2(patches(trained), ft) > r2(patches(fresh), ft) + 0.03
