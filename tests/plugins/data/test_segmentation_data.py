"""ADE20K / Cityscapes / Pascal VOC loaders on fake datasets written here in their published
layouts, and mmseg's training augmentations against their definitions."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from fulcra import create
from fulcra.engine import Trainer
from fulcra.errors import DataNotFoundError, FormatError
from fulcra.interfaces import AugmentingDataset

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from fulcra_plugins.data import seg_transforms as T  # noqa: E402

VOC_PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def _img(path, h, w, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _lab(path, arr, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette(VOC_PALETTE)
        im = Image.fromarray(arr.astype(np.uint8), mode="P")
        im.putpalette(VOC_PALETTE)
    im.save(path)


def _labels(h, w, seed, k, ignore=True):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, (h, w))
    if ignore:
        a[0, :] = 255
    return a


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    for sub, n in (("training", 6), ("validation", 2)):
        for i in range(n):
            h, w = 40 + 3 * i, 60 - 2 * i
            _img(root / "images" / sub / f"ADE_{sub}_{i:08d}.jpg", h, w, i)
            _lab(root / "annotations" / sub / f"ADE_{sub}_{i:08d}.png", _labels(h, w, i, 151, ignore=False))
    return root


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    for sub, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        for c in cities:
            for i in range(2):
                stem = f"{c}_{i:06d}_000019"
                _img(root / "leftImg8bit" / sub / c / f"{stem}_leftImg8bit.png", 32, 64, i)
                _lab(root / "gtFine" / sub / c / f"{stem}_gtFine_labelTrainIds.png", _labels(32, 64, i, 19))
                _lab(root / "gtFine" / sub / c / f"{stem}_gtFine_labelIds.png", _labels(32, 64, i, 34))
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(8)]
    for n, i in enumerate(ids):
        _img(root / "JPEGImages" / f"{i}.jpg", 30, 40, n)
        _lab(root / "SegmentationClass" / f"{i}.png", _labels(30, 40, n, 21), palette=True)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[3:5]) + "\n")
    return root, ids


def test_ade20k_layout_labels_and_splits(ade):
    ds = create("datasets", "ade20k", root=str(ade.parent), crop_size=32, scale=[128, 32], val_fraction=0.34)
    assert ds.num_classes == 150
    sp = ds.splits()
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (4, 2, 2)
    x, y = sp["train"][0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y.shape == (32, 32) and y.dtype == torch.int64
    # reduce_zero_label: stored 0 -> 255, k -> k - 1
    ip, lp = sp["test"].pairs[0]
    stored = torch.from_numpy(np.asarray(Image.open(lp)).astype(np.int64))
    xt, yt = sp["test"][0]
    assert torch.equal(yt, torch.where(stored == 0, torch.tensor(255), stored - 1))
    assert yt.max() <= 255 and ((yt < 150) | (yt == 255)).all()
    # test images resized keep-ratio to (128, 32) as mmseg's test pipeline; labels at original size
    h, w = stored.shape
    assert tuple(xt.shape[-2:]) == T.rescale_size(h, w, (128, 32)) and min(xt.shape[-2:]) == 32
    assert isinstance(sp["train"], AugmentingDataset) and not isinstance(sp["test"], AugmentingDataset)
    # no augmentation: the train split is deterministic and does not augment itself
    plain = create("datasets", "ade20k", root=str(ade), crop_size=32, scale=[128, 32], augment="none")
    assert not isinstance(plain.splits()["train"], AugmentingDataset)


def test_cityscapes_layout(cityscapes, tmp_path):
    ds = create("datasets", "cityscapes", root=str(cityscapes), crop_size=[16, 32], scale=[64, 16], val_fraction=0)
    sp = ds.splits()
    assert ds.num_classes == 19 and "val" not in sp and (len(sp["train"]), len(sp["test"])) == (4, 2)
    assert all("labelTrainIds" in lp for _, lp in sp["train"].pairs)
    x, y = sp["train"][1]
    assert x.shape == (3, 16, 32) and ((y < 19) | (y == 255)).all()
    # only labelIds: the error says which tool makes train ids
    bad = tmp_path / "cs"
    (bad / "leftImg8bit" / "train" / "ulm").mkdir(parents=True)
    (bad / "gtFine" / "train" / "ulm").mkdir(parents=True)
    (bad / "leftImg8bit" / "val").mkdir(parents=True)
    (bad / "gtFine" / "val").mkdir(parents=True)
    _img(bad / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png", 8, 8, 0)
    _lab(bad / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", _labels(8, 8, 0, 34))
    with pytest.raises(FormatError, match="createTrainIdLabelImgs"):
        create("datasets", "cityscapes", root=str(bad)).splits()


def test_pascal_voc_with_and_without_aug(voc):
    root, ids = voc
    ds = create("datasets", "pascal_voc", root=str(root.parent.parent), crop_size=24, scale=[96, 24], val_fraction=0)
    sp = ds.splits()
    assert ds.num_classes == 21 and not ds.aug
    assert [p[0].rsplit("/", 1)[1] for p in sp["train"].pairs] == [f"{i}.jpg" for i in ids[:3]]
    # palette PNGs give the class index, not a colour
    _, lp = sp["test"].pairs[0]
    want = torch.from_numpy(_labels(30, 40, 3, 21).astype(np.int64))
    assert torch.equal(sp["test"][0][1], want)
    # SegmentationClassAug + aug.txt: train = train.txt | aug.txt minus val.txt, Aug labels preferred
    aug_dir = root / "SegmentationClassAug"
    for n, i in enumerate(ids):
        _lab(aug_dir / f"{i}.png", np.full((30, 40), n % 21))
    (root / "ImageSets" / "Segmentation" / "aug.txt").write_text("\n".join(ids[2:]) + "\n")
    try:
        sp = create("datasets", "pascal_voc", root=str(root), crop_size=24, scale=[96, 24], val_fraction=0).splits()
        names = [p[0].rsplit("/", 1)[1][:-4] for p in sp["train"].pairs]
        assert names == sorted(set(ids[:3]) | set(ids[5:]))
        assert all("SegmentationClassAug" in p[1] for p in sp["train"].pairs)
        assert all("SegmentationClass/" in p[1] for p in sp["test"].pairs)
        off = create("datasets", "pascal_voc", root=str(root), aug="false", val_fraction=0).splits()
        assert len(off["train"]) == 3
    finally:
        import shutil

        shutil.rmtree(aug_dir)
        (root / "ImageSets" / "Segmentation" / "aug.txt").unlink()


def test_missing_data_is_one_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="root="):
        create("datasets", "ade20k")
    with pytest.raises(DataNotFoundError, match="images"):
        create("datasets", "ade20k", root=str(tmp_path)).splits()
    with pytest.raises(DataNotFoundError, match=r"ImageSets/Segmentation/\w+\.txt"):
        (tmp_path / "JPEGImages").mkdir()
        (tmp_path / "SegmentationClass").mkdir()
        create("datasets", "pascal_voc", root=str(tmp_path)).splits()


def test_augmented_batches_are_seeded_and_the_trainer_uses_them(ade):
    sp = create("datasets", "ade20k", root=str(ade), crop_size=24, scale=[96, 24], val_fraction=0).splits()
    tr = sp["train"]
    a = tr.augmented_batch([0, 1, 2], torch.Generator().manual_seed(3))
    b = tr.augmented_batch([0, 1, 2], torch.Generator().manual_seed(3))
    c = tr.augmented_batch([0, 1, 2], torch.Generator().manual_seed(4))
    assert a[0].shape == (3, 3, 24, 24) and a[1].shape == (3, 24, 24)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 150, 1)

        def forward(self, x):
            seen.append(x.shape)
            return self.conv(x.float() / 255)

    loss = lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y, ignore_index=255)
    Trainer(Net(), tr, loss, epochs=1, batch_size=2, seed=0).fit()
    assert seen == [(2, 3, 24, 24)] * 3


def test_rescale_size_is_mmcvs():
    assert T.rescale_size(375, 500, (2048, 512)) == (512, 683)  # short edge bound
    assert T.rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long edge bound
    assert T.rescale_size(1024, 2048, (2048, 560)) == (560, 1120)


def test_random_crop_respects_cat_max_ratio():
    seg = torch.zeros(64, 64, dtype=torch.long)
    seg[:, 48:] = 1  # a crop of 16 x 16 holds one class unless it straddles column 48
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)

    def share_ok(ratio):
        g, ok = torch.Generator().manual_seed(0), 0
        for _ in range(200):
            _, s = T.random_crop(img, seg, (16, 16), ratio, 255, g)
            counts = torch.bincount(s.flatten(), minlength=2).float()
            ok += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return ok

    # one random box mixes the classes within (25 %, 75 %) with probability 7/49; with up to ten
    # tries (the 11th box unchecked, as mmseg) 1 - (6/7)^10 + (6/7)^10 / 7 = 0.82
    assert share_ok(0.75) > 140 and share_ok(1.0) < 50
    g = torch.Generator().manual_seed(0)
    # ignored pixels do not count as a class
    seg2 = torch.full((32, 32), 255)
    seg2[:, :8] = 3
    _, s = T.random_crop(torch.zeros(3, 32, 32, dtype=torch.uint8), seg2, (8, 8), 0.75, 255, g)
    assert s.shape == (8, 8)


def test_pipeline_outputs_and_padding():
    pipe = T.MmsegTrainPipeline(crop_size=(40, 40), scale=(80, 20), ratio_range=(0.5, 0.5))
    img = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    seg = torch.randint(0, 5, (30, 50))
    x, y = pipe(img, seg, torch.Generator().manual_seed(0))
    # scale x 0.5 = (40, 10): the image becomes 10 x 17, padded to 40 x 40 with ignored labels
    assert x.shape == (3, 40, 40) and y.shape == (40, 40)
    assert (y[10:] == 255).all() and (y[:, 17:] == 255).all() and (y[:10, :17] < 5).all()
    assert (x[:, 10:, :] == torch.tensor(T.PAD_RGB, dtype=torch.uint8).view(3, 1, 1)).all()


def test_flip_probability_and_ratio_range():
    g = torch.Generator().manual_seed(0)
    img = torch.arange(6, dtype=torch.uint8).view(1, 1, 6).expand(3, 2, 6).contiguous()
    seg = torch.arange(6).view(1, 6).expand(2, 6).contiguous()
    flips = sum(int(T.random_flip(img, seg, 0.5, g)[1][0, 0] == 5) for _ in range(400))
    assert 160 < flips < 240
    big = torch.zeros(3, 20, 40, dtype=torch.uint8)
    sizes = {T.random_resize(big, None, (40, 20), (0.5, 2.0), g)[0].shape[-2] for _ in range(60)}
    assert min(sizes) >= 10 and max(sizes) <= 40 and len(sizes) > 5


def test_hsv_round_trip_matches_colorsys():
    """The HSV kernels against Python's colorsys, pixel by pixel (slow reference)."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8, generator=g)
    h, s, v = T._rgb_to_hsv255(img)
    for i in range(6):
        for j in range(7):
            r, gg, b = (float(c) / 255 for c in img[:, i, j])
            hh, ss, vv = colorsys.rgb_to_hsv(r, gg, b)
            assert abs(h[i, j] - round(hh * 180) % 180) <= 1
            assert abs(s[i, j] - round(ss * 255)) <= 1 and abs(v[i, j] - vv * 255) < 1e-3
    back = T._hsv255_to_rgb(h, s, v)
    assert (back.int() - img.int()).abs().max() <= 4  # H quantised to 2 degrees, as OpenCV's uint8 HSV


