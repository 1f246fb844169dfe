"""Pictures of LUDVIG's intermediate results: the graph diffusion at a few steps (thesis Fig. C.3),
relevancy heat maps per text query and localisation plots (as LERF and LangSplat show them).

Everything here returns images as ``[H, W, 3]`` float tensors in [0, 1] and saves PNGs when given a
path. Colour maps come from matplotlib (the ``plots`` extra); without it the functions raise
:class:`~fulcra.errors.MissingDependencyError` naming the extra, and the workflows skip the figures
with one line. The diffusion pictures need a refiner that is a
:class:`~fulcra.interfaces.SnapshotRefiner` (``graph_diffusion`` is one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fulcra.camera import Camera
from fulcra.errors import MissingDependencyError

__all__ = [
    "colormap",
    "heatmap",
    "diffusion_steps",
    "relevancy_heatmaps",
    "localisation_plot",
    "save_image",
]


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
    except ImportError as e:  # pragma: no cover - the plots extra is part of dev installs
        raise MissingDependencyError("figures need matplotlib: pip install 'fulcra[plots]'", extra="plots") from e
    return matplotlib


def colormap(values: torch.Tensor, cmap: str = "turbo") -> torch.Tensor:
    """``values [H, W]`` in [0, 1] -> ``[H, W, 3]`` float32 colours of matplotlib's ``cmap``."""
    mpl = _matplotlib()
    v = values.detach().float().cpu().clamp(0, 1).numpy()
    rgb = mpl.colormaps[cmap](v)[..., :3]
    return torch.from_numpy(rgb.astype(np.float32))


def heatmap(
    values: torch.Tensor,
    image: torch.Tensor | None = None,
    cmap: str = "turbo",
    floor: float = 0.0,
    alpha: float = 0.6,
) -> torch.Tensor:
    """A heat map of ``values [H, W]`` (min-max normalised over the view), optionally over ``image``.

    Args:
        image: ``[H, W, 3]`` or ``[3, H, W]`` in [0, 1]; pixels whose normalised value is at most
            ``floor`` show the image alone (dimmed), the others its blend with the colour map
            (``alpha`` the colour's share), as LERF's and the official code's relevancy pictures.
        floor: 0 colours every pixel above the minimum.

    Returns:
        ``[H, W, 3]`` float32 in [0, 1].
    """
    v = values.detach().float().cpu()
    lo, hi = float(v.min()), float(v.max())
    n = (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)
    col = colormap(n, cmap)
    if image is None:
        return col
    img = _hwc(image)
    if img.shape[:2] != v.shape:
        raise ValueError(f"heatmap: image is {list(img.shape[:2])}, values {list(v.shape)}")
    hot = (n > floor)[..., None]
    return torch.where(hot, alpha * col + (1 - alpha) * img, 0.6 * img)


def _hwc(image: torch.Tensor) -> torch.Tensor:
    img = torch.as_tensor(image).detach().float().cpu()
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    return img.clamp(0, 1)


def save_image(image: torch.Tensor, path: str | Path, label: str = "", min_width: int = 480) -> Path:
    """Save ``[H, W, 3]`` in [0, 1] as a PNG, enlarged (nearest) to at least ``min_width`` pixels,
    with ``label`` written in the top-left corner."""
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (_hwc(image).numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr)
    if min_width and im.width < min_width:
        f = -(-min_width // im.width)
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    if label:
        draw = ImageDraw.Draw(im)
        x0, y0, x1, y1 = draw.textbbox((4, 4), label)
        draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 255))
    im.save(path)
    return path


def _log_scale(img: torch.Tensor, decades: float) -> torch.Tensor:
    """``img / max`` on a logarithmic scale over ``decades`` decades, in [0, 1] (0 where ``img`` is 0)."""
    mx = float(img.max())
    if mx <= 0:
        return torch.zeros_like(img)
    r = (img / mx).clamp_min(0)
    v = 1 + torch.log10(r.clamp_min(10.0**-decades)) / decades
    return torch.where(r > 0, v, torch.zeros_like(v))


