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
    "student_seeds=[0]",
    "search.lr=[0.001]",
    "search.probe_lr=[0.001]",
]


def test_distill_digits_table_and_resume(tmp_path):
    from fulcra_plugins.distill.workflow import ROWS

    out = tmp_path / "run"
    res = run("distill-digits", [f"out={out}", *TINY], hooks=[])
    data = json.loads((out / "results.json").read_text())
    assert set(data["rows"]) == set(ROWS)
    for name, row in data["rows"].items():
        assert len(row["scores"]) == 2 and 0.0 <= row["mean"] <= 1.0 and row["ci95"] >= 0.0
        sd = float(np.std(row["scores"], ddof=1))
        assert row["sd196"] == pytest.approx(1.96 * sd)
        assert row["runs"] == (["0/0", "1/0"] if name.startswith("distilled") else ["0", "1"])
    # what each encoder saw, stated: no labels, the objective, the data and the epochs
    teacher, student = data["encoders"]["teacher"], data["encoders"]["student"]
    assert teacher["labels"] is False and "NT-Xent" in teacher["objective"] and teacher["epochs"] == 1
    assert student["labels"] is False and "feature distillation" in student["objective"]
    from fulcra_plugins.data.digits import Digits

    n_train = len(Digits(size=16, val_fraction=0.45, test_fraction=0.4).splits()["train"])
    assert teacher["images"] == student["images"] == n_train
    table = (out / "results.md").read_text()
    assert "labels seen: False" in table and "(6a) distilled from finetuned teacher" in table
    assert [o["claim"][:12] for o in data["orderings"]] == ["distilled fr", "distilled fr", "distilled >="]
    assert set(data["search"]) == {
        "probe_student", "probe_teacher", "student_finetuned", "student_alone", "teacher_finetuned", "distilled",
        "distilled_from_finetuned",
    }  # fmt: skip
    assert res["metric"] == "accuracy"
    assert (out / "pca.png").is_file()
    assert json.loads((out / "synthetic" / "index.json").read_text())["mix_k"] == 2
    assert (out / "feature_cache" / "train" / "features.npy").is_file()
    assert (out / "feature_cache" / "student_train" / "features.npy").is_file()

    # interrupt: the last row of the last teacher lost its score and its checkpoint
    scores = json.loads((out / "scores.json").read_text())
    before = dict(scores)
    del scores["distilled_from_finetuned_synthetic/1/0"]
    (out / "scores.json").write_text(json.dumps(scores))
    (out / "seed1" / "distilled_from_finetuned_synthetic.ckpt").unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("seed*/*.ckpt")}
    encoders = {p: p.stat().st_mtime_ns for p in (out / "pretrain_cache").glob("*.safetensors")}
    run("distill-digits", [f"out={out}", *TINY], hooks=[])
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished rows were not retrained
    assert all(p.stat().st_mtime_ns == t for p, t in encoders.items())  # nor the cached encoders
    after = json.loads((out / "scores.json").read_text())
    key = "distilled_from_finetuned_synthetic/1/0"
    assert after[key] == pytest.approx(before[key])  # deterministic rerun


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
    assert not (tmp_path / "o").exists()  # checked before out= is created


def test_missing_dataset_root_leaves_no_folder(tmp_path):
    from fulcra.errors import DataNotFoundError

    cfg = {
        "workflow": "distill",
        "out": str(tmp_path / "o"),
        "data": {"name": "domainnet", "root": str(tmp_path / "nope")},
    }
    with pytest.raises(DataNotFoundError):
        run(cfg, [], hooks=[])
    assert not (tmp_path / "o").exists()


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


