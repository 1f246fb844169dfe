"""Baselines of LUDVIG's segmentation ablation (Table 5.2, app. C.2.2).

``geometry`` ("geometry only", "reference mask" in Table 5.2): the reference mask is uplifted to the
Gaussians with a single view (Eq. 5.3: each Gaussian gets the share of its rendering weight that
falls inside the mask), and the per-Gaussian values are rendered on every other view. No feature is
used: how well this works says how well the 3D reconstruction alone carries a mask from view to
view (the thesis: well on forward-facing LLFF scenes, poorly on 360-degree ones). Thresholds come
from the same reference-view protocol as every other route (:func:`.reference.tune`).
"""

from __future__ import annotations

from typing import Callable

import torch

from fulcra.camera import Camera

__all__ = ["segment_geometry"]


def segment_geometry(
    scene,
    ref: Camera,
    mask: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    reference: str = "prompt mask",
    log: Callable[[str], None] | None = None,
):
    """The geometry-only route: uplift ``mask`` from ``ref``, score each Gaussian by it, tune.

    Args:
        scene: any scene plugin (``render``, ``num_primitives``).
        ref: the reference view.
        mask: ``[H, W]`` bool (or [0, 1]) on ``ref``: the reference mask (Table 5.2 uplifts the full
            mask; scribbles or clicks work too, with the poorer result they imply).
        target: ``[H, W]`` bool reference mask the thresholds are chosen on (usually ``mask``
            itself); None: the fallback rule :data:`.reference.FALLBACKS` ``["geometry"]``.
        reference: where ``target`` came from, for ``results.json``.

    Returns:
        ``(Segmentation3D, Tuning)``: ``scores [N]`` in [0, 1] (0 for Gaussians ``ref`` does not
        see), ``weights [N]`` the reference view's rendering weights, and what the protocol chose.
    """
    from . import reference as R
    from .segmentation import Segmentation3D, uplift_mask

    g, w = uplift_mask(scene, ref, torch.as_tensor(mask).float(), normalize=True)
    scores, tuning = R.tune(scene, ref, target, lambda p: g, (), reference, kind="geometry", log=log)
    seg = Segmentation3D(scores=scores.float(), g0=g, weights=w)
    seg.tuning = tuning
    return seg, tuning
