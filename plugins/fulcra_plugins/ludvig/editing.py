"""Object removal and extraction: drop or keep the Gaussians of a 3D selection, save a PLY."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["remove", "extract", "save_removed", "save_extracted"]


def _mask(scene, mask3d: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(mask3d).bool().flatten()
    if m.numel() != scene.num_primitives:
        raise ValueError(f"3D mask has {m.numel()} entries, the scene {scene.num_primitives} Gaussians")
    return m


def remove(scene, mask3d: torch.Tensor):
    """The scene without the selected Gaussians (same backend). ``mask3d``: ``[N]`` bool."""
    return scene.subset(~_mask(scene, mask3d))


def extract(scene, mask3d: torch.Tensor):
    """The selected Gaussians alone, as a scene of the same backend."""
    return scene.subset(_mask(scene, mask3d))


def save_removed(scene, mask3d: torch.Tensor, path: str | Path) -> Path:
    """Save the scene without the selection as an INRIA 3DGS PLY (original order of the kept Gaussians)."""
    return remove(scene, mask3d).save_ply(Path(path))


def save_extracted(scene, mask3d: torch.Tensor, path: str | Path) -> Path:
    """Save the selection alone as an INRIA 3DGS PLY."""
    return extract(scene, mask3d).save_ply(Path(path))
