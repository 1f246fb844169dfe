"""Multi-view segmentation from scribbles or a reference mask (thesis §5.4.1, app. C.1.1-C.1.3).

Three routes, as in the ablation of Table 5.2:

- **single view**: the 2D features of each target view are compared with the reference
  foreground features (no 3D at all);
- **uplifting**: features uplifted to the Gaussians (Eq. 5.3) are scored against the reference
  foreground features (cosine similarity to their mean for scribbles, a logistic regression for a
  full mask, C.1.2);
- **uplifting + graph diffusion**: the reference prompt is uplifted to initial weights ``g_0`` and
  refined by the ``graph_diffusion`` refiner over the uplifted features (C.1.3).

Every route ends with a per-Gaussian score; :func:`binarise_3d` turns it into a 3D mask and
:func:`render_mask` into a 2D mask for any camera ("3D object selection then render").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fulcra.camera import Camera

from .thresholds import li, otsu

__all__ = [
    "render_scores",
    "render_mask",
    "uplift_mask",
    "clicks_to_mask",
    "feature_scorer",
    "binarise_3d",
    "segment_uplift",
    "segment_diffusion",
    "segment_single_view",
    "Segmentation3D",
    "build_refiner",
    "scene_positions",
    "render_alpha",
]


def render_scores(scene, scores: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Render per-Gaussian scores ``[N]`` or ``[N, Q]`` into ``[H, W]`` or ``[H, W, Q]``."""
    s = scores.float()
    squeeze = s.ndim == 1
    s = s[:, None] if squeeze else s
    dev = getattr(scene, "device", s.device)
    with torch.no_grad():
        img = scene.render(s.to(dev), camera)
    return img[..., 0] if squeeze else img


def render_alpha(scene, camera: Camera) -> torch.Tensor:
    """Accumulated opacity ``[H, W]``: the scene's own ``render_alpha`` (an ``AlphaScene``), else the
    render of a constant feature 1 (the same for a linear renderer)."""
    from fulcra.interfaces import AlphaScene

    if isinstance(scene, AlphaScene):
        with torch.no_grad():
            return scene.render_alpha(camera)
    return render_scores(scene, torch.ones(scene.num_primitives), camera)


def render_mask(scene, mask3d: torch.Tensor, camera: Camera, threshold: float = 0.5) -> torch.Tensor:
    """The 2D mask of a boolean 3D selection ``[N]`` on ``camera``: render it, keep pixels ``> threshold``."""
    return render_scores(scene, mask3d.float(), camera) > threshold


