import pytest
import torch

from fulcra.errors import ConfigError, DataNotFoundError
from fulcra_plugins.data import Cifar10, Digits, ImageFolder
from fulcra_plugins.tasks.classification import Classification


def test_digits_splits_deterministic_and_disjoint():
    a = Digits(size=16, seed=3).splits()
    b = Digits(size=16, seed=3).splits()
    assert sum(len(v) for v in a.values()) == 1797
    x, y = a["train"][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and isinstance(y, int)
    assert torch.equal(a["val"].images, b["val"].images)
    c = Digits(size=16, seed=4).splits()
    assert not torch.equal(a["val"].labels, c["val"].labels)
    assert set(a["train"].labels.tolist()) == set(range(10))


def test_digits_bad_size():
    with pytest.raises(ConfigError, match="size"):
        Digits(size=4)


def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "cifar-10-batches-py")):
        Cifar10(root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="not found"):
        ImageFolder(root=str(tmp_path / "nope"))


def test_imagefolder_flat(tmp_path):
    tv = pytest.importorskip("torchvision")
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            img = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
            tv.io.write_png(img, str(tmp_path / c / f"{i}.png"))
    ds = ImageFolder(root=str(tmp_path), size=16, val_fraction=0.2)
    s = ds.splits()
    assert ds.num_classes == 2 and sum(len(v) for v in s.values()) == 10
    x, y = s["train"][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y in (0, 1)
    # the labels of every split without decoding an image (what the distill workflow's targets use)
    from fulcra_plugins.distill.training import dataset_targets

    for split in s.values():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tv.io, "decode_image", lambda *a, **k: pytest.fail("an image was decoded"))
            labels = dataset_targets(split)
        assert labels.tolist() == [split[i][1] for i in range(len(split))]


def test_an_undecodable_file_in_an_image_folder_names_the_file(tmp_path):
    tv = pytest.importorskip("torchvision")
    from fulcra.errors import FormatError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        tv.io.write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / c / "0.png"))
    (tmp_path / "b" / "1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    split = ImageFolder(root=str(tmp_path), size=8, val_fraction=0.0).splits()["train"]
    bad = [i for i in range(len(split)) if split.base.samples[split.indices[i]][0].endswith("1.jpg")]
    with pytest.raises(FormatError, match=r"1\.jpg: cannot be decoded as an image"):
        split[bad[0]]


def test_decode_rgb_without_torchvisions_decoder_reads_with_pillow(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision")
    pytest.importorskip("PIL")
    from fulcra_plugins.data.vision import decode_rgb

    img = torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tv.io.write_png(img, str(tmp_path / "x.png"))
    gray = torch.randint(0, 256, (1, 9, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tv.io.write_png(gray, str(tmp_path / "g.png"))
    want, want_g = decode_rgb(str(tmp_path / "x.png")), decode_rgb(str(tmp_path / "g.png"))
    assert torch.equal(want, img) and torch.equal(want_g, gray.expand(3, 9, 13))
    monkeypatch.delattr(tv.io, "decode_image")  # a torchvision that dropped its decoders
    assert torch.equal(decode_rgb(str(tmp_path / "x.png")), want)
    assert torch.equal(decode_rgb(str(tmp_path / "g.png")), want_g)


def test_classification_task():
    t = Classification()
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    tgt = torch.tensor([0, 1, 1])
    m = t.metric(out, tgt)
    assert m["correct"] == 2 and abs(t.reduce([m, m])["accuracy"] - 2 / 3) < 1e-9
    assert torch.allclose(t.loss(out, tgt), torch.nn.functional.cross_entropy(out, tgt))
