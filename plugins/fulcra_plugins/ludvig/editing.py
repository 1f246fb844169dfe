"""Object removal and extraction: drop or keep the Gaussians of a 3D selection, save a PLY.

These need a scene that is an :class:`~fulcra.interfaces.EditableScene` (``subset``, ``save_ply``);
any other scene gets a one-line error naming its plugin class (the workflows check first and skip
removal with a note).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["remove", "extract", "save_removed", "save_extracted"]


def _editable(scene) -> None:
    from fulcra.interfaces import EditableScene

    if not isinstance(scene, EditableScene):
        raise TypeError(
            f"scene {type(scene).__name__} cannot be edited: removal and extraction need subset() and "
            "save_ply() (fulcra.interfaces.EditableScene)"
        )


def _mask(scene, mask3d: torch.Tensor) -> torch.Tensor:
    _editable(scene)
    m = torch.as_tensor(mask3d).bool().flatten()
    if m.numel() != scene.num_primitives:
        raise ValueError(f"3D mask has {m.numel()} entries, the scene {scene.num_primitives} Gaussians")
    return m


def remove(scene, mask3d: torch.Tensor):
    """The scene without the selected Gaussians (same backend). ``mask3d``: ``[N]`` bool."""
    keep = ~_mask(scene, mask3d)
    return scene.subset(keep)


def extract(scene, mask3d: torch.Tensor):
    """The selected Gaussians alone, as a scene of the same backend."""
    keep = _mask(scene, mask3d)
    return scene.subset(keep)


def save_removed(scene, mask3d: torch.Tensor, path: str | Path) -> Path:
    """Save the scene without the selection as an INRIA 3DGS PLY (original order of the kept Gaussians)."""
    return remove(scene, mask3d).save_ply(Path(path))


def save_extracted(scene, mask3d: torch.Tensor, path: str | Path) -> Path:
    """Save the selection alone as an INRIA 3DGS PLY."""
    return extract(scene, mask3d).save_ply(Path(path))