def uplift_mask(
    scene, camera: Camera, mask2d: torch.Tensor, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uplift one view's 2D mask ``[H, W]`` to the Gaussians (Eq. 5.3 with a single view).

    Args:
        normalize: divide by the weight sums (Eq. 5.3); False gives ``Wᵀ M``, how much each Gaussian
            contributes to the rendered mask. The latter ranks anchors (C.1.3): a Gaussian hidden
            behind the object whose few, faint contributions all fall inside the mask has a
            normalised value of 1 but almost no contribution.

    Returns:
        ``(g [N], weights [N])``: the mask value of each Gaussian (0 for Gaussians this view does not
        see) and its rendering-weight sum in this view.
    """
    import fulcra

    m = torch.as_tensor(mask2d).float()
    if m.shape != (camera.height, camera.width):
        raise ValueError(
            f"mask for camera {camera.name!r} must be [{camera.height}, {camera.width}], got {list(m.shape)}"
        )
    g, w = fulcra.uplift(scene, [(camera, m)], normalize=normalize)
    return g[:, 0], w


def clicks_to_mask(clicks: Sequence[Sequence[float]], height: int, width: int, radius: float = 3.0) -> torch.Tensor:
    """A boolean ``[H, W]`` mask of discs of ``radius`` pixels around clicked ``(x, y)`` pixels."""
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    m = torch.zeros(height, width, dtype=torch.bool)
    for x, y in clicks:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"click ({x}, {y}) lies outside the {width}x{height} view")
        m |= (xx - (x + 0.5)) ** 2 + (yy - (y + 0.5)) ** 2 <= radius**2
    return m


def feature_scorer(
    ref_features: torch.Tensor,
    foreground: torch.Tensor,
    kind: str = "scribble",
    C: float = 0.01,
    max_samples: int = 50_000,
    seed: int = 0,
    negative: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score ``P`` of C.1.2, learnt from the reference view.

    Args:
        ref_features: ``[M, D]`` features of the reference view's pixels (rendered or 2D).
        foreground: ``[M]`` bool, the prompt's pixels.
        kind: ``scribble`` -> cosine similarity to the mean foreground feature, mapped to [0, 1];
            ``mask`` -> probability of a logistic regression (balanced classes) trained on all pixels.
        negative: ``[M]`` bool negative scribbles (``scribble`` only): the score becomes the
            similarity to the positives minus the similarity to the negatives, as the official
            code's ``scribble_3d_similarities``, mapped to [0, 1]: ``(2 + cos(x, m+) - cos(x, m-)) / 4``.

    Returns:
        a function mapping features ``[..., D]`` to scores ``[...]`` in [0, 1].
    """
    f = torch.nn.functional.normalize(ref_features.float(), dim=-1)
    fg = foreground.bool().flatten()
    if not bool(fg.any()):
        raise ValueError("the prompt covers no pixel with features (empty scribble or mask)")
    neg = None if negative is None else negative.bool().flatten() & ~fg
    if neg is not None and kind != "scribble":
        raise ValueError("negative scribbles go with a scribble prompt, not a mask")
    if kind == "scribble":
        mean = torch.nn.functional.normalize(f[fg].mean(0), dim=0)
        if neg is not None and bool(neg.any()):
            mean_n = torch.nn.functional.normalize(f[neg].mean(0), dim=0)

            def score_pn(x: torch.Tensor) -> torch.Tensor:
                xn = torch.nn.functional.normalize(x.float(), dim=-1)
                return 0.25 * (2.0 + xn @ mean.to(x.device) - xn @ mean_n.to(x.device))

            return score_pn

        def score(x: torch.Tensor) -> torch.Tensor:
            return 0.5 * (1.0 + torch.nn.functional.normalize(x.float(), dim=-1) @ mean.to(x.device))

        return score
    if kind != "mask":
        raise ValueError(f"prompt kind must be scribble or mask, got {kind!r}")
    from sklearn.linear_model import LogisticRegression

    X, y = f.cpu().numpy(), fg.cpu().numpy()
    if y.all():
        return lambda x: torch.ones(x.shape[:-1], device=x.device)
    if len(y) > max_samples:
        idx = np.random.default_rng(seed).choice(len(y), max_samples, replace=False)
        idx = np.union1d(idx, np.nonzero(y)[0][:max_samples])
        X, y = X[idx], y[idx]
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=1000).fit(X, y.astype(int))

    def score_lr(x: torch.Tensor) -> torch.Tensor:
        xn = torch.nn.functional.normalize(x.float(), dim=-1)
        p = model.predict_proba(xn.reshape(-1, xn.shape[-1]).cpu().numpy())[:, 1]
        return torch.from_numpy(p.astype(np.float32)).reshape(x.shape[:-1]).to(x.device)

    return score_lr


def binarise_3d(scores: torch.Tensor, threshold: float | str = "otsu") -> torch.Tensor:
    """A boolean 3D mask from per-Gaussian scores ``[N]``: ``> threshold``, or Otsu (Li) among the positive scores."""
    s = scores.float()
    if isinstance(threshold, str):
        if threshold not in ("otsu", "li"):
            raise ValueError(f"threshold must be a number, 'otsu' or 'li', got {threshold!r}")
        pos = s[s > 0]
        if pos.numel() == 0:
            return torch.zeros_like(s, dtype=torch.bool)
        t = (otsu(pos) if threshold == "otsu" else li(pos)) if pos.numel() > 1 else 0.0
        # Otsu splits the positive scores in two; when they are all alike keep them all
        return s > t if float(pos.min()) < t else s > 0
    return s > float(threshold)


