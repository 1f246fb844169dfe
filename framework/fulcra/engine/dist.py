"""torch.distributed helpers. Launched by ``torchrun`` the environment carries RANK/WORLD_SIZE; every
helper degrades to the single-process case when no process group is initialised."""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as tdist

__all__ = [
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "barrier",
    "all_reduce_sum",
    "all_reduce_max",
    "all_reduce_mean",
    "broadcast_object",
    "shard",
    "shard_indices",
    "destroy",
]

T = TypeVar("T")


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1).

    Uses nccl when CUDA is available, else gloo. Returns True when distributed."""
    if tdist.is_available() and tdist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not tdist.is_available():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (and return it); identity when not distributed.
    With gloo, CUDA tensors are reduced through a CPU copy."""
    if not is_distributed():
        return tensor
    if tensor.is_cuda and tdist.get_backend() == "gloo":
        tmp = tensor.cpu()
        tdist.all_reduce(tmp, op=tdist.ReduceOp.SUM)
        tensor.copy_(tmp)
    else:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over processes in place; identity when not distributed."""
    if not is_distributed():
        return tensor
    tmp = tensor.cpu() if tensor.is_cuda and tdist.get_backend() == "gloo" else tensor
    tdist.all_reduce(tmp, op=tdist.ReduceOp.MAX)
    if tmp is not tensor:
        tensor.copy_(tmp)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    all_reduce_sum(tensor)
    if is_distributed():
        tensor /= world_size()
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(n: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """Round-robin indices of ``range(n)`` for this rank (balanced to within one item)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items`` (round-robin, so every item goes to exactly one rank)."""
    return [items[i] for i in shard_indices(len(items), rank_, world)]


def destroy() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
