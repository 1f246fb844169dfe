"""ImageNet-100 and DomainNet read from fake datasets written here in the published layouts."""

from __future__ import annotations

import pytest
import torch

import fulcra
from fulcra.errors import ConfigError, DataNotFoundError, FormatError

tv = pytest.importorskip("torchvision")
from torchvision.io import write_jpeg, write_png  # noqa: E402

DOMAIN_CLASSES = ["aircraft_carrier", "bee", "zebra"]


def _img(path, h, w, value, jpeg=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.full((3, h, w), value, dtype=torch.uint8)
    x[0, : h // 2] = 255 - value  # something to crop
    (write_jpeg if jpeg else write_png)(x, str(path))


@pytest.fixture
def imagenet(tmp_path):
    """ImageNet layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, 4 classes, and a 2-class list file."""
    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
    for ci, w in enumerate(wnids):
        for i in range(3):
            _img(root / "train" / w / f"{w}_{i}.JPEG", 40 + 8 * i, 60, 30 * ci)
        _img(root / "val" / w / f"ILSVRC2012_val_{ci:08d}.JPEG", 50, 50, 30 * ci)
    lst = tmp_path / "imagenet100.txt"
    lst.write_text(f"{wnids[2]}\n{wnids[0]}\n\n")
    return root, lst, wnids


def test_imagenet100_reads_the_listed_classes(imagenet):
    root, lst, wnids = imagenet
    ds = fulcra.create("datasets", "imagenet100", root=str(root), classes=str(lst), size=32, resize=36)
    assert ds.num_classes == 2 and ds.classes == [wnids[2], wnids[0]]  # the list file's order
    s = ds.splits()
    assert len(s["train"]) == 6 and len(s["test"]) == 2
    x, y = s["train"][0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y == 0
    assert sorted(s["train"].labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # Resize(36) + CenterCrop(32), as torchvision does it
    from torchvision.transforms.v2 import functional as F

    raw = tv.io.decode_image(s["train"].samples[0][0], mode=tv.io.ImageReadMode.RGB)
    torch.testing.assert_close(x, F.center_crop(F.resize(raw, 36, antialias=True), [32, 32]))
    every = fulcra.create("datasets", "imagenet100", root=str(root), size=16)
    assert every.num_classes == 4
    held = fulcra.create("datasets", "imagenet100", root=str(root), size=16, val_fraction=0.25).splits()
    assert len(held["train"]) == 9 and len(held["val"]) == 3


def test_imagenet100_bad_inputs(imagenet, tmp_path):
    root, lst, _ = imagenet
    with pytest.raises(DataNotFoundError, match="train/ and val/"):
        fulcra.create("datasets", "imagenet100", root=str(tmp_path / "nowhere"))
    bad = tmp_path / "bad.txt"
    bad.write_text("n99999999\n")
    with pytest.raises(DataNotFoundError, match="1 listed classes have no folder"):
        fulcra.create("datasets", "imagenet100", root=str(root), classes=str(bad))
    bad.write_text("n01440764\nn01440764\n")
    with pytest.raises(FormatError, match="listed twice"):
        fulcra.create("datasets", "imagenet100", root=str(root), classes=str(bad))
    with pytest.raises(ConfigError, match="preprocess"):
        fulcra.create("datasets", "imagenet100", root=str(root), preprocess="zoom")


def _domain(root, domain, per_class):
    files = []
    for ci, c in enumerate(DOMAIN_CLASSES):
        for i in range(per_class):
            rel = f"{domain}/{c}/{domain}_{ci:03d}_{i:06d}.jpg"
            _img(root / rel, 30 + i, 44, 20 * ci + i)
            files.append((rel, ci))
    return files


def test_domainnet_thesis_split_is_seeded_and_20_percent(tmp_path):
    root = tmp_path / "domainnet"
    _domain(root, "clipart", 10)
    ds = fulcra.create("datasets", "domainnet", root=str(root), domain="clipart", size=24)
    assert ds.num_classes == 3 and ds.preprocess == "squash"  # Table A.3 for clipart
    s = ds.splits()
    assert len(s["train"]) == 24 and len(s["test"]) == 6  # 20 % of 30
    tr = {s["train"].base.samples[i][0] for i in s["train"].indices}
    te = {s["test"].base.samples[i][0] for i in s["test"].indices}
    assert not tr & te and len(tr | te) == 30
    again = fulcra.create("datasets", "domainnet", root=str(root), domain="clipart", size=24).splits()
    assert again["test"].indices == s["test"].indices
    other = fulcra.create("datasets", "domainnet", root=str(root), domain="clipart", split_seed=1).splits()
    assert other["test"].indices != s["test"].indices
    x, y = s["train"][0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8
    # the distillation protocol: another test fraction and a validation hold-out
    d = fulcra.create("datasets", "domainnet", root=str(root), domain="clipart", test_fraction=0.5, val_fraction=0.2)
    sp = d.splits()
    assert len(sp["test"]) == 15 and len(sp["val"]) == 3 and len(sp["train"]) == 12


def test_domainnet_real_keeps_at_most_max_train(tmp_path):
    root = tmp_path / "domainnet"
    _domain(root, "real", 10)
    ds = fulcra.create("datasets", "domainnet", root=str(root), domain="real", max_train=20)
    assert ds.preprocess == "resize_crop"
    s = ds.splits()
    assert len(s["train"]) == 20 and len(s["test"]) == 10
    assert fulcra.create("datasets", "domainnet", root=str(root), domain="real").max_train == 50000
    assert fulcra.create("datasets", "domainnet", root=str(root), domain="real", max_train=0).max_train == 0


def test_domainnet_official_txt_split_and_folders(tmp_path):
    root = tmp_path / "domainnet"
    files = _domain(root, "sketch", 4)
    (root / "sketch_train.txt").write_text("".join(f"{r} {c}\n" for r, c in files[::2]))
    (root / "sketch_test.txt").write_text("".join(f"{r} {c}\n" for r, c in files[1::2]))
    s = fulcra.create("datasets", "domainnet", root=str(root), domain="sketch", split="official").splits()
    assert len(s["train"]) == 6 and len(s["test"]) == 6
    assert s["train"].labels.tolist() == [c for _, c in files[::2]]
    (root / "sketch_test.txt").write_text("sketch/unknown_class/x.jpg 0\n")
    with pytest.raises(FormatError, match="line 1"):
        fulcra.create("datasets", "domainnet", root=str(root), domain="sketch", split="official").splits()
    # SLACK's split_dataset.py output: <domain>/train/<class>/, <domain>/test/<class>/
    f = tmp_path / "split"
    for part, n in (("train", 3), ("test", 1)):
        for c in DOMAIN_CLASSES:
            for i in range(n):
                _img(f / "painting" / part / c / f"{i}.jpg", 20, 20, 9, jpeg=False)
    sp = fulcra.create("datasets", "domainnet", root=str(f), domain="painting", split="folders", size=16).splits()
    assert len(sp["train"]) == 9 and len(sp["test"]) == 3


def test_domainnet_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="domain must be one of"):
        fulcra.create("datasets", "domainnet", root=str(tmp_path), domain="cartoon")
    with pytest.raises(DataNotFoundError, match="clipart not found"):
        fulcra.create("datasets", "domainnet", root=str(tmp_path), domain="clipart")
    with pytest.raises(ConfigError, match="test_fraction"):
        fulcra.create("datasets", "domainnet", root=str(tmp_path), test_fraction=1.5)
    with pytest.raises(DataNotFoundError, match="set root="):
        fulcra.create("datasets", "domainnet")