@dataclass
class Segmentation3D:
    """A 3D segmentation: per-Gaussian ``scores [N]`` and, when computed, the diffusion's details."""

    scores: torch.Tensor
    g0: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    #: SAM route: camera name -> ``[H, W]`` bool, the reprojected prompt pixels SAM drew its points from
    prompts: dict | None = None
    #: what the reference-view protocol chose (:class:`.reference.Tuning`), when it ran
    tuning: Any = None

    def mask(self, threshold: float | str | None = None) -> torch.Tensor:
        """The 3D selection: by the protocol's threshold when it ran (``threshold=None``), else
        ``binarise_3d(scores, threshold or "otsu")``."""
        if threshold is None and self.tuning is not None:
            from .reference import mask_3d

            return mask_3d(self.scores, self.tuning)
        return binarise_3d(self.scores, "otsu" if threshold is None else threshold)


def _reference_pixels(scene, features3d: torch.Tensor, camera: Camera) -> torch.Tensor:
    return render_scores(scene, features3d, camera).reshape(-1, features3d.shape[1])  # [H*W, D]


def segment_uplift(
    scene,
    features3d: torch.Tensor,
    camera: Camera,
    prompt: torch.Tensor,
    kind: str = "scribble",
    negative: torch.Tensor | None = None,
) -> Segmentation3D:
    """Uplifting route: score every Gaussian's uplifted feature with ``P`` learnt on the reference view.

    ``P`` is trained on the features *rendered* on the reference view at the prompt's pixels (C.1.2)
    and applied to the per-Gaussian features, so the result is a 3D score that renders to any view.

    Args:
        features3d: ``[N, D]`` uplifted features.
        camera: the reference view; ``prompt``: ``[H, W]`` bool scribbles or mask on it.
        negative: ``[H, W]`` bool negative scribbles (see :func:`feature_scorer`), or None.
    """
    ref = _reference_pixels(scene, features3d, camera)
    alpha = render_alpha(scene, camera).flatten() > 0.5
    fg = torch.as_tensor(prompt).bool().flatten()
    neg = None if negative is None else torch.as_tensor(negative).bool().flatten()[alpha]
    P = feature_scorer(ref[alpha], fg[alpha], kind, negative=neg)
    return Segmentation3D(scores=P(features3d.to(ref.device)))


def segment_diffusion(
    scene,
    features3d: torch.Tensor,
    camera: Camera,
    prompt: torch.Tensor,
    kind: str = "scribble",
    refiner=None,
    weights: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
) -> Segmentation3D:
    """Uplifting + graph diffusion route (C.1.3): ``g_0`` = the uplifted prompt, refined by ``refiner``.

    Args:
        scene: any scene plugin (``positions``, ``render``).
        features3d: ``[N, D]`` uplifted features (the similarity of the graph).
        refiner: any ``refiners`` plugin, an instance or a name (default: ``graph_diffusion`` with its
            default parameters); only its ``refine`` is called, with ``prompt=kind``, ``weights=``
            and ``reference_weights=`` (the reference view's rendering weights of each Gaussian, the
            official sample weights of the mask route's logistic regression). ``graph_diffusion``
            caches its graph, so reuse one refiner across prompts of the same scene.
        weights: ``[N]`` rendering-weight sums over all views (pruning of the lightest Gaussians).
        negative: ``[H, W]`` bool negative scribbles, uplifted as ``Wᵀ M-`` and passed to the
            refiner as ``negative=`` (the Refiner interface's optional negative prompt; the
            official code diffuses the signed uplift of positive minus negative scribbles).

    Returns:
        ``Segmentation3D`` with the refined ``scores [N]`` and ``g0 [N]``, the uplifted prompt.
    """
    refiner = build_refiner(refiner)
    # the uplifted prompt as the Refiner interface defines it (Wᵀ M, unnormalised) and the reference
    # view's weights Wᵀ 1: their ratio is the normalised uplift (Eq. 5.3) that graph_diffusion ranks
    # anchors by, as the thesis and the official code
    g0, w_ref = uplift_mask(scene, camera, torch.as_tensor(prompt).float(), normalize=False)
    kw: dict = {}
    if negative is not None:
        kw["negative"] = uplift_mask(scene, camera, torch.as_tensor(negative).float(), normalize=False)[0][:, None]
    scores = refiner.refine(
        scene_positions(scene), features3d, g0[:, None], prompt=kind, weights=weights, reference_weights=w_ref, **kw
    )
    return Segmentation3D(scores=torch.as_tensor(scores)[:, 0].float(), g0=g0, weights=weights)