def test_hyperparameters_are_chosen_on_val_and_never_on_test(tmp_path, monkeypatch):
    from fulcra.errors import ConfigError
    from fulcra_plugins.distill import workflow

    seen = []
    real = workflow.evaluate

    def spy(model, dataset, task, device, **kw):
        seen.append(len(dataset))
        return real(model, dataset, task, device, **kw)

    monkeypatch.setattr(workflow, "evaluate", spy)
    out = tmp_path / "s"
    grid = "search.lr=[0.0001,0.01]"
    res = run("distill-digits", [f"out={out}", *TINY, "rows=[student_alone]", "seeds=[0]", grid], hooks=[])
    from fulcra_plugins.data.digits import Digits

    splits = Digits(size=16, val_fraction=0.45, test_fraction=0.4).splits()
    n_val, n_test = len(splits["val"]), len(splits["test"])
    assert n_val != n_test and seen == [n_val, n_val, n_test]  # two grid points on val, then the table on test
    entry = json.loads((out / "search.json").read_text())["student_alone"]
    best = max(entry["grid"], key=lambda g: g["score"])
    assert entry["best"] == {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    assert res["search"]["student_alone"]["best"] == entry["best"]
    with pytest.raises(ConfigError, match="never chosen on the split the table reports"):
        run("distill-digits", [f"out={tmp_path / 't'}", *TINY, "search.split=test"], hooks=[])


def test_the_t_interval_is_an_option(tmp_path):
    out = tmp_path / "t"
    res = run("distill-digits", [f"out={out}", *TINY, "rows=[student_alone]", "interval=t"], hooks=[])
    row = res["rows"]["student_alone"]
    assert res["interval"] == "t" and row["ci95"] != pytest.approx(row["sd196"])
    assert f"± {100 * row['ci95']:.2f}" in res["table"] and "95% Student-t CI" in res["table"]


def test_crd_distillation_end_to_end(tmp_path):
    """distill.loss=crd (Table B.9): KD + β·CRD with its embedding heads; the distilled student's
    checkpoint (student + heads) still loads for the PCA plot."""
    out = tmp_path / "crd"
    res = run(
        "distill-digits",
        [f"out={out}", *TINY, "rows=[student_finetuned,distilled]", "seeds=[0]", "distill.loss=crd"],
        hooks=[],
    )
    assert set(res["rows"]) == {"student_finetuned", "distilled"} and (out / "pca.png").is_file()


def test_the_finetuned_teacher_and_the_probed_student_need_a_pretrained_encoder():
    """Rows 2b and 1a start from pretrained weights; a tiny encoder without a file is random, so
    "finetuning" or "probing" it would measure something else: those rows are skipped."""
    from fulcra_plugins.distill.workflow import DistillWorkflow

    wf = DistillWorkflow.__new__(DistillWorkflow)
    assert wf._finetune_node({"name": "probed", "tiny": True}) is None
    node = wf._finetune_node({"name": "probed", "tiny": True, "weights": "t.safetensors", "n_cls": 2})
    assert node["name"] == "vit_small" and node["weights"] == "t.safetensors" and node["n_cls"] == 2
    assert node["backbone"] == "dinov2_vitg14_reg" and node["task"] == "classification"
    assert wf._finetune_node({"name": "someone_elses_teacher"}) is None
    assert wf._student_probe_node({"name": "vit_small", "tiny": True}, "classification") is None
    probe = wf._student_probe_node({"name": "vit_small", "tiny": True, "weights": "s.pt"}, "classification")
    assert probe["name"] == "probed" and probe["weights"] == "s.pt" and probe["backbone"] == "dinov2_vits14"
    assert wf._student_probe_node({"name": "resnet50"}, "classification") is None


def test_the_student_encoder_does_not_depend_on_whether_the_teacher_was_cached(tmp_path):
    """The encoders' random init depends on pretrain.seed only: a cached teacher must give the same
    student encoder as a teacher trained in the same run (it drew from the RNG left by the
    teacher's training, so reruns with a cached teacher trained another student)."""
    import shutil

    args = [*TINY, "rows=[student_probed]", "seeds=[0]", "plots=false"]
    run("distill-digits", [f"out={tmp_path / 'a'}", f"pretrain.cache_dir={tmp_path / 'ca'}", *args], hooks=[])
    (tmp_path / "cb").mkdir()
    for p in (tmp_path / "ca").glob("teacher-*"):
        shutil.copy(p, tmp_path / "cb" / p.name)
    run("distill-digits", [f"out={tmp_path / 'b'}", f"pretrain.cache_dir={tmp_path / 'cb'}", *args], hooks=[])
    (a,) = (tmp_path / "ca").glob("student-*.safetensors")
    (b,) = (tmp_path / "cb").glob("student-*.safetensors")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_without_a_val_split_ten_percent_of_train_is_held_out():
    """§4.4.1: "in instances where no predefined validation set exists, we allocate 10% of the
    training set": disjoint, deterministic, and batches read through to the original items."""
    import torch

    from fulcra_plugins.data.digits import TensorImageDataset
    from fulcra_plugins.distill.workflow import _hold_out

    ds = TensorImageDataset(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 2, 2), torch.arange(50))
    train, val = _hold_out(ds, 0.1, seed=0)
    assert len(train) == 45 and len(val) == 5 and not set(train.idx) & set(val.idx)
    assert _hold_out(ds, 0.1, seed=0)[1].idx == val.idx
    x, y = val.get_batch([0, 1])
    assert y.tolist() == val.idx[:2] and x[:, 0, 0, 0].tolist() == val.idx[:2]


