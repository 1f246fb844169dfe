"""End to end: the distill workflow on digits (classification) and digits_seg (segmentation),
its results table, and its resume after an interruption."""

import json

import numpy as np
import pytest

from fulcra.runner import run

TINY = [
    "data.size=16",
    "data.val_fraction=0.45",
    "data.test_fraction=0.4",
    "teacher.image_size=28",
    "student.image_size=28",
    "seeds=[0,1]",
    "pretrain.epochs=1",
    "pretrain.student_epochs=1",
    "probe.epochs=1",
    "train.epochs=1",
    "synthetic.factor=0.1",
    "synthetic.batch_size=64",
]


def test_distill_digits_table_and_resume(tmp_path):
    out = tmp_path / "run"
    res = run("distill-digits", [f"out={out}", *TINY], hooks=[])
    data = json.loads((out / "results.json").read_text())
    assert set(data["rows"]) == {
        "teacher_probed",
        "student_alone",
        "student_finetuned",
        "distilled",
        "distilled_synthetic",
    }
    for row in data["rows"].values():
        assert len(row["scores"]) == 2 and 0.0 <= row["mean"] <= 1.0 and row["ci95"] >= 0.0
        sd = float(np.std(row["scores"], ddof=1))
        assert row["sd196"] == pytest.approx(1.96 * sd)
    assert "± " in (out / "results.md").read_text() and res["metric"] == "accuracy"
    assert (out / "pca.png").is_file()
    assert json.loads((out / "synthetic" / "index.json").read_text())["mix_k"] == 2
    assert (out / "feature_cache" / "train" / "features.npy").is_file()

    # interrupt: the last row of the last seed lost its score and its checkpoint
    scores = json.loads((out / "scores.json").read_text())
    before = dict(scores)
    del scores["distilled_synthetic/1"]
    (out / "scores.json").write_text(json.dumps(scores))
    (out / "seed1" / "distilled_synthetic.ckpt").unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.ckpt")}
    run("distill-digits", [f"out={out}", *TINY], hooks=[])
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished rows were not retrained
    after = json.loads((out / "scores.json").read_text())
    assert after["distilled_synthetic/1"] == pytest.approx(before["distilled_synthetic/1"])  # deterministic rerun


def test_distill_segmentation(tmp_path):
    out = tmp_path / "seg"
    cfg = {
        "workflow": "distill",
        "out": str(out),
        "data": {"name": "digits_seg", "size": 28},
        "task": {"name": "semantic_segmentation"},
        "teacher": {"name": "probed_seg", "backbone": "dinov2_vits14", "tiny": True, "image_size": 28},
        "student": {
            "name": "vit_small",
            "backbone": "dinov2_vits14",
            "tiny": True,
            "pretrained": False,
            "task": "segmentation",
            "image_size": 28,
        },
        "generator": {"name": "cutmix"},
        "seeds": [0],
        "rows": ["teacher_probed", "student_alone", "distilled_synthetic"],
        "probe": {"epochs": 1, "batch_size": 32},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.001, "mixup": 0.0},
        "synthetic": {"factor": 0.05, "batch_size": 32},
    }
    res = run(cfg, [], hooks=[])
    assert res["metric"] == "miou"
    assert set(res["rows"]) == {"teacher_probed", "student_alone", "distilled_synthetic"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in res["rows"].values())


def test_missing_teacher_weights_fail_before_any_work(tmp_path, monkeypatch):
    from fulcra.errors import WeightsNotFoundError

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path / "none"))
    with pytest.raises(WeightsNotFoundError, match="dinov2_vitg14_reg4_pretrain.pth"):
        run({"workflow": "distill", "out": str(tmp_path / "o"), "generator": {"name": "mixup"}}, [], hooks=[])
    assert not (tmp_path / "o" / "synthetic").exists() and not (tmp_path / "o" / "seed0").exists()


class _Notes:
    def __init__(self):
        self.messages = []

    def fulcra_message(self, workflow, message):
        self.messages.append(message)


def test_rerun_with_another_option_recomputes_and_says_why(tmp_path):
    out = tmp_path / "kd"
    first = run("distill-digits", [f"out={out}", *TINY, "rows=[student_alone]", "seeds=[0]"], hooks=[])
    notes = _Notes()
    again = run("distill-digits", [f"out={out}", *TINY, "rows=[student_alone]", "seeds=[0]"], hooks=[notes])
    assert "reusing distill (same inputs as the stored result)" in notes.messages
    assert again["rows"] == first["rows"]
    notes = _Notes()
    run("distill-digits", [f"out={out}", *TINY, "rows=[student_alone]", "seeds=[0]", "train.lr=0.02"], hooks=[notes])
    line = next(m for m in notes.messages if m.startswith("recomputing distill"))
    assert "train.lr" in line and "-> 0.02" in line


def test_a_tiny_student_without_weights_has_no_pretrained_init():
    """With pre-training off, a tiny student without a weights file starts from random weights: the
    "finetuned" row must not claim a pretrained initialisation (issue 16)."""
    from fulcra_plugins.distill.workflow import DistillWorkflow

    has = DistillWorkflow._has_pretrained_init
    assert not has(None, {"name": "vit_small", "tiny": True})
    assert not has(None, {"name": "vit_small", "tiny": True, "pretrained": True})
    assert has(None, {"name": "vit_small", "tiny": True, "weights": "student.pt"})
    assert has(None, {"name": "vit_small"})  # full size, pretrained: its weights are looked up
    assert not has(None, {"name": "vit_small", "pretrained": False})


def test_dkd_with_synthetic_images_fails_before_any_work(tmp_path):
    """DKD needs class labels; synthetic images have none: refused in one line before anything is
    generated or trained (it used to skip them silently; issue 16)."""
    from fulcra.errors import ConfigError

    out = tmp_path / "o"
    with pytest.raises(ConfigError, match="DKD needs class labels"):
        run("distill-digits", [f"out={out}", *TINY, "rows=[distilled_synthetic]", "distill.loss=dkd"], hooks=[])
    assert not (out / "synthetic").exists() and not (out / "seed0").exists()
