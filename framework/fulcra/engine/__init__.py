"""What every workflow shares: devices, seeding, optimisation, checkpoints, statistics, distribution."""

from . import dist
from .core import (
    atomic_save,
    atomic_write,
    atomic_write_text,
    format_mean_ci,
    load_checkpoint,
    mean_ci,
    over_seeds,
    rng_state,
    seed_everything,
    select_device,
    select_dtype,
    set_rng_state,
)
from .images import DatasetImages, image_batches
from .optim import EpochSampler, make_optimizer, make_scheduler, step_generator
from .prefetch import ItemRange, Prefetcher, data_workers, dataset_batches, usable_cpus
from .stages import Stage, file_identity, fingerprint
from .trainer import Trainer, collate_batch, unwrap

__all__ = [
    "dist",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint",
    "mean_ci",
    "format_mean_ci",
    "over_seeds",
    "rng_state",
    "set_rng_state",
    "seed_everything",
    "select_device",
    "select_dtype",
    "EpochSampler",
    "make_optimizer",
    "make_scheduler",
    "step_generator",
    "Stage",
    "file_identity",
    "fingerprint",
    "Trainer",
    "collate_batch",
    "DatasetImages",
    "image_batches",
    "Prefetcher",
    "ItemRange",
    "dataset_batches",
    "data_workers",
    "usable_cpus",
    "unwrap",
]
