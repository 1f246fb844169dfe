"""What a loop will ask for next, fetched ahead in worker processes while it computes.

A training loop over image files spends each step decoding its batch before it can compute. When
the loop knows which batches it will draw (fulcra's loops do: a batch depends only on the seed and
the step), :class:`Prefetcher` has worker processes (a :class:`torch.utils.data.DataLoader`'s:
shared-memory transfer, pinned memory, worker-death detection) fetch them ahead, in order. What the
loop receives is what ``fetch(key)`` gives in the loop's own process: the same bytes, whatever the
worker count; only the time differs.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..errors import ConfigError, WorkerDiedError

__all__ = ["Prefetcher", "ItemRange", "dataset_batches", "data_workers", "usable_cpus"]

MAX_AUTO_WORKERS = 8
"""``data_workers("auto", lazy=True)`` never starts more worker processes than this per process."""


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def data_workers(value: Any, lazy: bool, *, field: str = "data_workers") -> int:
    """The worker processes a loop uses to decode ahead: ``value`` (an int >= 0) or ``"auto"``.

    ``auto`` is 0 for data held in memory (indexing a tensor costs less than a transfer between
    processes) and otherwise ``min(8, cpus - 1)`` with the CPUs shared among the processes
    ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``), one of them left to the loop.

    Raises:
        ConfigError: naming ``field``, for anything but ``auto`` or a non-negative integer.
    """
    v = value.strip().lower() if isinstance(value, str) else value
    if v == "auto":
        if not lazy:
            return 0
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        return max(0, min(MAX_AUTO_WORKERS, usable_cpus() // local - 1))
    if isinstance(v, str) and v.lstrip("+").isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{field} must be auto or a non-negative integer, got {value!r}")
    return int(v)


class Prefetcher:
    """``fetch(key)`` for each of ``keys`` in order, computed ``depth`` per worker ahead by ``workers``
    processes.

    :meth:`take` hands the loop the value of a key: the prefetched one when the key is the next of
    the plan, else ``fetch(key)`` computed on the spot (a loop that strays from its plan gets the
    right values, only without the head start). With ``workers=0`` nothing runs ahead and every
    :meth:`take` calls ``fetch`` here. ``fetch`` must be deterministic in ``key`` and, for spawned
    workers, picklable; an exception it raises in a worker is raised again by :meth:`take` as is.
    ``pin_memory`` (with CUDA) hands over page-locked tensors; ``context`` is the workers' start
    method (``fork``, ``spawn``, ``forkserver``; default: the platform's).

    Attributes: ``hits`` and ``misses`` count the takes served from the plan and those computed here.
    Use as a context manager, or call :meth:`close`, to stop the workers early.
    """

    def __init__(
        self,
        fetch: Callable[[Any], Any],
        keys: Iterable[Any],
        *,
        workers: int = 0,
        depth: int = 2,
        pin_memory: bool = False,
        context: str | None = None,
    ):
        if workers < 0 or depth < 1:
            raise ValueError(f"Prefetcher: need workers >= 0 and depth >= 1, got {workers}, {depth}")
        self.fetch = fetch
        self.keys: Sequence[Any] = list(keys)
        self.workers = int(workers) if self.keys else 0
        self.hits = self.misses = 0
        self._next = 0  # position in keys of the next planned value
        self._it: Iterator[Any] | None = None
        if self.workers > 0:
            loader = torch.utils.data.DataLoader(
                _Calls(fetch),
                batch_size=None,
                sampler=self.keys,
                num_workers=min(self.workers, len(self.keys)),
                prefetch_factor=int(depth),
                collate_fn=_as_is,
                pin_memory=bool(pin_memory) and torch.cuda.is_available(),
                # the workers' base seed from a generator of their own: creating the workers must
                # not advance the loop's global RNG (dropout would then depend on the worker count)
                generator=torch.Generator().manual_seed(0),
                multiprocessing_context=context,
            )
            self._it = iter(loader)

    def take(self, key: Any) -> Any:
        """The value of ``key``: prefetched when ``key`` is the plan's next, else ``fetch(key)`` here."""
        if self._next < len(self.keys) and self.keys[self._next] == key:
            self._next += 1
            self.hits += 1
            if self._it is None:
                return self.fetch(key)
            try:
                out = next(self._it)
            except RuntimeError as exc:
                if "DataLoader worker" not in str(exc):
                    raise
                self.close()
                raise WorkerDiedError(
                    f"a worker process fetching data ahead died ({exc}); out of memory is the usual cause: "
                    "rerun with fewer data_workers (0 fetches in the loop); a checkpointed run resumes where it stopped"
                ) from exc
            if self._next == len(self.keys):
                self.close()
            if isinstance(out, _Failed):
                raise out.error
            return out
        self.misses += 1
        return self.fetch(key)

    def close(self) -> None:
        """Stop the workers (what they fetched ahead is dropped); later takes compute here."""
        it, self._it = self._it, None
        self._next = len(self.keys) if it is not None else self._next
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class _Failed:
    """An exception raised by ``fetch`` in a worker, carried back whole (DataLoader would re-raise
    it rewrapped, with the worker's traceback in place of its message)."""

    def __init__(self, error: BaseException):
        self.error = error


class _Calls(torch.utils.data.Dataset):
    def __init__(self, fetch: Callable[[Any], Any]):
        self.fetch = fetch

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.fetch(key)
        except Exception as e:
            return _Failed(e)


def _as_is(x: Any) -> Any:
    return x


class ItemRange:
    """A picklable fetch for :class:`Prefetcher`: key ``(a, b)`` gives the batch of items
    ``a .. b-1`` of ``dataset`` (:func:`~fulcra.engine.collate_batch`: ``(inputs, targets)``)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, key: tuple[int, int]) -> Any:
        from .trainer import collate_batch

        a, b = key
        return collate_batch(self.dataset, list(range(a, b)))


def in_order(
    fetch: Callable[[Any], Any], keys: Sequence[Any], workers: int = 0, pin_memory: bool = False
) -> Iterator[Any]:
    """``fetch(key)`` for each of ``keys``, in order, fetched ahead by ``workers`` processes (none
    for fewer than two keys: there is nothing to overlap)."""
    with Prefetcher(fetch, keys, workers=workers if len(keys) > 1 else 0, pin_memory=pin_memory) as ahead:
        for k in keys:
            yield ahead.take(k)


def dataset_batches(
    dataset: Any, batch_size: int = 256, *, workers: int = 0, stop: int | None = None, pin_memory: bool = False
) -> Iterator[Any]:
    """The consecutive batches ``(inputs, targets)`` of the first ``stop`` items of ``dataset`` (all
    by default), in order, fetched ahead by ``workers`` processes (0: each when it is reached)."""
    n = len(dataset) if stop is None else min(int(stop), len(dataset))
    keys = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
    return in_order(ItemRange(dataset), keys, workers, pin_memory)
