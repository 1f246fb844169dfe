"""A small training job for the kill-and-resume and DDP tests: python _train_job.py CKPT OUT [--slow]."""

import sys
import time

import torch

from fulcra.engine import Trainer, seed_everything


def build(seed: int = 0):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    return model, data


def loss_fn(model, inputs, targets):
    return torch.nn.functional.cross_entropy(model(inputs), targets)


def noisy(inputs, targets, gen):  # augmentation randomness drawn from the per-step generator
    return inputs + 0.1 * torch.randn(inputs.shape, generator=gen), targets


class Slow:
    def checkpoint(self, path, step):
        print(f"checkpoint {step}", flush=True)

    def step(self, step, metrics, total=None, stage=None):
        time.sleep(0.05)


def main():
    ckpt, out = sys.argv[1], sys.argv[2]
    model, data = build()
    trainer = Trainer(
        model,
        data,
        loss_fn,
        epochs=4,
        batch_size=8,
        lr=0.05,
        optimizer="sgd",
        momentum=0.9,
        warmup_steps=3,
        seed=7,
        ckpt_path=ckpt,
        ckpt_every=5,
        batch_transform=noisy,
        hooks=Slow() if "--slow" in sys.argv else None,
    )
    trainer.fit()
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main()