def build_refiner(refiner=None):
    """A refiner instance: ``refiner`` itself, or the ``refiners`` plugin of that name (or config node
    ``{name: ..., params}``) built through the registry; ``None``: ``graph_diffusion``."""
    if refiner is None or isinstance(refiner, (str, dict)) or hasattr(refiner, "keys"):
        import fulcra

        return fulcra.create("refiners", "graph_diffusion" if refiner is None else refiner)
    return refiner


def scene_positions(scene) -> torch.Tensor:
    """``scene.positions`` ``[N, 3]`` (declared by SceneRepresentation), checked; one-line error naming the plugin."""
    pos = getattr(scene, "positions", None)
    if pos is None:
        raise TypeError(f"scene {type(scene).__name__} has no 'positions' [N, 3], which SceneRepresentation declares")
    pos = torch.as_tensor(pos)
    if pos.shape != (scene.num_primitives, 3):
        raise ValueError(
            f"scene {type(scene).__name__}: positions must be [N={scene.num_primitives}, 3], got {list(pos.shape)}"
        )
    return pos


def segment_single_view(
    ref_map: torch.Tensor,
    prompt: torch.Tensor,
    target_maps: Sequence[torch.Tensor],
    kind: str = "scribble",
    threshold: str | float = "otsu",
) -> list[torch.Tensor]:
    """Single-view route: per target view, score its own 2D features against the reference foreground.

    Args:
        ref_map: ``[D, H, W]`` 2D features of the reference view (resized to the image).
        prompt: ``[H, W]`` bool.
        target_maps: ``[D, H, W]`` 2D features per target view.

    Returns:
        one ``[H, W]`` bool mask per target view (Otsu threshold of its score map by default).
    """
    D = ref_map.shape[0]
    P = feature_scorer(ref_map.reshape(D, -1).T, torch.as_tensor(prompt).bool().flatten(), kind)
    out = []
    for fmap in target_maps:
        s = P(fmap.reshape(fmap.shape[0], -1).T).reshape(fmap.shape[1:])
        t = otsu(s) if threshold == "otsu" else float(threshold)
        out.append(s > t)
    return out


def reproject_prompt(
    scene,
    ref: Camera,
    prompt: torch.Tensor,
    cameras: Sequence[Camera],
    tau: float = 0.4,
    min_weight: float = 0.0,
    rule: str = "mean",
) -> dict:
    """Point prompts for SAM on every view (C.1.1): uplift the reference prompt, render it on each view
    and keep the pixels SAM's points are drawn from.

    Args:
        tau: 0.4 SPIn-NeRF, 1.0 NVOS.
        rule: ``mean`` (the thesis): the rendering divided by its mean over the covered pixels,
            ``> tau``; ``top`` (the official code): the ``floor(tau * sum)`` highest pixels of the
            rendering divided by its maximum.
        min_weight: optionally (0: off, as the thesis) zero the Gaussians whose reference-view weight
            is under this fraction of the median: the faint ones hidden behind the object, whose
            normalised value is 1 from a few contributions, reproject the prompt onto what lies behind.

    Returns:
        camera name -> ``[H, W]`` bool (may be empty for views that do not see the object).
    """
    if rule not in ("mean", "top"):
        raise ValueError(f"reproject_prompt: rule must be mean or top, got {rule!r}")
    g, w = uplift_mask(scene, ref, torch.as_tensor(prompt).float())
    seen = w[w > 0]
    if min_weight > 0 and seen.numel():
        g = g * (w >= min_weight * float(seen.median()))
    out = {}
    for cam in cameras:
        img = render_scores(scene, g, cam)
        pos = img[img > 0]
        if not pos.numel():
            out[cam.name] = torch.zeros_like(img, dtype=torch.bool)
        elif rule == "mean":
            out[cam.name] = img / pos.mean() > tau
        else:
            r = img / img.max()
            n = int(float(r.sum()) * tau)
            m = torch.zeros(img.numel(), dtype=torch.bool, device=img.device)
            if n > 0:  # a stable sort: ties resolve by pixel index on every device
                m[torch.sort(r.flatten(), descending=True, stable=True).indices[:n]] = True
            out[cam.name] = m.reshape(img.shape)
    out[ref.name] = (
        torch.as_tensor(prompt).bool().to(out[ref.name].device) if ref.name in out else torch.as_tensor(prompt).bool()
    )
    return out


