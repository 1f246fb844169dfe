"""Protocol readers on tiny fake NVOS, SPIn-NeRF and LERF layouts written here."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fulcra.errors import FormatError
from fulcra_plugins.ludvig import results_table
from fulcra_plugins.ludvig.protocols import (
    evaluate_lerf_segmentation,
    evaluate_localisation,
    evaluate_segmentation,
    read_lerf,
    read_nvos,
    read_spinnerf,
    spinnerf_camera_names,
)


def png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(arr) > 0).astype(np.uint8) * 255).save(path)


def square(h=12, w=16, y0=3, x0=4, s=5):
    a = np.zeros((h, w), bool)
    a[y0 : y0 + s, x0 : x0 + s] = True
    return a


def test_nvos_layout_and_evaluation(tmp_path):
    root = tmp_path / "nvos"
    for scene in ("fern", "horns"):
        png(root / "reference_image" / scene / "IMG_0001.png", square())
        png(root / "scribbles" / scene / "pos_0.png", square(s=2))
        png(root / "scribbles" / scene / "neg_0.png", square(y0=0, x0=0, s=2))
        png(root / "masks" / scene / "IMG_0005.png", square())
        png(root / "masks" / scene / "IMG_0005_mask.png", square(y0=4))
    cases = read_nvos(root)
    assert [c.scene for c in cases] == ["fern", "horns"]
    c = cases[0]
    assert c.reference == "IMG_0001" and c.kind == "scribble" and int(c.positive.sum()) == 4
    assert int(c.negative.sum()) == 4 and list(c.targets) == ["IMG_0005"]
    res = evaluate_segmentation(cases, lambda case, name: torch.from_numpy(square()))
    assert res["fern"]["iou"] == pytest.approx(20 / 30)
    assert "| mean | 66.7 |" in results_table({k: {"iou": v["iou"]} for k, v in res.items()})
    (root / "masks" / "horns" / "IMG_0005_mask.png").unlink()
    with pytest.raises(FormatError, match="IMG_0005_mask.png"):
        read_nvos(root)


def test_spinnerf_first_mask_is_reference(tmp_path):
    root = tmp_path / "spin"
    for i in range(3):
        png(root / "fern" / f"{i:03d}.png", square(x0=4 + i))
    png(root / "fern" / "000_cutout.png", square())
    (root / "fern" / "meta.json").write_text("{}")
    cases = read_spinnerf(root, cameras={"fern": ["r_0", "r_1", "r_2", "r_3"]})
    c = cases[0]
    assert c.kind == "mask" and c.reference == "r_0" and list(c.targets) == ["r_0", "r_1", "r_2"]
    res = evaluate_segmentation(cases, lambda case, name: case.targets[name])
    assert res["fern"] == {"iou": 1.0, "n": 2}


def test_spinnerf_official_camera_pairing():
    """utils/data.py of the official code: orchids skips its 15th camera; truck/lego masks name their camera
    after the first underscore; stems that already are cameras pair by name."""
    cams = [f"IMG_{i:02d}" for i in range(20)]
    names = spinnerf_camera_names("orchids", [f"{i:03d}.png" for i in range(19)], cams)
    assert names[13] == "IMG_13" and names[14] == "IMG_15" and names[-1] == "IMG_19"
    assert spinnerf_camera_names("truck", ["m_000123.png", "m_000007.png"], ["000007", "000123"]) == [
        "000123",
        "000007",
    ]
    assert spinnerf_camera_names("fern", ["IMG_05.png", "IMG_02.png"], cams) == ["IMG_05", "IMG_02"]
    with pytest.raises(FormatError, match="3 SPIn-NeRF masks but only 2 cameras"):
        spinnerf_camera_names("room", ["a.png", "b.png", "c.png"], ["x", "y"])


def test_lerf_layout_localisation_and_segmentation(tmp_path):
    root = tmp_path / "lerf_ovs" / "label"
    (root / "teatime").mkdir(parents=True)
    ann = {
        "info": {"name": "frame_00001.jpg", "width": 20, "height": 10},
        "objects": [
            {"category": "cup", "bbox": [1, 1, 5, 5], "segmentation": [[1, 1], [5, 1], [5, 5], [1, 5]]},
            {"category": "cup", "bbox": [10, 2, 12, 4], "segmentation": []},
            {"category": "bear", "bbox": [14, 0, 19, 9], "segmentation": [[14, 0], [19, 0], [19, 9], [14, 9]]},
        ],
    }
    (root / "teatime" / "frame_00001.json").write_text(json.dumps(ann))
    cases = read_lerf(root)
    assert len(cases) == 1 and cases[0].image == "frame_00001"
    q = {x.text: x for x in cases[0].queries}
    assert len(q["cup"].boxes) == 2 and q["cup"].mask[3, 11] and q["cup"].mask[3, 3] and not q["cup"].mask[8, 8]
    acc = evaluate_localisation(cases, lambda case, texts: torch.tensor([[11, 3], [2, 2]]))
    assert acc["teatime"] == {"accuracy": 0.5, "n": 2}
    seg = evaluate_lerf_segmentation(cases, lambda case, texts: torch.stack([x.mask for x in case.queries]))
    assert seg["teatime"]["iou"] == 1.0
    (root / "teatime" / "frame_00002.json").write_text(json.dumps({"info": {"width": 3}}))
    with pytest.raises(FormatError, match="frame_00002.json"):
        read_lerf(root)