def diffusion_steps(
    scene,
    camera: Camera,
    prompt: torch.Tensor,
    features: torch.Tensor,
    refiner: Any = None,
    steps: Sequence[int] = (1, 5, 20, 100),
    *,
    kind: str = "scribble",
    weights: torch.Tensor | None = None,
    view: Camera | None = None,
    image: torch.Tensor | None = None,
    out: str | Path | None = None,
    scale: str = "log",
    decades: float = 4.0,
    cmap: str = "inferno",
) -> dict[int, torch.Tensor]:
    """The weight vector ``g_t`` of the graph diffusion (Eq. 5.8) rendered after each of ``steps``
    (thesis Fig. C.3): the diffusion starts on the anchors of the prompt and spreads over the object.

    The prompt is uplifted from ``camera`` as :func:`.segmentation.segment_diffusion` does
    (``Wᵀ M`` with the reference view's weights), and the refiner's
    :meth:`~fulcra.interfaces.SnapshotRefiner.snapshots` gives ``g_t`` for the same inputs.

    Args:
        camera: the reference view; ``prompt``: ``[H, W]`` bool (or [0, 1]) scribble or mask on it.
        features: ``[N, D]`` uplifted features (the graph's similarity).
        refiner: a SnapshotRefiner instance or name (default ``graph_diffusion``), with the
            parameters the segmentation used (e.g. ``refiner.with_params(**tuning.params)``).
        steps: the step counts ``t`` (0 gives ``g_0``).
        kind: the prompt kind (``scribble``, ``mask``).
        weights: ``[N]`` rendering-weight sums over all views (pruning, as the segmentation).
        view: the camera the pictures are rendered from (default ``camera``).
        image: ``[3, H, W]`` or ``[H, W, 3]`` of ``view``, blended under the heat map when given.
        out: a folder: each picture is saved as ``out/diffusion_t{t}.png``, labelled with its step.
        scale: ``log`` (default: ``g_t`` decays by orders of magnitude away from the anchors;
            ``decades`` decades are shown) or ``linear`` (min-max, as the official ``trace_f``).

    Returns:
        ``{t: [H, W, 3]}`` float32 pictures in [0, 1].

    Raises:
        TypeError: the refiner has no ``snapshots`` (not a SnapshotRefiner).
    """
    from fulcra.interfaces import SnapshotRefiner

    from .segmentation import build_refiner, render_scores, scene_positions, uplift_mask

    if scale not in ("log", "linear"):
        raise ValueError(f"diffusion_steps: scale must be log or linear, got {scale!r}")
    refiner = build_refiner(refiner)
    if not isinstance(refiner, SnapshotRefiner):
        raise TypeError(
            f"refiner {type(refiner).__name__} cannot show its steps: diffusion pictures need snapshots() "
            "(fulcra.interfaces.SnapshotRefiner)"
        )
    g0, w_ref = uplift_mask(scene, camera, torch.as_tensor(prompt).float(), normalize=False)
    snaps = refiner.snapshots(
        scene_positions(scene),
        features,
        g0[:, None],
        steps=tuple(int(t) for t in steps),
        prompt=kind,
        weights=weights,
        reference_weights=w_ref,
    )
    view = view or camera
    pictures: dict[int, torch.Tensor] = {}
    for t, g in snaps.items():
        g = torch.as_tensor(g).float()
        g = g.sum(1) if g.ndim == 2 else g  # several prompts: their sum, as the official trace
        img = render_scores(scene, g, view).cpu()
        v = _log_scale(img, decades) if scale == "log" else img
        pic = heatmap(v, image, cmap=cmap, floor=0.0, alpha=0.75) if image is not None else heatmap(v, cmap=cmap)
        pictures[t] = pic
        if out is not None:
            save_image(pic, Path(out) / f"diffusion_t{t}.png", label=f"t = {t}")
    return pictures


