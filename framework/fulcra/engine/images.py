"""A dataset's images behind the indexing of a uint8 tensor, decoded on access.

Workflows that draw images at random from a training set (a synthetic set's sources, the real
images of a distillation term, self-supervised pre-training) index it like a ``[N, 3, H, W]``
tensor. :class:`DatasetImages` gives them that view of any dataset without reading it into memory:
an ImageNet-scale folder costs what the batches being drawn cost, not 20 GB.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from .prefetch import in_order
from .trainer import collate_batch

__all__ = ["DatasetImages", "image_batches"]


class DatasetImages:
    """The images of ``dataset`` (items ``(image, target)``, or ``get_batch``) indexed like a tensor.

    ``images[i]`` is ``[3, H, W]``; ``images[a:b:s]``, ``images[list]`` and ``images[index tensor]``
    (1-D integers, negatives counted from the end) are ``[b, 3, H, W]``, fetched through
    :func:`~fulcra.engine.collate_batch` ``batch_size`` items at a time. Every item must have the
    shape of the first (as stacking them would require). Nothing is cached: each access decodes.

    Attributes: ``dataset``, ``batch_size``; ``shape`` (``torch.Size``, from the first item) and
    ``dtype`` as a tensor's; ``workers``: the worker processes that loops drawing from this view
    may decode ahead with (:class:`~fulcra.engine.Prefetcher`; 0: none). Indexing itself always
    decodes here; ``workers`` only tells consumers (:func:`image_batches`, the trainers) how many
    to start.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 256,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        workers: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"DatasetImages: batch_size must be >= 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"DatasetImages: workers must be >= 0, got {workers}")
        self.dataset, self.batch_size, self.transform = dataset, int(batch_size), transform
        self.workers = int(workers)
        self._item_shape: torch.Size | None = None
        self._dtype: torch.dtype | None = None

    def subset(self, indices: Any) -> DatasetImages:
        """The images at ``indices`` (anything :meth:`__getitem__` takes but an int) as another lazy
        view: ``view.subset(idx)[k]`` is ``view[idx][k]``, nothing decoded now."""
        return DatasetImages(
            _Subset(self.dataset, self._indices(indices)), self.batch_size, self.transform, self.workers
        )

    def with_transform(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> DatasetImages:
        """A view whose batches go through ``fn`` (``[b, C, H, W]`` to ``[b, C', H', W']``, image by
        image) after this view's own transform."""
        prev = self.transform
        return DatasetImages(self.dataset, self.batch_size, fn if prev is None else _Compose(prev, fn), self.workers)

    def with_workers(self, workers: int) -> DatasetImages:
        """The same view with ``workers`` decoding processes for the loops that draw from it."""
        return DatasetImages(self.dataset, self.batch_size, self.transform, workers)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def _probe(self) -> None:
        if self._item_shape is None:
            if len(self) == 0:
                raise IndexError("DatasetImages: the dataset is empty (no image to take a shape from)")
            x = self._fetch([0])
            self._item_shape, self._dtype = x.shape[1:], x.dtype

    @property
    def shape(self) -> torch.Size:
        self._probe()
        assert self._item_shape is not None
        return torch.Size((len(self), *self._item_shape))

    @property
    def dtype(self) -> torch.dtype:
        self._probe()
        assert self._dtype is not None
        return self._dtype

    def _fetch(self, idx: list[int]) -> torch.Tensor:
        out = []
        for a in range(0, len(idx), self.batch_size):
            x = collate_batch(self.dataset, idx[a : a + self.batch_size])[0]
            if self.transform is not None and isinstance(x, torch.Tensor):
                x = self.transform(x)
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise TypeError(
                    f"DatasetImages: {type(self.dataset).__name__} batches must start with a [b, C, H, W] "
                    f"image tensor, got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else list(x.shape)}"
                )
            if self._item_shape is not None and x.shape[1:] != self._item_shape:
                raise ValueError(
                    f"DatasetImages: {type(self.dataset).__name__} images {idx[a]}.. have shape "
                    f"{list(x.shape[1:])}, the first image {list(self._item_shape)}; images of one set must share a size"
                )
            out.append(x)
        return torch.cat(out) if len(out) != 1 else out[0]

    def _indices(self, key: Any) -> list[int]:
        n = len(self)
        if isinstance(key, slice):
            return list(range(*key.indices(n)))
        if isinstance(key, torch.Tensor):
            if key.dtype == torch.bool or key.is_floating_point() or key.ndim != 1:
                raise IndexError(
                    f"DatasetImages: index tensors must be 1-D integers, got {key.dtype} {list(key.shape)}"
                )
            raw = key.tolist()
        elif isinstance(key, np.ndarray):
            if key.dtype.kind not in "iu" or key.ndim != 1:
                raise IndexError(f"DatasetImages: index arrays must be 1-D integers, got {key.dtype} {list(key.shape)}")
            raw = key.tolist()
        elif isinstance(key, (list, tuple, range)):
            raw = list(key)
        else:
            raise IndexError(f"DatasetImages: cannot index with {type(key).__name__}")
        idx = []
        for i in raw:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise IndexError(f"DatasetImages: indices must be integers, got {type(i).__name__}")
            j = int(i) + n if i < 0 else int(i)
            if not 0 <= j < n:
                raise IndexError(f"DatasetImages: index {int(i)} is out of range for {n} images")
            idx.append(j)
        return idx

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (torch.Tensor, np.ndarray)) and key.ndim == 0 and not key.dtype == torch.bool:
            key = key.item()  # a 0-d integer index, as a tensor takes it
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._getbatch(self._indices([int(key)]))[0]
        return self._getbatch(self._indices(key))

    def _getbatch(self, idx: list[int]) -> torch.Tensor:
        if not idx:
            self._probe()
            assert self._item_shape is not None and self._dtype is not None
            return torch.empty((0, *self._item_shape), dtype=self._dtype)
        x = self._fetch(idx)
        if self._item_shape is None:
            self._item_shape, self._dtype = x.shape[1:], x.dtype
        return x

    def __repr__(self) -> str:
        w = f", workers={self.workers}" if self.workers else ""
        return f"DatasetImages({type(self.dataset).__name__}, n={len(self)}, batch_size={self.batch_size}{w})"