def segment_sam(
    scene,
    cameras: Sequence[Camera],
    images,
    ref: Camera,
    prompt: torch.Tensor,
    extractor,
    tau: float = 0.4,
    progress: Callable[[int, int], None] | None = None,
    rule: str = "mean",
) -> Segmentation3D:
    """SAM / SAM 2 masks uplifted (§5.4.1, C.1.1): per view, point prompts from the reprojected
    reference prompt, the ``sam``/``sam2`` extractor's averaged masks (random 3-point prompts, repeats
    averaged), then the masks of all views uplifted to per-Gaussian scores in [0, 1].

    Args:
        cameras: the views whose SAM masks are uplifted (include ``ref``: its own prompt is used there).
        images: camera name -> ``[3, h, w]`` image in [0, 1]; an image whose size differs from its
            camera's gets the prompt resized to it (nearest) and its mask resized back (bilinear).
        ref: the reference view; ``prompt``: ``[H, W]`` bool scribble or mask on it.
        extractor: a ``sam`` or ``sam2`` feature extractor (``positive=`` masks of prompt pixels); the
            first channel of its output is used.
        tau: keep reprojected pixels above ``tau`` times the mean (0.4 SPIn-NeRF, 1.0 NVOS).
        rule: how prompts are drawn from the reprojection (:func:`reproject_prompt`).
        progress: called as ``progress(i, n)`` after each view.

    Returns:
        ``Segmentation3D`` with ``scores [N]`` in [0, 1] (``[N, 3]``, one column per SAM mask, for an
        extractor with ``mask="all"``), ``weights [N]`` and ``prompts`` (camera name ->
        ``[H, W]`` bool, the pixels SAM's point prompts were drawn from; empty for views that do not see
        the object, which contribute a zero mask).
    """
    from fulcra.uplift import resize_to_camera

    from .lifting import uplift_views

    points = reproject_prompt(scene, ref, prompt, cameras, tau, rule=rule)
    dev = torch.device(getattr(extractor, "device", None) or "cpu")

    def sam_mask(i: int, cam: Camera) -> torch.Tensor:  # [C, H, W]: SAM's averaged masks from this view's prompts
        pos = points[cam.name].cpu()
        m = torch.zeros(channels, cam.height, cam.width)
        if bool(pos.any()):
            img = torch.as_tensor(images[cam.name])
            if img.shape[-2:] != pos.shape:  # prompt to the image's size (nearest keeps it boolean)
                pos = (
                    torch.nn.functional.interpolate(
                        pos[None, None].float(), size=tuple(img.shape[-2:]), mode="nearest"
                    )[0, 0]
                    > 0.5
                )
            if bool(pos.any()):
                with torch.no_grad():
                    out = extractor(img[None].to(dev), positive=pos[None])  # [1, C, h, w] in [0, 1]
                m = resize_to_camera(out[0].float().cpu(), cam)
        if progress is not None:
            progress(i + 1, len(cameras))
        return m[:channels]

    channels = int(getattr(extractor, "dim", 1) or 1)
    up = uplift_views(scene, cameras, images, extractor, out=None, view_map=sam_mask)
    scores, weights = up.features, up.weights
    return Segmentation3D(scores=scores[:, 0] if channels == 1 else scores, weights=weights, prompts=points)


__all__ += ["reproject_prompt", "segment_sam"]


