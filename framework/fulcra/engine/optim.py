"""Optimizers, learning-rate schedules and the deterministic epoch sampler."""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch

from ..errors import ConfigError

__all__ = ["make_optimizer", "make_scheduler", "EpochSampler", "step_generator"]


def make_optimizer(
    params: Iterable,
    name: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW."""
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    raise ConfigError(f"optimizer {name!r} unknown (choose sgd, adamw or adam)")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup_steps`` then cosine decay to
    ``min_lr_ratio``·lr at ``total_steps`` (or constant)."""
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"schedule {schedule!r} unknown (choose cosine or constant)")
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, keys...): the randomness of a step depends on its index only,
    so a resumed run draws exactly what the uninterrupted one drew."""
    h = int(seed) & 0xFFFFFFFF
    for k in keys:
        h = (h * 0x9E3779B1 + int(k) + 0x7F4A7C15) & 0xFFFFFFFFFFFF
    g = torch.Generator(device=device)
    g.manual_seed(h)
    return g


class EpochSampler:
    """Deterministic order of ``range(n)`` for each epoch, sharded across ranks.

    The permutation depends only on (seed, epoch); rank ``r`` of ``w`` takes every ``w``-th index,
    padded by wrapping so all ranks see the same number of samples (as DistributedSampler does)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if n <= 0:
            raise ValueError("EpochSampler over an empty dataset")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=step_generator(self.seed, self.epoch)).tolist()
        else:
            order = list(range(self.n))
        per = math.ceil(self.n / self.world_size)
        order = (order * (1 + per * self.world_size // self.n))[: per * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)
