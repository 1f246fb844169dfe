"""A third party's backbone (tests/example_plugin, ``patch_mixer``) works wherever fulcra names a
backbone: conformance, a probed teacher and a student in the distill workflow, the dense ``vit``
extractor, the listing, and the registry's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli backport
    import tomli as tomllib
import torch

import fulcra
from fulcra.testing import check_plugin, fake_distribution

EXAMPLE = Path(__file__).resolve().parents[1] / "example_plugin"


@pytest.fixture
def example(tmp_path):
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    src = EXAMPLE / "src"
    modules = {str(p.relative_to(src)): p.read_text() for p in src.rglob("*.py")}
    with fake_distribution(tmp_path / "site", "fulcra-example", meta["project"]["entry-points"], modules) as root:
        yield root


def test_listed_and_conformant(example):
    row = {r["name"]: r for r in fulcra.status("backbones")}["patch_mixer"]
    assert row["distribution"] == "fulcra-example" and row["available"]
    bb = check_plugin("backbones", "patch_mixer", tiny=True)  # includes the weights round trip
    assert (bb.embed_dim, bb.patch_size) == (16, 4)
    check_plugin("backbones", "patch_mixer", width=8, depth=3, patch_size=2, pretrained=False)


def test_registry_errors_name_the_backbone(example, tmp_path, monkeypatch):
    from fulcra.errors import ConfigError, UnknownPluginError, WeightsNotFoundError

    with pytest.raises(
        UnknownPluginError,
        match=r"^teachers plugin 'probed': unknown backbones plugin 'patch_mixr'; did you mean 'patch_mixer'",
    ):
        fulcra.create("teachers", "probed", backbone="patch_mixr", tiny=True, image_size=28)
    with pytest.raises(
        ConfigError,
        match=r"^students plugin 'vit_small': backbones plugin 'patch_mixer': unknown key 'widht'.*did you mean 'width'",
    ):
        fulcra.create("students", "vit_small", backbone={"name": "patch_mixer", "widht": 8}, tiny=True, image_size=28)
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=rf"backbone 'patch_mixer'.*patch_mixer.safetensors.*{tmp_path}"):
        fulcra.create("teachers", "probed", backbone="patch_mixer", image_size=28)


def test_teacher_and_student_on_it(example):
    teacher = fulcra.create(
        "teachers",
        "probed",
        backbone={"name": "patch_mixer", "width": 24},
        tiny=True,
        n_cls=2,
        num_classes=3,
        image_size=28,
    )
    assert teacher.backbone.embed_dim == 12 and teacher.n_in == 24
    x = torch.rand(2, 3, 40, 40)
    assert teacher(teacher.prepare(x)).shape == (2, 3)
    # the teacher normalises with the backbone's own normalize (mean 0.5, std 0.25)
    prepared = teacher.prepare(torch.full((1, 3, 28, 28), 0.75))
    torch.testing.assert_close(prepared, torch.ones_like(prepared))
    student = fulcra.create(
        "students",
        "vit_small",
        backbone="patch_mixer",
        tiny=True,
        pretrained=False,
        num_classes=3,
        task="segmentation",
        image_size=28,
    )
    out = student(student.prepare(x))
    assert out.shape == (2, 3, 28, 28)
    out.sum().backward()
    assert student.backbone.embed.weight.grad is not None  # trained end to end


def test_distill_digits_with_it_as_teacher_and_student(example, tmp_path):
    from fulcra.runner import run

    out = tmp_path / "kd"
    res = run(
        "distill-digits",
        [
            f"out={out}",
            "teacher.backbone=patch_mixer",
            "student.backbone=patch_mixer",
            "student.backbone.width=16",
            "data.size=16",
            "data.val_fraction=0.45",
            "data.test_fraction=0.4",
            "teacher.image_size=16",
            "student.image_size=16",
            "seeds=[0]",
            "pretrain.epochs=1",
            "pretrain.student_epochs=1",
            "probe.epochs=1",
            "train.epochs=1",
            "synthetic.factor=0.1",
            "synthetic.batch_size=64",
            "plots=false",
            "student_seeds=[0]",
            "search.enabled=false",
            "rows=[teacher_probed,student_alone,student_finetuned,distilled,distilled_synthetic]",
        ],
        hooks=[],
    )
    assert set(res["rows"]) == {
        "teacher_probed",
        "student_alone",
        "student_finetuned",
        "distilled",
        "distilled_synthetic",
    }
    assert all(0.0 <= r["mean"] <= 1.0 for r in res["rows"].values())
    # the encoders pre-trained offline are patch_mixer state dicts (the teacher tiny: width 16)
    from safetensors.torch import load_file

    teacher_sd = load_file(str(next((out / "pretrain_cache").glob("teacher-*.safetensors"))))
    assert teacher_sd["embed.weight"].shape == (16, 3, 4, 4) and "blocks.1.mlp.0.weight" in teacher_sd
    student_sd = load_file(str(next((out / "pretrain_cache").glob("student-*.safetensors"))))
    assert student_sd["embed.weight"].shape == (8, 3, 4, 4)
    meta = json.loads(next((out / "feature_cache").rglob("meta.json")).read_text())
    assert "patch_mixer" in json.dumps(meta)


def test_dense_vit_extractor_on_it(example, tmp_path):
    params = {
        "backbone": "patch_mixer",
        "tiny": True,
        "n_components": 3,
        "resolution": 24,
        "crop_size": 16,
        "stride": 8,
    }
    ext = check_plugin("feature_extractors", "vit", **params)
    maps = ext(torch.rand(1, 3, 24, 36))
    assert maps.shape == (1, 3, 24, 36)
    # a node with the backbone's own keys, and the per-view cache keyed by the node
    node = {**params, "backbone": {"name": "patch_mixer", "width": 8}, "cache_dir": str(tmp_path / "cache")}
    ext = fulcra.create("feature_extractors", "vit", **node)
    assert ext.embed_dim == 4 and json.loads(ext.cache_params()["backbone"]) == {"name": "patch_mixer", "width": 8}
    views = [torch.rand(3, 24, 24) for _ in range(3)]
    ext.fit(views)
    first = ext(views[0][None])
    again = fulcra.create("feature_extractors", "vit", **node).fit(views)(views[0][None])
    torch.testing.assert_close(first, again)


def test_uplift_command_line_with_it(example, tmp_path):
    from safetensors.torch import load_file

    from fulcra.cli import main
    from fulcra_plugins.scenes.synthetic import generate_scene

    scene = generate_scene(tmp_path / "scene", seed=5, width=32, height=24, n_ring=3, n_forward=0, density=0.1)
    out = tmp_path / "up"
    assert (
        main(
            [
                "run",
                "uplift",
                f"scene.ply={scene / 'point_cloud.ply'}",
                f"scene.cameras={scene / 'cameras.json'}",
                f"scene.images={scene / 'images'}",
                "scene.backend=torch",
                "extractor=vit",
                "extractor.backbone=patch_mixer",
                "extractor.backbone.width=8",
                "extractor.tiny=true",
                "extractor.n_components=3",
                "extractor.resolution=24",
                "extractor.crop_size=16",
                "extractor.stride=8",
                "check_views=0",
                f"out={out}",
                "hooks=[]",
            ]
        )
        == 0
    )
    assert load_file(str(out / "features.safetensors"))["features"].shape[1] == 3
