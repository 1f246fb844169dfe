"""End to end: the distill workflow on a fake ADE20K in its published layout, trained with mmseg's
per-sample pipeline and evaluated with sliding windows (thesis app. B.1.3), images of varied sizes."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fulcra.runner import run

PIL = pytest.importorskip("PIL")


def _fake_ade(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, n in (("training", 10), ("validation", 3)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
        for i in range(n):
            h, w = 36 + 4 * (i % 3), 44 + 6 * (i % 2)
            lab = np.ones((h, w), np.uint8)  # stored 1 = class 0 (stored 0 is ADE's ignored 'other')
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            lab[:2] = 0
            for k in range(2, 5):  # bright squares of 3 classes: learnable in one epoch
                y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
                lab[y : y + 12, x : x + 12] = k
                img[y : y + 12, x : x + 12] = (60 * k, 255 - 50 * k, 30 * k)
            Image.fromarray(img).save(root / "images" / sub / f"ADE_{sub}_{i:08d}.jpg", quality=95)
            Image.fromarray(lab, mode="L").save(root / "annotations" / sub / f"ADE_{sub}_{i:08d}.png")
    return root


def test_distill_on_ade20k_layout_with_slide_evaluation(tmp_path):
    root = _fake_ade(tmp_path / "ADEChallengeData2016")
    cfg = {
        "workflow": "distill",
        "out": str(tmp_path / "out"),
        "data": {"name": "ade20k", "root": str(root), "crop_size": 28, "scale": [112, 28], "val_fraction": 0.2},
        "task": {"name": "semantic_segmentation", "inference": "slide", "crop_size": 28, "stride": 14},
        "teacher": {"name": "probed_seg", "backbone": "dinov2_vits14", "tiny": True, "image_size": 56},
        "student": {
            "name": "vit_small",
            "backbone": "dinov2_vits14",
            "tiny": True,
            "pretrained": False,
            "task": "segmentation",
            "image_size": 56,
        },
        "generator": {"name": "cutmix"},
        "seeds": [0],
        "rows": ["teacher_probed", "student_alone", "distilled_synthetic"],
        # the dataset augments each labelled sample (mmseg's pipeline); augment=mmseg passes them
        # through and gives the synthetic images the same pipeline
        "probe": {"epochs": 1, "batch_size": 4, "augment": "mmseg"},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "mixup": 0.0, "augment": "mmseg"},
        "synthetic": {"factor": 0.5, "batch_size": 8},
        "plots": True,
    }
    res = run(cfg, [], hooks=[])
    assert res["metric"] == "miou"
    assert set(res["rows"]) == {"teacher_probed", "student_alone", "distilled_synthetic"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in res["rows"].values())
    assert (tmp_path / "out" / "pca.png").is_file()  # test images of varied sizes, resized for the PCA


@pytest.mark.parametrize("recipe", ["distill-ade20k"])
def test_segmentation_recipe_validates_and_asks_for_weights(tmp_path, recipe, monkeypatch):
    """The thesis recipe's config is valid and its dataset loads from the published layout; the
    first thing missing is the teacher's weight file (nothing is downloaded)."""
    from fulcra.errors import WeightsNotFoundError

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    root = _fake_ade(tmp_path / "ADEChallengeData2016")
    with pytest.raises(WeightsNotFoundError, match="dinov2"):
        run(recipe, [f"data.root={root}", f"out={tmp_path / 'out'}"], hooks=[])


@pytest.mark.parametrize("domain", ["painting", "sketch", "clipart"])
def test_domainnet_recipe_validates_and_asks_for_weights(tmp_path, domain, monkeypatch):
    """The DomainNet classification recipes (§4.4.1) resolve, read the published layout with the
    thesis's 20 % test split and a val split for the grid search, and stop first at the missing
    teacher weights (nothing is downloaded)."""
    from torchvision.io import write_png

    import fulcra
    from fulcra.errors import WeightsNotFoundError
    from fulcra.runner import prepare

    root = tmp_path / "domainnet"
    for c in ("aircraft_carrier", "zebra"):
        (root / domain / c).mkdir(parents=True)
        for i in range(10):
            write_png(torch.full((3, 12, 10), 20 * i, dtype=torch.uint8), str(root / domain / c / f"{c}_{i}.png"))
    cfg = prepare(f"distill-domainnet-{domain}", [f"data.root={root}", "data.size=8", "data.resize=9"])[1]
    assert cfg.data.domain == domain and cfg.synthetic.factor == 5 and cfg.teacher.n_cls == 4
    data = fulcra.create("datasets", OmegaConf.to_container(cfg.data, resolve=True))
    splits = data.splits()
    n = {k: len(v) for k, v in splits.items()}
    assert n["test"] == 4 and n["train"] + n["val"] == 16 and n["val"] >= 1
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    with pytest.raises(WeightsNotFoundError, match="dinov2"):
        run(
            f"distill-domainnet-{domain}",
            [f"data.root={root}", "data.size=8", "data.resize=9", f"out={tmp_path / 'out'}"],
            hooks=[],
        )