def sam_reference_mask(extractor, image: torch.Tensor, prompt: torch.Tensor, camera: Camera) -> torch.Tensor:
    """The NVOS reference mask (C.1.3): SAM prompted with random 3-point subsets of the reference
    scribbles (the ``sam``/``sam2`` extractor's averaged masks), binarised by Li's method as the
    official evaluation. Returns ``[H, W]`` bool at the camera's size."""
    from fulcra.uplift import resize_to_camera

    from .thresholds import li

    img = torch.as_tensor(image)
    pos = torch.as_tensor(prompt).bool()
    if img.shape[-2:] != pos.shape:
        pos = (
            torch.nn.functional.interpolate(pos[None, None].float(), size=tuple(img.shape[-2:]), mode="nearest")[0, 0]
            > 0.5
        )
    dev = torch.device(getattr(extractor, "device", None) or "cpu")
    with torch.no_grad():
        out = extractor(img[None].to(dev), positive=pos[None].to(dev))  # [1, C, h, w]
    m = resize_to_camera(out[0, :1].float().cpu(), camera)[0]
    if float(m.max()) <= float(m.min()):
        return m > 0.5
    return m > li(m)


def segment_with_reference(
    scene,
    ref: Camera,
    prompt: torch.Tensor,
    kind: str,
    method: str,
    *,
    features: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    refiner=None,
    target: torch.Tensor | None = None,
    reference: str = "prompt mask",
    search: bool = True,
    cameras: Sequence[Camera] | None = None,
    images=None,
    extractor=None,
    tau: float = 0.4,
    rule: str = "mean",
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    negative: torch.Tensor | None = None,
):
    """One segmentation route under the reference-view protocol (:mod:`.reference`).

    Args:
        ref, prompt, kind: the reference view and its scribble or mask (``kind``).
        method: ``uplift`` | ``diffusion`` | ``sam``.
        features, weights: the uplifted features ``[N, D]`` and weight sums (uplift, diffusion).
        refiner: the diffusion's refiner; a :class:`~fulcra.interfaces.TunableRefiner` has its
            bandwidth grid searched on ``target`` (when ``search``).
        target: ``[H, W]`` bool reference mask on ``ref`` (None: the fallback rule).
        reference: where ``target`` came from, for ``results.json``.
        cameras, images, extractor, tau, rule: the SAM route (:func:`segment_sam`); an extractor with
            ``mask="all"`` has SAM's mask index chosen on ``target``.
        negative: ``[H, W]`` bool negative scribbles on ``ref`` (uplift and diffusion routes), or None.

    Returns:
        ``(Segmentation3D, Tuning)``: the chosen scores and what the protocol chose.
    """
    from fulcra.interfaces import TunableRefiner

    from . import reference as R

    extra: dict = {}
    grid: list = []
    if method == "uplift":

        def route(p):
            return segment_uplift(scene, features, ref, prompt, kind, negative).scores

    elif method == "diffusion":
        refiner = build_refiner(refiner)
        if isinstance(refiner, TunableRefiner):
            if target is None:
                refiner = refiner.with_params(**refiner.fallback_params(kind))
            elif search:
                grid = list(refiner.tuning_grid(kind))

        def route(p):
            seg = segment_diffusion(
                scene, features, ref, prompt, kind, refiner.with_params(**p) if p else refiner, weights, negative
            )
            extra["g0"] = seg.g0
            return seg.scores

    elif method == "sam":
        if negative is not None:
            raise ValueError("negative scribbles go with method=uplift or diffusion, not sam")
        seg = segment_sam(scene, cameras, images, ref, prompt, extractor, tau=tau, progress=progress, rule=rule)
        S = seg.scores
        extra.update(weights=seg.weights, prompts=seg.prompts)
        if S.ndim == 2 and target is not None and search:
            grid = [{"mask_index": i} for i in range(S.shape[1])]

        def route(p):
            return S[:, int(p.get("mask_index", 0))] if S.ndim == 2 else S

    else:
        raise ValueError(f"method must be uplift, diffusion or sam, got {method!r}")
    scores, tuning = R.tune(scene, ref, target, route, grid, reference, kind=method, log=log)
    seg = Segmentation3D(
        scores=scores, g0=extra.get("g0"), weights=extra.get("weights", weights), prompts=extra.get("prompts")
    )
    seg.tuning = tuning
    return seg, tuning


__all__ += ["sam_reference_mask", "segment_with_reference"]
