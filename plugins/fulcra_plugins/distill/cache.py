"""On-disk, memory-mapped cache of frozen encoder features for probing.

When the probing augmentation is deterministic (Resize + CenterCrop), the frozen encoder sees the
same input every epoch, so its features are computed once and the head trains on the cache: the
encoder's cost is paid once instead of once per epoch (``benchmarks/bench_probe_cache.py``).

Layout of a cache folder: ``features.npy`` (a ``.npy`` file opened with ``numpy.lib.format.open_memmap``,
``[N, *feature_shape]``), ``targets.npy`` (the items' targets from the same pass: ``[N]`` int64
labels, or ``[N, H, W]`` int16 label maps, so a segmentation set's maps are memory-mapped too instead
of held as int64 in memory), ``done.npy`` (one byte per chunk, set once its rows are flushed: an
interrupted build resumes chunk by chunk, and under ``torchrun`` each rank fills its own chunks of the
same file) and ``meta.json`` (the key: backbone, weights, image size, tokens, dataset fingerprint).
A cache whose key differs is rebuilt, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fulcra.engine import ItemRange, Prefetcher, atomic_write_text, collate_batch, dist

__all__ = ["FeatureCache", "CachedFeatures", "dataset_fingerprint", "file_fingerprint"]


def file_fingerprint(path: str | None) -> str | None:
    """Cheap identity of a weight file: size, mtime and a hash of its first MiB."""
    if not path:
        return None
    p = Path(path).expanduser()
    st = p.stat()
    with open(p, "rb") as fh:
        head = hashlib.sha1(fh.read(1 << 20)).hexdigest()[:16]
    return f"{st.st_size}:{int(st.st_mtime)}:{head}"


def dataset_fingerprint(dataset: Any, n_probe: int = 16) -> str:
    """Length plus a hash of a few evenly spread items (catches a changed split or resolution)."""
    n = len(dataset)
    h = hashlib.sha1(str(n).encode())
    for i in np.linspace(0, n - 1, num=min(n, n_probe)).astype(int).tolist():
        x, y = dataset[i]
        h.update(torch.as_tensor(x).numpy().tobytes())
        h.update(torch.as_tensor(y).numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """Build or open the feature cache of one (encoder, dataset) pair.

    Args:
        root: cache folder.
        key: JSON-able description of everything the features depend on.
        chunk: rows encoded per forward pass and per ``done`` flag.
        dtype: storage dtype (``float32``; ``float16`` halves the disk for large encoders).
    """

    def __init__(self, root: str | os.PathLike, key: dict, chunk: int = 64, dtype: str = "float32"):
        self.root, self.key, self.chunk, self.dtype = Path(root), dict(key), int(chunk), np.dtype(dtype)

    @property
    def complete(self) -> bool:
        meta = self.root / "meta.json"
        if not meta.is_file():
            return False
        m = json.loads(meta.read_text())
        return m.get("key") == self.key and m.get("complete", False)

    def build(
        self,
        dataset: Any,
        encode: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        workers: int = 0,
    ) -> np.ndarray:
        """Encode every item of ``dataset`` (``(image uint8 [3,H,W], target)``) once.

        ``encode(images uint8 [B,3,H,W] on device) -> [B, *feature_shape]``. Returns the read-only
        memory map ``[N, *feature_shape]``. ``workers`` processes decode the coming chunks.
        """
        n = len(dataset)
        n_chunks = -(-n // self.chunk)
        feats_path, done_path, meta_path = self.root / "features.npy", self.root / "done.npy", self.root / "meta.json"
        targets_path = self.root / TARGETS
        if self.complete:
            return np.load(feats_path, mmap_mode="r")
        if dist.rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            stale = not meta_path.is_file() or json.loads(meta_path.read_text()).get("key") != self.key
            if stale or not all(p.is_file() for p in (feats_path, done_path, targets_path)):
                x0, y0 = collate_batch(dataset, [0])
                with torch.no_grad():
                    shape = tuple(encode(x0.to(device)).shape[1:])
                y0 = torch.as_tensor(y0)
                tdtype = _target_dtype(y0)
                np.lib.format.open_memmap(feats_path, mode="w+", dtype=self.dtype, shape=(n, *shape)).flush()
                np.lib.format.open_memmap(targets_path, mode="w+", dtype=tdtype, shape=(n, *y0.shape[1:])).flush()
                np.lib.format.open_memmap(done_path, mode="w+", dtype=np.uint8, shape=(n_chunks,)).flush()
                atomic_write_text(json.dumps({"key": self.key, "complete": False, "shape": [n, *shape]}), meta_path)
        dist.barrier()
        feats = np.load(feats_path, mmap_mode="r+")
        targets = np.load(targets_path, mmap_mode="r+")
        done = np.load(done_path, mmap_mode="r+")
        # a resumed build skips the chunks flushed before the interruption
        todo = [(c * self.chunk, min(n, (c + 1) * self.chunk)) for c in dist.shard_indices(n_chunks) if not done[c]]
        pin = torch.device(device).type == "cuda"
        with Prefetcher(ItemRange(dataset), todo, workers=workers, pin_memory=pin) as ahead:
            for a, b in todo:
                x, y = ahead.take((a, b))
                with torch.no_grad():
                    f = encode(x.to(device)).float().cpu().numpy()
                feats[a:b] = f.astype(self.dtype)
                targets[a:b] = _fit_targets(torch.as_tensor(y), targets.dtype, a)
                feats.flush()
                targets.flush()
                done[a // self.chunk] = 1
                done.flush()
        del feats, targets, done
        dist.barrier()
        if dist.rank() == 0:
            atomic_write_text(
                json.dumps(
                    {"key": self.key, "complete": True, "shape": list(np.load(feats_path, mmap_mode="r").shape)}
                ),
                meta_path,
            )
        dist.barrier()
        return np.load(feats_path, mmap_mode="r")

    def targets(self) -> np.ndarray | None:
        """The cached targets, read-only memory map ``[N]`` int64 or ``[N, H, W]`` int16, once the
        cache is complete; None for a cache written before targets were stored (the caller then
        reads them from the dataset)."""
        path = self.root / TARGETS
        return np.load(path, mmap_mode="r") if self.complete and path.is_file() else None


TARGETS = "targets.npy"


def _target_dtype(y: torch.Tensor) -> np.dtype:
    """Storage of targets like ``y`` ``[B, ...]``: float32 if floating, int16 for dense label maps
    (class ids and an ignore index such as 255 fit), int64 for per-image labels."""
    if y.is_floating_point():
        return np.dtype(np.float32)
    return np.dtype(np.int16) if y.ndim >= 2 else np.dtype(np.int64)


def _fit_targets(y: torch.Tensor, dtype: np.dtype, first: int) -> np.ndarray:
    """``y`` as ``dtype``, refusing values the storage cannot hold exactly."""
    arr = y.cpu().numpy()
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"feature cache: targets of items {first}.. hold {lo}..{hi}, outside the {dtype} range of "
                f"the cached label maps ({info.min}..{info.max})"
            )
    return arr.astype(dtype)


class CachedFeatures(torch.utils.data.Dataset):
    """Cached features with their targets; ``get_batch`` reads a batch of rows from the memory map.

    Args:
        features: ``[N, *shape]`` array (memory map).
        targets: ``[N]`` or ``[N, H, W]``: a tensor, or an array (the cache's memory map); integer
            targets come out as int64, floating ones as float32.
    """

    def __init__(self, features: np.ndarray, targets: torch.Tensor | np.ndarray):
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} cached rows but {len(targets)} targets")
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def _targets(self, idx) -> torch.Tensor:
        if isinstance(self.targets, torch.Tensor):
            return self.targets[torch.as_tensor(idx)]
        t = np.asarray(self.targets[idx])
        return torch.from_numpy(t.astype(np.float32 if t.dtype.kind == "f" else np.int64))

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.features[i], dtype=np.float32)), self._targets(i)

    def get_batch(self, indices):
        idx = np.asarray(indices)
        order = np.argsort(idx)  # sorted reads are sequential on disk
        rows = np.empty((len(idx), *self.features.shape[1:]), dtype=np.float32)
        rows[order] = self.features[idx[order]]
        return torch.from_numpy(rows), self._targets(idx)
