"""Weight-free mixing generators: ``mixup`` and ``cutmix``.

Both follow the :class:`fulcra.interfaces.Generator` convention of fulcra's generators: the input
batch holds ``n·mix_k`` images, consecutive groups of ``mix_k`` are mixed into one output image, so
``generate([n·k, 3, H, W]) -> [n, 3, H, W]`` (float in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

from fulcra.errors import ConfigError

__all__ = ["Mixup", "CutMix"]


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    """numpy RNG seeded from the torch generator (Beta/Dirichlet draws take no torch generator)."""
    dev = generator.device if generator is not None else "cpu"
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator, device=dev)))


def _groups(images: torch.Tensor, k: int, owner: str) -> torch.Tensor:
    if images.ndim != 4 or images.shape[0] % k:
        raise ConfigError(f"generators plugin '{owner}': expected [n*{k}, C, H, W] images, got {tuple(images.shape)}")
    return images.view(images.shape[0] // k, k, *images.shape[1:])


class Mixup:
    """Mixup as a generator: each output is a convex combination of ``mix_k`` inputs with
    Dirichlet(``alpha``) weights (Beta(alpha, alpha) for two images).

    Args:
        mix_k: images mixed per output (>= 2).
        alpha: concentration of the mixing weights (1: uniform).
    """

    def __init__(self, mix_k: int = 2, alpha: float = 1.0):
        if mix_k < 2 or alpha <= 0:
            raise ConfigError(f"generators plugin 'mixup': need mix_k >= 2 and alpha > 0, got {mix_k}, {alpha}")
        self.mix_k, self.alpha = int(mix_k), float(alpha)

    def weights(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, mix_k]`` mixing weights (rows sum to 1)."""
        return torch.from_numpy(_rng(generator).dirichlet([self.alpha] * self.mix_k, size=n)).float()

    def generate(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = _groups(images, self.mix_k, "mixup")
        w = self.weights(g.shape[0], generator).to(
            images.device, images.dtype if images.is_floating_point() else torch.float32
        )
        return (g.float() * w.view(*w.shape, 1, 1, 1)).sum(1)


class CutMix:
    """CutMix as a generator: into the first image of each group, paste a random box of each other
    image; box area fraction ``1 − λ`` with ``λ ~ Beta(alpha, alpha)`` (Yun et al., 2019).

    Args:
        mix_k: images mixed per output (>= 2).
        alpha: Beta concentration.
    """

    def __init__(self, mix_k: int = 2, alpha: float = 1.0):
        if mix_k < 2 or alpha <= 0:
            raise ConfigError(f"generators plugin 'cutmix': need mix_k >= 2 and alpha > 0, got {mix_k}, {alpha}")
        self.mix_k, self.alpha = int(mix_k), float(alpha)

    def boxes(self, n: int, h: int, w: int, generator: torch.Generator | None = None) -> np.ndarray:
        """``[n, mix_k - 1, 4]`` boxes (y0, y1, x0, x1), one per pasted image."""
        rng = _rng(generator)
        lam = rng.beta(self.alpha, self.alpha, size=(n, self.mix_k - 1))
        cut = np.sqrt(1.0 - lam)
        bh, bw = (cut * h).astype(int), (cut * w).astype(int)
        cy, cx = rng.integers(0, h, size=lam.shape), rng.integers(0, w, size=lam.shape)
        return np.stack(
            [
                np.clip(cy - bh // 2, 0, h),
                np.clip(cy + bh // 2, 0, h),
                np.clip(cx - bw // 2, 0, w),
                np.clip(cx + bw // 2, 0, w),
            ],
            -1,
        )

    def generate(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = _groups(images, self.mix_k, "cutmix").float()
        out = g[:, 0].clone()
        boxes = self.boxes(g.shape[0], g.shape[-2], g.shape[-1], generator)
        for i in range(g.shape[0]):
            for j in range(1, self.mix_k):
                y0, y1, x0, x1 = boxes[i, j - 1].tolist()
                out[i, :, y0:y1, x0:x1] = g[i, j, :, y0:y1, x0:x1]
        return out
