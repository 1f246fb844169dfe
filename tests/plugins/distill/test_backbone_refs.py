"""Teachers and students take any backbone: a bundled name, or a node naming a generic one with its
own keys; the distill workflow's fail-fast weight check goes through the backbone plugin."""

import pytest
import torch

from fulcra.errors import ConfigError, WeightsNotFoundError
from fulcra_plugins.distill.students import VitStudent
from fulcra_plugins.distill.teachers import ProbedSegTeacher, ProbedTeacher

TIMM = {"name": "timm", "arch": "vit_small_patch16_224"}


def test_teachers_on_generic_backbones():
    t = ProbedTeacher(TIMM, tiny=True, num_classes=4, n_cls=2, image_size=32)
    assert t.backbone_name == '{"arch": "vit_small_patch16_224", "name": "timm"}' and t.n_in == 48 * 2
    x = t.prepare(torch.rand(2, 3, 20, 20))
    assert x.shape == (2, 3, 32, 32) and t(x).shape == (2, 4)
    seg = ProbedSegTeacher({"name": "open_clip", "arch": "ViT-B-32"}, tiny=True, num_classes=3, image_size=64)
    assert seg(seg.prepare(torch.rand(1, 3, 64, 64))).shape == (1, 3, 64, 64)
    # CLIP normalisation comes from the backbone, not from ImageNet defaults
    torch.testing.assert_close(
        seg.prepare(torch.zeros(1, 3, 64, 64)), seg.backbone.normalize(torch.zeros(1, 3, 64, 64))
    )
    with pytest.raises(ConfigError, match=r"image_size 28 must be a multiple of the patch size 16"):
        ProbedTeacher(TIMM, tiny=True, image_size=28)
    with pytest.raises(ConfigError, match=r"n_cls=3 outside 1..2"):
        ProbedTeacher(TIMM, tiny=True, n_cls=3, image_size=32)


def test_student_on_a_generic_backbone_trains_it():
    s = VitStudent(TIMM, tiny=True, pretrained=False, num_classes=5, n_cls=2, image_size=32)
    out = s(s.prepare(torch.rand(2, 3, 32, 32)))
    out.sum().backward()
    assert out.shape == (2, 5) and s.backbone.model.patch_embed.proj.weight.grad is not None
    with pytest.raises(ConfigError, match=r"vit_small': n_cls=3 outside 1..2"):
        VitStudent(TIMM, tiny=True, pretrained=False, image_size=32)


def test_preflight_asks_the_backbone_for_its_file(tmp_path, monkeypatch):
    from fulcra.runner import run

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path / "none"))
    cfg = {
        "workflow": "distill",
        "out": str(tmp_path / "o"),
        "generator": {"name": "mixup"},
        "teacher": {"name": "probed", "backbone": TIMM},
    }
    with pytest.raises(
        WeightsNotFoundError, match=r"backbone 'timm' \(arch=vit_small_patch16_224\).*vit_small_patch16_224.safetensors"
    ):
        run(cfg, [], hooks=[])
    with pytest.raises(WeightsNotFoundError, match=r"nope.pth does not exist"):
        run({**cfg, "teacher": {**cfg["teacher"], "weights": str(tmp_path / "nope.pth")}}, [], hooks=[])
    assert not (tmp_path / "o" / "seed0").exists()


def test_misspelt_backbone_fails_before_any_work(tmp_path):
    from fulcra.errors import UnknownPluginError
    from fulcra.runner import run

    base = ["seeds=[0]", "data.size=16", "pretrain.epochs=1", "probe.epochs=1", "train.epochs=1"]
    with pytest.raises(ConfigError, match=r"backbones plugin 'timm': unknown key 'arhc'.*did you mean 'arch'"):
        run(
            "distill-digits",
            [f"out={tmp_path / 'a'}", *base, "teacher.backbone=timm", "teacher.backbone.arhc=vit_small_patch16_224"],
            hooks=[],
        )
    with pytest.raises(UnknownPluginError, match=r"'dinov2_vits15'.*did you mean 'dinov2_vits14'"):
        run("distill-digits", [f"out={tmp_path / 'b'}", *base, "student.backbone=dinov2_vits15"], hooks=[])
    assert not any((tmp_path / d / "synthetic").exists() or (tmp_path / d / "pretrain").exists() for d in "ab")
