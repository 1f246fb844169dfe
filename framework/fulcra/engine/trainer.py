"""A small, exact-resume training loop shared by the workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import dist
from .core import atomic_save, load_checkpoint, rng_state, set_rng_state
from .optim import EpochSampler, make_optimizer, make_scheduler, step_generator
from .prefetch import Prefetcher

__all__ = ["Trainer", "collate_batch", "unwrap"]


def collate_batch(dataset: Any, indices: Sequence[int]) -> Any:
    """Fetch a batch: ``dataset.get_batch(indices)`` when the dataset offers it (tensor-backed
    datasets do it in one indexing op), else stack the items."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(list(indices))
    items = [dataset[i] for i in indices]
    return torch.utils.data.default_collate(items)


def _fetch(dataset: Any, indices: Sequence[int], seed: int, step: int, rank: int) -> tuple[Any, Any]:
    if hasattr(dataset, "augmented_batch"):  # fulcra.interfaces.AugmentingDataset
        # per-sample augmentation inside the dataset (mmseg's pipeline): its own stream, keyed
        # like the step's so a resumed run draws the same crops
        return dataset.augmented_batch(list(indices), step_generator(seed, step, rank, 0xDA7A))
    return collate_batch(dataset, indices)


class _StepBatch:
    """The batch of a global step: epoch ``step // steps_per_epoch`` of the sampler's order (one
    permutation per epoch, kept), sliced. Runs in the loop's process or in a prefetching worker."""

    def __init__(
        self, dataset: Any, sampler: EpochSampler, batch_size: int, steps_per_epoch: int, seed: int, rank: int
    ):
        self.dataset, self.batch_size, self.steps_per_epoch = dataset, batch_size, steps_per_epoch
        self.sampler = EpochSampler(sampler.n, sampler.seed, sampler.rank, sampler.world_size, sampler.shuffle)
        self.seed, self.rank = seed, rank
        self._epoch, self._order = -1, []

    def __call__(self, step: int) -> tuple[Any, Any]:
        epoch, b = divmod(int(step), self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, self.sampler.indices()
        idx = self._order[b * self.batch_size : (b + 1) * self.batch_size]
        return _fetch(self.dataset, idx, self.seed, step, self.rank)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Trainer:
    """Epoch loop with SGD/AdamW, per-step cosine schedule with warm-up, atomic checkpoints and exact
    resume, and DDP when launched by ``torchrun``.

    Exactness: the data order of epoch ``e`` depends only on (seed, e); the randomness of step ``s``
    (augmentation) comes from a generator seeded by (seed, s) and passed to ``batch_transform``;
    global RNG states (dropout) are saved in each checkpoint. A run killed at any point and resumed
    from its last checkpoint therefore ends with the same weights as an uninterrupted run.

    Args:
        model: the module to train (moved to ``device``).
        dataset: indexable; items ``(input, target)``; or with ``get_batch(indices)``.
        loss_fn: ``loss_fn(model, inputs, targets) -> loss`` or ``(loss, metrics: dict)``.
        batch_transform: optional ``(inputs, targets, generator) -> (inputs, targets)`` applied on
            ``device`` (augmentation, normalisation).
        ckpt_path: checkpoint file; resumed from when it exists. ``ckpt_every``: steps between saves
            (0: only at the end of each epoch).
        hooks: a :class:`fulcra.hooks.HookRelay` (or None).
        max_steps: train for exactly this many steps instead of ``epochs`` (fractional epochs; the
            last epoch is cut short, the schedule spans ``max_steps``).
        distributed: DDP across the process group (default: when one is initialised); False trains
            this process alone, on all the data (e.g. evaluation runs only rank 0 makes).
        workers: worker processes that fetch (decode, and with ``augmented_batch`` augment) the
            coming batches while the model computes (:class:`~fulcra.engine.Prefetcher`,
            ``prefetch`` batches each ahead); 0 fetches each batch when its step starts. The batches,
            and so the weights, are the same either way.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        loss_fn: Callable[..., Any],
        *,
        epochs: int = 1,
        batch_size: int = 64,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        grad_clip: float | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        ckpt_path: str | Path | None = None,
        ckpt_every: int = 0,
        hooks: Any = None,
        stage: str | None = None,
        batch_transform: Callable[..., Any] | None = None,
        drop_last: bool = True,
        params: Any = None,
        max_steps: int | None = None,
        distributed: bool | None = None,
        workers: int = 0,
        prefetch: int = 2,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.grad_clip, self.seed = grad_clip, int(seed)
        self.ckpt_path = Path(ckpt_path) if ckpt_path else None
        self.ckpt_every = int(ckpt_every)
        self.hooks, self.stage = hooks, stage
        self.batch_transform = batch_transform
        if workers < 0 or prefetch < 1:
            raise ValueError(f"Trainer: need workers >= 0 and prefetch >= 1, got {workers}, {prefetch}")
        self.workers, self.prefetch = int(workers), int(prefetch)
        ddp = dist.is_distributed() if distributed is None else bool(distributed) and dist.is_distributed()
        self.rank, self.world = (dist.rank(), dist.world_size()) if ddp else (0, 1)
        self.ddp = ddp
        self.sampler = EpochSampler(len(dataset), seed=self.seed, rank=self.rank, world_size=self.world)
        n_local = len(self.sampler)
        self.steps_per_epoch = n_local // self.batch_size if drop_last else -(-n_local // self.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {n_local} samples of this rank")
        self.total_steps = int(max_steps) if max_steps is not None else self.steps_per_epoch * self.epochs
        self.train_model = self.model
        if ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(
            params if params is not None else self.model.parameters(), optimizer, lr, weight_decay, momentum, nesterov
        )
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, warmup_steps, schedule)
        self.step = 0  # global optimisation steps done

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        if self.rank == 0:
            atomic_save(self.state_dict(), self.ckpt_path)
            if self.hooks is not None:
                self.hooks.checkpoint(path=self.ckpt_path, step=self.step)
        if self.ddp:
            dist.barrier()

    def maybe_resume(self) -> bool:
        if self.ckpt_path is not None and self.ckpt_path.is_file():
            self.load_state_dict(load_checkpoint(self.ckpt_path, map_location=self.device))
            return True
        return False

    # -- loop ----------------------------------------------------------------------------------
    def fit(self) -> nn.Module:
        """Train to ``epochs`` (resuming from ``ckpt_path`` when present); returns the model."""
        self.maybe_resume()
        self.model.train()
        fetch = _StepBatch(self.dataset, self.sampler, self.batch_size, self.steps_per_epoch, self.seed, self.rank)
        ahead = Prefetcher(
            fetch,
            range(self.step, self.total_steps),
            workers=self.workers,
            depth=self.prefetch,
            pin_memory=self.device.type == "cuda",
        )
        with ahead:
            while self.step < self.total_steps:
                metrics = self._optimise(*ahead.take(self.step))
                self.step += 1
                if self.hooks is not None:
                    self.hooks.step(step=self.step, metrics=metrics, total=self.total_steps, stage=self.stage)
                end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if end_of_epoch or (self.ckpt_every and self.step % self.ckpt_every == 0):
                    self.save()
        return self.model

    def _optimise(self, inputs: Any, targets: Any) -> dict:
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.batch_transform is not None:
            gen = step_generator(self.seed, self.step, self.rank, device=self.device)
            inputs, targets = self.batch_transform(inputs, targets, gen)
        out = self.loss_fn(self.train_model, inputs, targets)
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss.detach()), "lr": self.optimizer.param_groups[0]["lr"], **metrics}