def test_training_images_without_an_in_memory_tensor_stay_lazy():
    """A dataset that decodes on access (a folder, a published layout) is never read whole: the
    synthetic set's sources, the real extra images and pre-training see a DatasetImages view."""
    import torch

    from fulcra.engine import DatasetImages
    from fulcra_plugins.data.digits import TensorImageDataset
    from fulcra_plugins.distill.pretrain import images_digest
    from fulcra_plugins.distill.workflow import _all_images, _hold_out

    imgs = (torch.rand(40, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    ds = TensorImageDataset(imgs, torch.arange(40))
    assert _all_images(ds) is ds.images  # held in memory already: used as it is
    train, _ = _hold_out(ds, 0.1, seed=0)
    view = _all_images(train)
    assert isinstance(view, DatasetImages) and view.shape == (36, 3, 6, 6)
    eager = imgs[torch.tensor(train.idx)]
    assert torch.equal(view[torch.tensor([35, 0, 7])], eager[[35, 0, 7]])
    assert images_digest(view) == images_digest(eager)  # pre-trained encoders keep their cache keys


def test_image_files_decoded_ahead_give_the_same_scores(tmp_path, capsys):
    """distill on an image folder (decoded as drawn): with decoding workers (probe cache, student
    training, evaluation, pre-training) the scores are those of the single-process run."""
    import sys
    from pathlib import Path

    pytest.importorskip("torchvision")
    sys.path.insert(0, str(Path(__file__).parent))
    from _digits_folder import write_digits_folder

    root = write_digits_folder(tmp_path / "png")
    args = [a for a in TINY if not a.startswith("data.")] + [
        f"data={{name: imagefolder, root: '{root}', size: 16, val_fraction: 0.3}}",
        "rows=[teacher_probed,student_alone,distilled]",
        "seeds=[0]",
        "search.enabled=false",
    ]
    run("distill-digits", [f"out={tmp_path / 'w0'}", *args, "data_workers=0"], hooks=[])
    assert "decode the coming batches" not in capsys.readouterr().out
    run("distill-digits", [f"out={tmp_path / 'w2'}", *args, "data_workers=2"], hooks=[])
    assert "data: 2 worker process(es) decode the coming batches" in capsys.readouterr().out
    s0, s2 = (json.loads((tmp_path / w / "scores.json").read_text()) for w in ("w0", "w2"))
    assert set(s0) == {"teacher_probed/0", "student_alone/0", "distilled/0/0"} and s0 == s2
    import torch

    for f in ("teacher_head.pt", "student_alone.ckpt", "distilled.ckpt"):  # the same weights, not just scores
        a, b = (torch.load(tmp_path / w / "seed0" / f, weights_only=True) for w in ("w0", "w2"))
        a, b = a.get("model", a), b.get("model", b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