def relevancy_heatmaps(
    scene,
    relevancy: torch.Tensor,
    camera: Camera,
    queries: Sequence[str],
    *,
    image: torch.Tensor | None = None,
    out: str | Path | None = None,
    floor: float = 0.3,
    cmap: str = "turbo",
) -> dict[str, torch.Tensor]:
    """Heat maps of per-Gaussian relevancies ``[N, Q]`` (or ``[N]``) rendered on ``camera``, one per query.

    Each rendered map is min-max normalised over the view; over ``image`` (``[3, H, W]`` or
    ``[H, W, 3]``), pixels at most ``floor`` show the image alone, dimmed.

    Args:
        queries: the ``Q`` text queries (file names: ``out/relevancy_<query>.png``, the query's
            characters other than letters, digits, ``-`` and ``_`` replaced by ``_``).

    Returns:
        ``{query: [H, W, 3]}`` float32 pictures in [0, 1].
    """
    from .segmentation import render_scores

    r = relevancy.float()
    r = r[:, None] if r.ndim == 1 else r
    if r.shape[1] != len(queries):
        raise ValueError(f"relevancy_heatmaps: {r.shape[1]} relevancy columns for {len(queries)} queries")
    rendered = render_scores(scene, r, camera).cpu()  # [H, W, Q]
    pictures = {}
    for j, q in enumerate(queries):
        pic = heatmap(rendered[..., j], image, cmap=cmap, floor=floor if image is not None else 0.0)
        pictures[q] = pic
        if out is not None:
            save_image(pic, Path(out) / f"relevancy_{_slug(q)}.png", label=q)
    return pictures


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())[:60] or "query"


def localisation_plot(
    image: torch.Tensor,
    points: torch.Tensor | Sequence[Sequence[float]],
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
    queries: Sequence[str] | None = None,
    path: str | Path | None = None,
    relevancy: torch.Tensor | None = None,
    dpi: int = 100,
):
    """The localisation picture of LERF / LangSplat: the image, each query's arg-max pixel (a star)
    and its ground-truth boxes (rectangles), one colour per query, a hit drawn filled, a miss hollow.

    Args:
        image: ``[3, H, W]`` or ``[H, W, 3]`` in [0, 1].
        points: ``[Q, 2]`` (x, y) pixels, e.g. :func:`.localisation.localise` of the rendered relevancies.
        boxes: per query, a list of ``[x0, y0, x1, y1]`` boxes (the LERF annotations), or None.
        queries: legend labels.
        relevancy: optional ``[H, W]`` map drawn translucent under the markers (the first query's).
        path: where to save the PNG.

    Returns:
        the matplotlib figure (closed after saving when ``path`` is given).
    """
    mpl = _matplotlib()
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .metrics import localisation_hit

    img = _hwc(image).numpy()
    pts = torch.as_tensor(points).reshape(-1, 2).float()
    q = pts.shape[0]
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(max(4.0, w / dpi), max(3.0, h / dpi)), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img)
    if relevancy is not None:
        ax.imshow(torch.as_tensor(relevancy).float().cpu().numpy(), cmap="turbo", alpha=0.4)
    colours = mpl.colormaps["tab10"]
    for j in range(q):
        c = colours(j % 10)
        bs = list(boxes[j]) if boxes is not None and j < len(boxes) else []
        for b in bs:
            x0, y0, x1, y1 = (float(v) for v in b)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=2))
        x, y = float(pts[j, 0]), float(pts[j, 1])
        hit = bool(bs) and localisation_hit(pts[j], bs)
        label = queries[j] if queries is not None and j < len(queries) else None
        ax.scatter(
            [x + 0.5],
            [y + 0.5],
            marker="*",
            s=260,
            facecolors=c if hit or not bs else "none",
            edgecolors=c,
            linewidths=2,
            label=label,
        )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    if queries:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.7)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return fig
