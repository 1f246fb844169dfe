"""Example third-party fulcra plugins (see docs/writing-a-plugin.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

import fulcra
from fulcra.engine import Trainer, atomic_write_text
from fulcra.hooks import hookimpl
from fulcra.interfaces import BaseAugmentationOp, RunContext


class CheckerInvert(BaseAugmentationOp):
    """Inverts the pixels of a checkerboard of ``cell``-pixel squares; magnitude -> cell size."""

    name = "checker_invert"
    value_range = (1.0, 8.0)

    def __init__(self, value_range: list | None = None):
        super().__init__(value_range)

    def apply(self, images: torch.Tensor, value) -> torch.Tensor:  # images [B, C, H, W]
        b, _, h, w = images.shape
        cell = torch.as_tensor(value, dtype=torch.float32).expand(b).round().clamp_min(1)
        yy = torch.arange(h)[None, :, None] // cell[:, None, None]
        xx = torch.arange(w)[None, None, :] // cell[:, None, None]
        mask = ((yy + xx) % 2 == 1)[:, None].to(images.device)  # [B, 1, H, W]
        top = 255 if images.dtype == torch.uint8 else 1.0
        return torch.where(mask, top - images, images)


class MatrixScene:
    """A scene given by explicit rendering matrices, one ``[H*W, N]`` per camera (row-stochastic-ish
    weights). Linear by construction: the smallest possible SceneRepresentation."""

    def __init__(self, num_primitives: int = 5, height: int = 3, width: int = 4, num_cameras: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.num_primitives, self.height, self.width = num_primitives, height, width
        w = torch.rand(num_cameras, height * width, num_primitives, generator=g)
        w = w * (torch.rand(w.shape, generator=g) > 0.4)  # sparse, like real coverage
        self.matrices = w  # [V, H*W, N]
        self.positions = torch.rand(num_primitives, 3, generator=g)  # [N, 3], declared by SceneRepresentation
        self.cameras = [
            fulcra.Camera(torch.eye(4), torch.eye(3), width, height, name=f"v{i}") for i in range(num_cameras)
        ]

    def render(self, features: torch.Tensor, camera) -> torch.Tensor:  # features [N, D] -> [H, W, D]
        idx = int(camera.name[1:])
        return (self.matrices[idx] @ features).reshape(camera.height, camera.width, -1)


class ToyTrain:
    """Trains a linear classifier on random blobs with a configurable augmentation; writes results.json."""

    @dataclass
    class Config:
        augmentation: Any = field(
            default_factory=lambda: {"name": "checker_invert"},
            metadata={"kind": "augmentations", "help": "op applied to every batch"},
        )
        magnitude: float = field(default=0.5, metadata={"help": "op magnitude in [0,1]"})
        epochs: int = 2
        lr: float = 0.1

    def __init__(self, config):
        self.config = config

    def run(self, ctx: RunContext) -> dict:
        cfg = self.config
        op = fulcra.create("augmentations", cfg.augmentation)
        g = torch.Generator().manual_seed(ctx.seed)
        x = (torch.rand(64, 3, 8, 8, generator=g) * 255).to(torch.uint8)
        y = torch.randint(0, 2, (64,), generator=g)
        data = torch.utils.data.TensorDataset(x, y)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))

        def transform(images, targets, gen):
            return op(images, cfg.magnitude, generator=gen).float() / 255, targets

        def loss_fn(m, images, targets):
            return torch.nn.functional.cross_entropy(m(images), targets)

        Trainer(
            model,
            data,
            loss_fn,
            epochs=cfg.epochs,
            batch_size=16,
            lr=cfg.lr,
            seed=ctx.seed,
            ckpt_path=ctx.out / "ckpt.pt",
            hooks=ctx.hooks,
            batch_transform=transform,
        ).fit()
        with torch.no_grad():
            acc = float((model(x.float() / 255).argmax(1) == y).float().mean())
        results = {"accuracy": acc, "op": op.name}
        atomic_write_text(json.dumps(results), ctx.out / "results.json")
        return results


class CountingHook:
    """Counts step events (an example hook plugin)."""

    steps = 0

    @hookimpl
    def fulcra_step(self, workflow, step, metrics, total, stage):
        CountingHook.steps += 1


class HelloCommand:
    """A third-party ``fulcra hello`` command: ``fulcra hello NAME [--times N]``."""

    help = "greet NAME (example third-party command)"

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--times", type=int, default=1)

    def run(self, args) -> int:
        from fulcra.errors import ConfigError

        if args.times < 1:
            raise ConfigError(f"hello: --times must be >= 1, got {args.times}")
        for _ in range(args.times):
            print(f"hello {args.name}")
        return 0