def test_photometric_distortion_definition():
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outs = [T.photometric_distortion(img, torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(o.dtype == torch.uint8 and o.shape == img.shape for o in outs)
    assert sum(torch.equal(o, img) for o in outs) <= 6  # 4 independent coin flips: 1/16 unchanged
    # brightness alone (the other draws off): x + beta, clipped, truncated
    flat = torch.full((3, 2, 2), 250, dtype=torch.uint8)
    assert T._convert(flat, beta=10.7).max() == 255 and T._convert(flat, beta=-0.5).max() == 249


def test_distill_augment_mmseg_mode():
    """augment=mmseg: labelled (dataset-augmented) images pass through; unlabelled (synthetic) ones
    get mmseg's pipeline, seeded by the step generator."""
    from fulcra_plugins.distill.augment import augment_batch

    x = torch.rand(3, 3, 20, 20)
    y = torch.zeros(3, 20, 20, dtype=torch.long)
    a, b = augment_batch(x, y, "mmseg", torch.Generator().manual_seed(0))
    assert a is x and b is y
    s1, _ = augment_batch(x, None, "mmseg", torch.Generator().manual_seed(0))
    s2, _ = augment_batch(x, None, "mmseg", torch.Generator().manual_seed(0))
    s3, _ = augment_batch(x, None, "mmseg", torch.Generator().manual_seed(1))
    assert s1.shape == x.shape and torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert s1.min() >= 0 and s1.max() <= 1 and not torch.allclose(s1, x, atol=0.01)


def test_trainer_resume_is_exact_with_a_self_augmenting_dataset(ade, tmp_path):
    """The crops come from a generator keyed by (seed, step, rank): a run killed mid-epoch and resumed
    from its checkpoint ends with the weights of an uninterrupted run."""
    tr = create("datasets", "ade20k", root=str(ade), crop_size=16, scale=[64, 16], val_fraction=0).splits()["train"]

    def build():
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 150, 1)

    def loss_fn(stop_at=None):
        calls = []

        def f(m, x, y):
            calls.append(1)
            if stop_at is not None and len(calls) > stop_at:
                raise KeyboardInterrupt  # the kill
            return torch.nn.functional.cross_entropy(m(x.float() / 255), y, ignore_index=255)

        return f

    kw = dict(epochs=2, batch_size=2, seed=5, lr=0.1)
    ref = Trainer(build(), tr, loss_fn(), **kw).fit()
    ckpt = tmp_path / "t.ckpt"
    with pytest.raises(KeyboardInterrupt):
        Trainer(build(), tr, loss_fn(stop_at=4), ckpt_path=ckpt, ckpt_every=1, **kw).fit()
    resumed = Trainer(build(), tr, loss_fn(), ckpt_path=ckpt, ckpt_every=1, **kw).fit()
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