class _Compose:
    def __init__(self, first: Callable, then: Callable):
        self.first, self.then = first, then

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.then(self.first(x))


class _Subset(torch.utils.data.Dataset):
    """Items ``idx`` of ``dataset``, batched through it (and its ``labels`` when it has them)."""

    def __init__(self, dataset: Any, idx: list[int]):
        self.dataset, self.idx = dataset, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        return self.dataset[self.idx[i]]

    def get_batch(self, indices):
        return collate_batch(self.dataset, [self.idx[i] for i in indices])

    @property
    def labels(self) -> torch.Tensor | None:
        base = getattr(self.dataset, "labels", None)
        return base[torch.as_tensor(self.idx, dtype=torch.int64)] if isinstance(base, torch.Tensor) else None


def image_batches(images: Any, batch_size: int = 256, workers: int | None = None) -> Iterator[torch.Tensor]:
    """Consecutive ``[b, 3, H, W]`` slices of a uint8 tensor or a :class:`DatasetImages` (in order),
    decoded ahead by ``workers`` processes (default: the view's ``workers``; a tensor: none)."""
    n_workers = getattr(images, "workers", 0) if workers is None else int(workers)
    return in_order(_Slice(images, batch_size), range(0, len(images), batch_size), n_workers)


class _Slice:
    def __init__(self, images: Any, batch_size: int):
        self.images, self.batch_size = images, batch_size

    def __call__(self, a: int) -> torch.Tensor:
        return self.images[a : a + self.batch_size]
