"""fulcra.engine.DatasetImages: a dataset's images indexed like a uint8 tensor, decoded on access."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fulcra.engine import DatasetImages, image_batches


class Items(torch.utils.data.Dataset):
    """Items ``(image, label)`` one by one (no get_batch), counting the images decoded."""

    def __init__(self, images: torch.Tensor):
        self.images_, self.reads = images, 0

    def __len__(self) -> int:
        return len(self.images_)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.images_[i], i % 3


class Batched(Items):
    def get_batch(self, indices):
        self.reads += len(indices)
        return self.images_[torch.as_tensor(indices)], torch.zeros(len(indices), dtype=torch.long)


@pytest.fixture(params=[Items, Batched])
def eager_and_lazy(request):
    imgs = (torch.rand(23, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    ds = request.param(imgs)
    return imgs, ds, DatasetImages(ds, batch_size=4)


def test_indexes_like_the_tensor(eager_and_lazy):
    imgs, ds, lazy = eager_and_lazy
    assert ds.reads == 0  # nothing decoded up front
    assert len(lazy) == 23 and lazy.shape == imgs.shape and lazy.dtype == torch.uint8
    keys = [
        5,
        -1,
        np.int64(7),
        slice(None),
        slice(3, 17, 2),
        slice(None, None, -3),
        slice(30, 40),
        [4, 4, 0, 22],
        (1, -2),
        torch.tensor([9, 2, 2, 20]),
        torch.tensor([], dtype=torch.long),
        np.array([3, 1], dtype=np.int32),
        range(2, 11, 3),
    ]
    for key in keys:
        k = key.numpy() if isinstance(key, torch.Tensor) else key
        k = np.asarray(k) if isinstance(k, (list, tuple, range)) else k
        want = torch.from_numpy(imgs.numpy()[k].copy())  # NumPy's semantics (negative steps too)
        got = lazy[key]
        assert got.dtype == torch.uint8 and torch.equal(got, want), key
    assert torch.equal(lazy[torch.tensor(4)], imgs[4]) and torch.equal(lazy[np.int32(-2)], imgs[-2])
    assert [x.shape[0] for x in image_batches(lazy, 10)] == [10, 10, 3]
    assert torch.equal(torch.cat(list(image_batches(lazy, 10))), imgs)


def test_reads_only_what_is_drawn(eager_and_lazy):
    _, ds, lazy = eager_and_lazy
    lazy[torch.tensor([1, 2, 3])]
    assert ds.reads == 3
    before = ds.reads
    lazy.shape  # noqa: B018 - the shape is taken from one item
    assert ds.reads - before <= 1


def test_bad_indices_name_the_cause(eager_and_lazy):
    _, _, lazy = eager_and_lazy
    with pytest.raises(IndexError, match="index 23 is out of range for 23 images"):
        lazy[23]
    with pytest.raises(IndexError, match="index -24 is out of range"):
        lazy[[0, -24]]
    with pytest.raises(IndexError, match="1-D integers"):
        lazy[torch.ones(23, dtype=torch.bool)]
    with pytest.raises(IndexError, match="1-D integers"):
        lazy[torch.tensor([0.5])]
    with pytest.raises(IndexError, match="cannot index with str"):
        lazy["0"]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DatasetImages([], batch_size=0)


def test_images_of_different_sizes_are_refused():
    ds = Items(torch.zeros(4, 3, 5, 5, dtype=torch.uint8))
    ds.images_ = [torch.zeros(3, 5, 5, dtype=torch.uint8)] * 2 + [torch.zeros(3, 6, 5, dtype=torch.uint8)] * 2
    lazy = DatasetImages(ds, batch_size=2)
    lazy[0]
    with pytest.raises(ValueError, match="must share a size"):
        lazy[[2, 3]]


def test_empty_dataset_has_no_shape():
    with pytest.raises(IndexError, match="empty"):
        DatasetImages(Items(torch.zeros(0, 3, 2, 2, dtype=torch.uint8))).shape  # noqa: B018


def test_subsets_and_transforms_stay_lazy(eager_and_lazy):
    imgs, ds, lazy = eager_and_lazy
    sub = lazy.subset(torch.tensor([20, 3, 3, -1]))
    assert ds.reads == 0 and len(sub) == 4
    assert torch.equal(sub[:], imgs[[20, 3, 3, 22]]) and torch.equal(sub[[1, 0]], imgs[[3, 20]])
    crop = sub.with_transform(lambda x: x[..., 1:4, 1:3]).with_transform(lambda x: x.flip(-1))
    assert crop.shape == (4, 3, 3, 2) and crop.ndim == 4
    assert torch.equal(crop[:], imgs[[20, 3, 3, 22]][..., 1:4, 1:3].flip(-1))
    assert torch.equal(lazy.subset(slice(None, None, 2))[:], imgs[::2])
