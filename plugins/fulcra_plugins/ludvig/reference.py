"""The reference-view protocol of LUDVIG's evaluation (app. C.1.1-C.1.3, the official evaluation code).

Every segmentation route ends with a per-Gaussian score. The thesis never thresholds it by a fixed
rule: the scores are rendered into the **reference view**, min-max normalised, and the threshold
(and, with graph diffusion, the two bandwidths) are those that maximise the IoU with a **reference
mask** on that view:

- SPIn-NeRF: the first frame's mask (the prompt itself);
- NVOS: a SAM mask predicted from the reference scribbles;
- a user's own mask (``prompt.mask=``).

The chosen 2D threshold then segments every other view the same way (render, min-max normalise,
threshold). For a 3D selection (``mask3d``, removal, 3D IoU) the per-Gaussian scores are min-max
normalised and binarised at the threshold whose rendered selection best matches the same reference
mask.

With scribbles only and no SAM there is no reference mask. The fallback keeps the refiner's own
default bandwidths and says which rule it used (:data:`FALLBACKS`, recorded in ``results.json``):

- ``uplift``: both thresholds by Li's method (the rule the thesis uses for SAM 2 on NVOS): in 2D on
  the rendered reference view, in 3D over the normalised scores of the Gaussians that view sees;
- ``diffusion``: the reached Gaussians, ``h > 0`` (``τ = 0``, as C.1.4 for diffused scores), 2D
  masks rendered from that selection;
- ``sam``: a Gaussian is selected when more than half of its SAM masks cover it (``h > 0.5``), 2D
  masks rendered from that selection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from fulcra.camera import Camera

from .metrics import iou
from .thresholds import li, rescale

__all__ = [
    "THRESHOLDS",
    "FALLBACKS",
    "Tuning",
    "best_threshold",
    "reference_iou",
    "choose_threshold_2d",
    "choose_threshold_3d",
    "mask_2d",
    "mask_3d",
    "tune",
]

#: the official threshold sweep: ``1 - k/100`` for ``k = 1..97`` on min-max normalised maps
THRESHOLDS = tuple(round(1 - k / 100, 2) for k in range(1, 98))

#: what happens without a reference mask, per route
FALLBACKS = {
    "uplift": "no reference mask: thresholds by Li's method (2D: on the rendered reference view; 3D: over the normalised scores of the Gaussians the reference view sees)",
    "diffusion": "no reference mask: the refiner's default bandwidths and its fallback_params (graph_diffusion: only reached Gaussians at least as similar to the prompt as its least similar anchor); h > 0, 2D masks rendered from that selection",
    "sam": "no reference mask: Gaussians covered by more than half of their SAM masks (h > 0.5), 2D masks rendered from that selection",
    "single_view": "no reference mask: Li's threshold on each view's normalised score map; 3D: a Gaussian's uplifted vote > 0.5",
    "geometry": "no reference mask: Gaussians with more than half of their reference-view rendering weight inside the prompt (h > 0.5), 2D masks rendered from that selection",
}


@dataclass
class Tuning:
    """What the protocol chose on the reference view, and how well it matched there.

    Attributes:
        reference: where the reference mask came from (``prompt mask``, ``sam``, ``user mask``,
            ``ground truth``) or the route's entry of :data:`FALLBACKS`.
        threshold_2d: on the min-max normalised rendered scores of a view.
        threshold_3d: on the min-max normalised per-Gaussian scores.
        iou_2d / iou_3d: IoU with the reference mask on the reference view of the 2D mask and of the
            rendered 3D selection (None without a reference mask).
        params: the refiner parameters chosen (bandwidths), ``{}`` when nothing was searched.
        grid: every point tried, ``{params..., "iou_2d": ...}``.
        mode_2d: ``scores`` (a view's 2D mask: its rendered scores, normalised, ``> threshold_2d``)
            or ``selection`` (the rendered 3D selection, ``> 0.5``).
    """

    reference: str
    threshold_2d: float
    threshold_3d: float
    iou_2d: float | None = None
    iou_3d: float | None = None
    params: dict = field(default_factory=dict)
    grid: list = field(default_factory=list)
    mode_2d: str = "scores"

    def as_dict(self) -> dict:
        return asdict(self)


def _render(scene, scores: torch.Tensor, camera: Camera) -> torch.Tensor:
    from .segmentation import render_scores

    return render_scores(scene, scores, camera)


def best_threshold(norm: torch.Tensor, target: torch.Tensor, grid: Sequence[float] = THRESHOLDS) -> tuple[float, float]:
    """The threshold of ``grid`` whose ``norm > t`` has the highest IoU with ``target`` (the first
    in grid order among equals, as the official loop). ``norm``: ``[H, W]`` or ``[H, W, K]`` maps in
    [0, 1] (then one IoU per candidate channel, ``t`` the channel's grid value). Returns ``(t, iou)``."""
    tgt = torch.as_tensor(target).bool().to(norm.device)
    best = (float(grid[0]), -1.0)
    for j, t in enumerate(grid):
        m = norm[..., j] if norm.ndim == 3 else norm > t
        v = iou(m, tgt)
        if v > best[1]:
            best = (float(t), v)
    return best


def reference_iou(scene, scores: torch.Tensor, camera: Camera, target: torch.Tensor) -> tuple[float, float]:
    """The official 2D protocol on one view: render, min-max normalise, best threshold by IoU."""
    return best_threshold(rescale(_render(scene, scores, camera).float()), target)


def choose_threshold_2d(
    scene, scores: torch.Tensor, camera: Camera, target: torch.Tensor | None
) -> tuple[float, float | None]:
    """The 2D threshold on ``camera`` (the reference view): by IoU with ``target``, or Li's without."""
    norm = rescale(_render(scene, scores, camera).float())
    if target is None:
        return (li(norm) if float(norm.max()) > 0 else 0.5), None
    return best_threshold(norm, target)


def choose_threshold_3d(
    scene,
    scores: torch.Tensor,
    camera: Camera,
    target: torch.Tensor | None,
    render_threshold: float = 0.5,
    chunk: int = 32,
) -> tuple[float, float | None]:
    """The 3D threshold: the one whose binarised selection, rendered on ``camera`` and kept where its
    coverage exceeds ``render_threshold``, has the best IoU with ``target``; Li's method over the
    normalised scores of the Gaussians this view sees when there is no target."""
    s = rescale(scores.float())
    if target is None:
        seen = s[_seen(scene, camera, s)]
        pos = seen[seen > 0]
        return (li(pos) if pos.numel() > 1 else 0.0), None
    best = (THRESHOLDS[0], -1.0)
    tgt = torch.as_tensor(target).bool()
    for a in range(0, len(THRESHOLDS), chunk):
        ts = THRESHOLDS[a : a + chunk]
        stack = torch.stack([(s > t).float() for t in ts], 1)  # [N, K] candidate selections
        img = _render(scene, stack, camera) > render_threshold  # [H, W, K]
        t, v = best_threshold(img, tgt, ts)
        if v > best[1]:
            best = (t, v)
    return best


def _seen(scene, camera: Camera, like: torch.Tensor) -> torch.Tensor:
    """Gaussians with a positive rendering weight in ``camera`` (a one-view uplift of ones)."""
    import fulcra

    ones = torch.ones(camera.height, camera.width)
    _, w = fulcra.uplift(scene, [(camera, ones)], normalize=False)
    return (w > 0).to(like.device)


def mask_2d(scene, scores: torch.Tensor, camera: Camera, tuning: Tuning | float) -> torch.Tensor:
    """A view's 2D mask under the protocol: render, min-max normalise, ``> threshold_2d`` (or, with
    ``tuning.mode_2d == "selection"``, the rendered 3D selection ``> 0.5``)."""
    if isinstance(tuning, Tuning) and tuning.mode_2d == "selection":
        return _render(scene, mask_3d(scores, tuning.threshold_3d).float(), camera) > 0.5
    t = tuning.threshold_2d if isinstance(tuning, Tuning) else float(tuning)
    return rescale(_render(scene, scores, camera).float()) > t


def mask_3d(scores: torch.Tensor, threshold_3d: float | Tuning) -> torch.Tensor:
    """The 3D selection under the protocol: min-max normalised scores ``> threshold_3d``."""
    t = threshold_3d.threshold_3d if isinstance(threshold_3d, Tuning) else float(threshold_3d)
    return rescale(scores.float()) > t


def tune(
    scene,
    camera: Camera,
    target: torch.Tensor | None,
    route: Callable[[dict], torch.Tensor],
    grid: Sequence[dict] = (),
    reference: str = "prompt mask",
    kind: str = "uplift",
    log: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, Tuning]:
    """Run ``route(params) -> scores [N]`` for every point of ``grid`` (``[{}]`` when empty), keep the
    point with the best reference IoU, and choose both thresholds for it.

    Args:
        camera: the reference view; ``target``: ``[H, W]`` bool reference mask on it, or None
            (no search: ``route({})``, thresholds by ``FALLBACKS[kind]``).
        grid: refiner parameter dicts (a TunableRefiner's ``tuning_grid``).
        reference: a word for ``results.json`` saying where ``target`` came from.
        kind: the route (``uplift``, ``diffusion``, ``sam``), for the fallback rule.

    Returns:
        ``(scores of the chosen point, Tuning)``.
    """
    if target is None:
        scores = route({})
        if kind == "uplift":
            t2, _ = choose_threshold_2d(scene, scores, camera, None)
            t3, _ = choose_threshold_3d(scene, scores, camera, None)
            return scores, Tuning(FALLBACKS["uplift"], float(t2), float(t3))
        # h > 0 (diffusion) or h > 0.5 (sam) on the raw scores, as a threshold on the normalised ones
        raw = 0.0 if kind == "diffusion" else 0.5
        lo, hi = float(scores.min()), float(scores.max())
        t3 = (raw - lo) / (hi - lo) if hi > lo else 0.0
        return scores, Tuning(FALLBACKS[kind], 0.5, float(t3), mode_2d="selection")
    points = list(grid) or [{}]
    tried, best = [], None
    for params in points:
        scores = route(params)
        if len(points) > 1:
            t, v = reference_iou(scene, scores, camera, target)
            tried.append({**params, "threshold_2d": t, "iou_2d": round(v, 4)})
            if log is not None:
                log(f"{params}: reference IoU {v:.3f} at threshold {t}")
            if best is None or v > best[0]:
                best = (v, params, scores)
        else:
            best = (None, params, scores)
    _, params, scores = best
    t2, v2 = choose_threshold_2d(scene, scores, camera, target)
    t3, v3 = choose_threshold_3d(scene, scores, camera, target)
    return scores, Tuning(
        reference=reference,
        threshold_2d=float(t2),
        threshold_3d=float(t3),
        iou_2d=None if v2 is None else round(float(v2), 4),
        iou_3d=None if v3 is None else round(float(v3), 4),
        params=dict(params),
        grid=tried,
    )
