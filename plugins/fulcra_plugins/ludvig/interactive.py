"""Interactive 3D selection from Python: a scene, its uplifted features, a few clicks -> a 3D mask.

Example (see ``docs/ludvig.md``)::

    sel = Selector(scene, features, weights)
    s = sel.click(camera, [(80, 60), (84, 70)])   # pixels (x, y) on that view
    s.mask3d                                      # [N] bool, one per Gaussian (PLY order)
    s.render(camera)                              # [H, W] bool mask of the selection on any view
    s.save_removed("no_object.ply")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from fulcra.camera import Camera

from .editing import extract, remove, save_extracted, save_removed
from .segmentation import (
    Segmentation3D,
    binarise_3d,
    build_refiner,
    clicks_to_mask,
    render_mask,
    render_scores,
    segment_with_reference,
)

__all__ = ["Selector", "Selection"]


@dataclass
class Selection:
    """The answer to one prompt: per-Gaussian ``scores``, the boolean ``mask3d`` and helpers.

    Attributes:
        scene: the scene it selects in.
        scores: ``[N]`` float per-Gaussian scores (``h`` of C.1.3 with diffusion).
        mask3d: ``[N]`` bool, the selected Gaussians.
        prompt: ``[H, W]`` bool, the 2D prompt on the reference view.
        camera: the reference view.
    """

    scene: object
    scores: torch.Tensor
    mask3d: torch.Tensor
    prompt: torch.Tensor
    camera: Camera
    details: Segmentation3D | None = field(default=None, repr=False)

    def render(self, camera: Camera | None = None, threshold: float = 0.5) -> torch.Tensor:
        """``[H, W]`` bool: the rendered 3D selection on ``camera`` (default: the reference view)."""
        return render_mask(self.scene, self.mask3d, camera or self.camera, threshold)

    def render_scores(self, camera: Camera | None = None) -> torch.Tensor:
        """``[H, W]`` float: the rendered per-Gaussian scores (soft mask)."""
        return render_scores(self.scene, self.scores, camera or self.camera)

    def remove(self):
        """The scene without the selection."""
        return remove(self.scene, self.mask3d)

    def extract(self):
        """The selection alone."""
        return extract(self.scene, self.mask3d)

    def save_removed(self, path: str | Path) -> Path:
        return save_removed(self.scene, self.mask3d, path)

    def save_extracted(self, path: str | Path) -> Path:
        return save_extracted(self.scene, self.mask3d, path)


class Selector:
    """Select objects in a 3DGS scene by clicking pixels on any view (LUDVIG, §5.4.1).

    Args:
        scene: a scenes plugin (``render(features, camera)``).
        features: ``[N, D]`` uplifted features (e.g. ``fulcra.uplift`` of DINOv2 maps).
        weights: ``[N]`` weight sums from the uplift (optional).
        diffusion: refine by graph diffusion (True) or score the uplifted features directly (False).
        refiner: a refiners plugin, an instance or a name (default: ``graph_diffusion``, whose kNN
            graph is built on the first click and reused for every later one); only ``refine`` is called.
        threshold: how the per-Gaussian scores become a 3D mask: ``"auto"`` (the reference-view
            protocol of :mod:`.reference`: tuned on the prompt when it is a full mask, or on
            ``reference=`` given to :meth:`select`; else the fallback rule), ``"otsu"`` or a number.
    """

    def __init__(
        self,
        scene,
        features: torch.Tensor,
        weights: torch.Tensor | None = None,
        diffusion: bool = True,
        refiner=None,
        threshold: float | str = "auto",
    ):
        if features.ndim != 2 or features.shape[0] != scene.num_primitives:
            raise ValueError(f"features must be [N={scene.num_primitives}, D], got {list(features.shape)}")
        self.scene, self.features, self.weights = scene, features, weights
        self.diffusion, self.threshold = bool(diffusion), threshold
        # any refiners plugin: an instance, a name or a config node, built through the registry
        self.refiner = build_refiner(refiner) if diffusion else refiner

    def select(
        self, camera: Camera, prompt: torch.Tensor, kind: str = "scribble", reference: torch.Tensor | None = None
    ) -> Selection:
        """Select from a 2D prompt ``[H, W]`` (bool scribbles, or a full mask with ``kind="mask"``);
        ``reference``: optionally the object's full mask on ``camera`` to tune thresholds and
        bandwidths on (a mask prompt is its own reference)."""
        prompt = torch.as_tensor(prompt).bool()
        if not bool(prompt.any()):
            raise ValueError(f"empty prompt on view {camera.name!r}: no positive pixel")
        target = prompt if kind == "mask" else (None if reference is None else torch.as_tensor(reference).bool())
        seg, _ = segment_with_reference(
            self.scene,
            camera,
            prompt,
            kind,
            "diffusion" if self.diffusion else "uplift",
            features=self.features,
            weights=self.weights,
            refiner=self.refiner,
            target=target,
            reference="prompt mask" if kind == "mask" else "user mask",
        )
        mask3d = seg.mask() if self.threshold == "auto" else binarise_3d(seg.scores, self.threshold)
        return Selection(self.scene, seg.scores, mask3d, prompt, camera, seg)

    def click(self, camera: Camera, clicks: Sequence[Sequence[float]], radius: float = 3.0) -> Selection:
        """Select from clicked pixels ``[(x, y), ...]`` on ``camera`` (discs of ``radius`` pixels)."""
        return self.select(camera, clicks_to_mask(clicks, camera.height, camera.width, radius), "scribble")
