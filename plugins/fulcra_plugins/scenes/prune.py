"""Pruning by rendering-weight sums (§5.3.2) and per-Gaussian arrays saved beside a PLY.

The weight sum ``β_i = Σ_{d,p} w_i(d, p)`` from the uplift ranks Gaussians by their importance;
the thesis drops the half with the lowest sums with no loss. Features, weights and masks are saved
in safetensors files whose rows follow the PLY's Gaussian order, never as extra PLY properties.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fulcra.errors import ConfigError, FormatError

__all__ = ["select_by_weight", "save_features", "load_features", "save_subset"]


def select_by_weight(weights: torch.Tensor, keep: float) -> torch.Tensor:
    """Indices of the Gaussians to keep, in their original (PLY) order.

    Args:
        weights: ``[N]`` weight sums.
        keep: a fraction in (0, 1] (``0.5`` keeps the heavier half) or a count ``> 1``.
    Returns:
        ``[M]`` int64 indices, sorted ascending.
    """
    n = weights.numel()
    if keep <= 0:
        raise ConfigError(f"prune: keep must be a fraction in (0, 1] or a count > 1, got {keep}")
    m = int(round(keep * n)) if keep <= 1 else int(keep)
    m = max(0, min(n, m))
    top = torch.topk(weights.float(), m, sorted=False).indices if m < n else torch.arange(n, device=weights.device)
    return torch.sort(top).values


def save_features(path: str | Path, metadata: dict | None = None, **tensors: torch.Tensor) -> Path:
    """Save per-Gaussian arrays (``features [N, D]``, ``weights [N]``, ...) to safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_features(path: str | Path, expected: int | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file of per-Gaussian arrays; checks every array has ``expected`` rows."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such features file")
    try:
        out = load_file(str(path))
    except Exception as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    if expected is not None:
        for k, v in out.items():
            if v.shape[0] != expected:
                raise FormatError(
                    f"{path}: count mismatch in '{k}': {v.shape[0]} rows, the scene has {expected} Gaussians"
                )
    return out


def save_subset(scene, index: torch.Tensor, folder: str | Path, **arrays: torch.Tensor) -> Path:
    """Save the Gaussians ``index`` (mask ``[N]`` or indices ``[M]``) as ``folder/point_cloud.ply`` plus
    ``folder/features.safetensors`` holding the given per-Gaussian arrays restricted to them and
    ``index`` (their rows in the original PLY). Removing Gaussians is keeping the complement."""
    folder = Path(folder)
    index = torch.as_tensor(index, device=getattr(scene, "device", None))
    if index.dtype == torch.bool:
        index = torch.nonzero(index).squeeze(1)
    sub = scene.subset(index)
    sub.save_ply(folder / "point_cloud.ply")
    cpu = index.cpu()
    save_features(
        folder / "features.safetensors",
        {"source": str(getattr(scene, "source", ""))},
        index=cpu,
        **{k: v.detach().cpu()[cpu] for k, v in arrays.items()},
    )
    return folder
