"""Heads, probed teachers, students, augmentation and the segmentation task."""

import math

import numpy as np
import pytest
import torch

from fulcra.errors import ConfigError
from fulcra_plugins.distill.augment import augment_batch, mixup
from fulcra_plugins.distill.heads import ClassificationHead, cls_features, hidden_size
from fulcra_plugins.distill.students import ResNetStudent, TimmStudent, VitStudent
from fulcra_plugins.distill.teachers import ProbedSegTeacher, ProbedTeacher
from fulcra_plugins.tasks.segmentation import SemanticSegmentation


def test_hidden_size_rule_b14():
    # app. B.1.4: n_hidden = n_in for ViT-S, sqrt(n_in * n_out) for ViT-L/g
    assert hidden_size(384 * 3, 200, 384) == 1152
    assert hidden_size(1536 * 3, 200, 1536) == round(math.sqrt(1536 * 3 * 200))
    assert hidden_size(10, 4, 384, "sqrt") == round(math.sqrt(40))
    with pytest.raises(ConfigError):
        hidden_size(1, 1, 1, "cube")


def test_cls_features_concatenation():
    tok = {
        "cls": [torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)],
        "patch": torch.arange(2 * 3 * 4.0).view(2, 3, 2, 2),
    }
    f = cls_features(tok, avgpool=True)
    assert f.shape == (2, 9)
    torch.testing.assert_close(f[:, 6:], tok["patch"].mean(dim=(2, 3)))
    assert isinstance(ClassificationHead(9, 4, "linear").net, torch.nn.Linear)


def test_probed_teacher_trains_only_its_head():
    t = ProbedTeacher("dinov2_vitb14", tiny=True, num_classes=7, n_cls=2, avgpool=True, image_size=28)
    assert t.n_in == 96 * 3
    names = [n for n, _ in t.named_parameters()]
    assert names and all(n.startswith("head.") for n in names)
    assert all(k.startswith("head.") for k in t.state_dict())
    x = t.prepare(torch.rand(3, 3, 20, 20))
    assert x.shape == (3, 3, 28, 28)
    out = t(x)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is None for p in t.backbone.parameters())
    t.train()
    assert not t.backbone.training  # frozen encoder stays in eval mode
    t.double()
    assert next(t.backbone.parameters()).dtype == torch.float64  # .to() reaches the unregistered encoder
    with pytest.raises(ConfigError):
        ProbedTeacher("dinov2_vits14", tiny=True, image_size=30)


def test_probed_seg_teacher_dinov2_linear_protocol():
    t = ProbedSegTeacher("dinov2_vits14_reg", tiny=True, num_classes=5, image_size=42)
    x = t.prepare(torch.rand(2, 3, 42, 42))
    assert t.encode(x).shape == (2, 48, 3, 3)
    assert t(x).shape == (2, 5, 42, 42)
    assert isinstance(t.head.bn, torch.nn.BatchNorm2d) and t.head.conv.kernel_size == (1, 1)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_vit_student(task):
    s = VitStudent(tiny=True, pretrained=False, num_classes=4, task=task, image_size=28)
    x = s.prepare(torch.rand(2, 3, 16, 16))
    out = s(x)
    assert out.shape == ((2, 4) if task == "classification" else (2, 4, 28, 28))
    assert any(n.startswith("backbone.") for n, _ in s.named_parameters())  # trained end to end


def test_cnn_students():
    r = ResNetStudent(num_classes=3, arch="resnet18", small_input=True)
    x = torch.rand(2, 3, 16, 16)
    assert r(r.prepare(x)).shape == (2, 3) and r.features(r.prepare(x)).shape == (2, 512)
    m = TimmStudent("resnet10t", num_classes=3)
    assert m(m.prepare(x)).shape == (2, 3)
    with pytest.raises(ConfigError, match="did you mean"):
        TimmStudent("resnet10x", num_classes=3)


def test_augment_deterministic_for_a_generator_and_labels_follow():
    x = torch.rand(4, 3, 16, 16)
    lab = (torch.arange(16)[None, :, None] // 4).expand(4, 16, 16).clone()  # horizontal bands 0..3
    img = (lab.float() / 3.0)[:, None].expand(4, 3, 16, 16).clone()
    a, la = augment_batch(img, lab, "random", torch.Generator().manual_seed(0), jitter=0.0)
    b, lb = augment_batch(img, lab, "random", torch.Generator().manual_seed(0), jitter=0.0)
    torch.testing.assert_close(a, b)
    assert torch.equal(la, lb) and la.dtype == torch.long
    # band labels and band intensities stay aligned after the warp (nearest vs bilinear: allow edges)
    agree = (torch.round(a[:, 0] * 3).long() == la).float().mean()
    assert agree > 0.8
    same, _ = augment_batch(x, None, "deterministic", None)
    assert same is x


def test_mixup_lam_and_permutation():
    x = torch.rand(8, 3, 4, 4)
    m, perm, lam = mixup(x, 0.2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(m, lam * x + (1 - lam) * x[perm])
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))


def test_segmentation_miou_against_reference():
    task = SemanticSegmentation(ignore_index=255)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    y = torch.randint(0, 4, (2, 6, 6), generator=g)
    y[0, 0] = 255
    batch = [task.metric(logits[:1], y[:1]), task.metric(logits[1:], y[1:])]
    res = task.reduce(batch)
    pred, t = logits.argmax(1).numpy(), y.numpy()
    valid = t != 255
    ious = []
    for c in range(4):
        inter = np.sum((pred == c) & (t == c) & valid)
        union = np.sum(((pred == c) | (t == c)) & valid)
        if union:
            ious.append(inter / union)
    assert res["miou"] == pytest.approx(float(np.mean(ious)))
    loss = task.loss(logits, y)
    ref = torch.nn.functional.cross_entropy(logits, y, ignore_index=255)
    torch.testing.assert_close(loss, ref)
    # logits at a lower resolution are resized to the labels
    assert task.loss(logits[:, :, :3, :3], y).ndim == 0
