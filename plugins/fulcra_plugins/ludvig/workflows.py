"""The ``segment`` and ``segment_synthetic`` workflows.

``fulcra run segment scene.ply=PLY scene.cameras=CAMERAS scene.images=DIR extractor=NAME
prompt.view=CAMERA_NAME prompt.scribble=PNG out=OUT`` (or ``prompt.mask=PNG`` for a full reference
mask, or ``prompt.clicks=[[x,y],...]``), with ``method=diffusion`` (default), ``uplift``, ``sam``
(then ``extractor=sam`` or ``sam2``: SAM masks prompted from the reprojected prompt, uplifted) or
``geometry`` (the reference mask uplifted and reprojected, no features: :mod:`.baselines`), writes

- ``OUT/mask3d.npy``: one boolean per Gaussian, PLY order;
- ``OUT/masks/<camera>.png``: the rendered 3D mask on every camera, 0/255;
- ``OUT/removed.ply``: the scene without the selected Gaussians, when the scene plugin is an
  ``EditableScene`` (else one line says removal needs it, and ``results.json`` gets it in ``notes``);
- ``OUT/features.safetensors`` + ``OUT/features.json``: the uplifted features and their fingerprint
  (reused when the run is repeated; :func:`.lifting.uplift_views`), ``OUT/feature_cache/``: the
  per-view maps of a caching extractor; not with ``method=sam``, which writes
  ``OUT/sam_prompts/<camera>.png``, the pixels SAM's points were drawn from;
- ``OUT/overlay.png``: the mask over the reference image; ``OUT/results.json``.

``fulcra run segment-synthetic`` runs :mod:`.synthetic_benchmark` on the embedded scene. Both work
with any scenes plugin (``scene.backend=NAME``) and any refiners plugin (``refiner=NAME``).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from fulcra.engine import atomic_write_text
from fulcra.errors import ConfigError, FormatError, FulcraError

METHODS = ("diffusion", "uplift", "sam", "geometry")

__all__ = [
    "METHODS",
    "SegmentWorkflow",
    "SegmentSyntheticWorkflow",
    "PromptConfig",
    "save_overlay",
    "load_prompt_png",
    "reference_prompt",
    "negative_prompt",
    "check_extractor",
]


def _scene_config():
    from .lifting import SceneConfig

    return SceneConfig


@dataclass
class PromptConfig:
    view: str = field(default="", metadata={"help": "name of the reference camera (image file stem)"})
    scribble: str = field(
        default="", metadata={"help": "PNG of the reference view's size; non-zero pixels are positive clicks"}
    )
    mask: str = field(default="", metadata={"help": "PNG of a full reference mask (non-zero = object)"})
    clicks: list = field(default_factory=list, metadata={"help": "clicked pixels [[x, y], ...] on the reference view"})
    radius: float = field(default=3.0, metadata={"help": "radius in pixels of the disc around each click"})
    negative: str = field(
        default="",
        metadata={
            "help": "PNG of the reference view's size; non-zero pixels are negative scribbles (not the object); with a scribble or clicks prompt"
        },
    )
    negative_clicks: list = field(
        default_factory=list,
        metadata={"help": "negative clicked pixels [[x, y], ...] on the reference view (discs of prompt.radius)"},
    )
    reference: str = field(
        default="",
        metadata={
            "help": "PNG of the object's full mask on the reference view, to choose thresholds and bandwidths on when the prompt is scribbles or clicks (a prompt.mask is its own reference)"
        },
    )


def load_prompt_png(path: str | Path, camera) -> torch.Tensor:
    """A PNG prompt as a boolean ``[H, W]`` (non-zero pixels), checked against the camera's size."""
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise FormatError(f"{p}: prompt PNG not found")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{p}: prompt is not a readable image ({exc})") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].max(-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.shape != (camera.height, camera.width):
        raise FormatError(
            f"{p}: prompt is {arr.shape[1]}x{arr.shape[0]}, the view {camera.name!r} is {camera.width}x{camera.height}"
        )
    m = torch.from_numpy(arr > 0)
    if not bool(m.any()):
        raise FormatError(f"{p}: the prompt has no non-zero pixel")
    return m


def _save_npy(array: np.ndarray, path: Path) -> None:
    """``np.save`` to a temporary name, then an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


def _segment_stage(cfg: Any, out: Path, ctx: Any):
    """The fingerprinted stage of a ``segment`` run: its whole config and the identities of the files
    it reads (scene, cameras, images, prompt PNG); its outputs are removed when any of them changed."""
    from fulcra.engine import Stage, file_identity

    from .lifting import resolve_scene_paths

    ply, cameras, images = resolve_scene_paths(cfg.scene, "segment")
    files = {
        "ply": ply,
        "cameras": cameras,
        "images": images,
        "scribble": cfg.prompt.scribble,
        "mask": cfg.prompt.mask,
        "reference": cfg.prompt.reference,
        "negative": cfg.prompt.negative,
    }
    inputs = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "files": {k: file_identity(v) for k, v in files.items() if v},
    }
    outputs = [
        "mask3d.npy",
        "masks",
        "overlay.png",
        "removed.ply",
        "results.json",
        "sam_prompts",
        "reference_mask.png",
        "figures",
    ]
    return Stage(out, "segment", inputs, [out / o for o in outputs], ctx.hooks.message, writer=ctx.is_main)


def reference_prompt(pc: Any, by_name: dict) -> tuple[Any, torch.Tensor, str]:
    """``(reference camera, prompt [H, W] bool, kind)`` of the ``prompt`` config, checked: the view is a
    camera, exactly one of scribble/mask/clicks is given, a PNG has the view's size and is readable,
    clicks are ``[[x, y], ...]`` inside the image."""
    from .segmentation import clicks_to_mask

    if not pc.view:
        raise ConfigError("segment: set prompt.view=CAMERA_NAME (the reference view)")
    if pc.view not in by_name:
        close = difflib.get_close_matches(str(pc.view), list(by_name), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"segment: key 'prompt.view': unknown camera {pc.view!r}{hint} (cameras: {', '.join(list(by_name)[:8])}...)"
        )
    ref = by_name[pc.view]
    given = [k for k in ("scribble", "mask") if getattr(pc, k)] + (["clicks"] if len(pc.clicks) else [])
    if len(given) != 1:
        raise ConfigError(
            f"segment: give exactly one of prompt.scribble, prompt.mask, prompt.clicks (got {given or 'none'})"
        )
    if pc.clicks:
        clicks = _check_clicks(pc.clicks, "prompt.clicks", ref)
        return ref, clicks_to_mask(clicks, ref.height, ref.width, pc.radius), "scribble"
    if pc.scribble:
        return ref, load_prompt_png(pc.scribble, ref), "scribble"
    return ref, load_prompt_png(pc.mask, ref), "mask"


def _check_clicks(clicks: Any, key: str, ref) -> list[tuple[float, float]]:
    out = []
    for c in list(clicks):
        ok = isinstance(c, (list, tuple)) or OmegaConf.is_list(c)
        if not ok or len(c) != 2 or not all(isinstance(v, (int, float)) for v in c):
            shown = OmegaConf.to_container(clicks) if OmegaConf.is_config(clicks) else clicks
            raise ConfigError(f"segment: key {key!r} must be [[x, y], ...] pixel positions, got {shown!r}")
        if not (0 <= c[0] < ref.width and 0 <= c[1] < ref.height):
            raise ConfigError(
                f"segment: key {key!r}: [{c[0]}, {c[1]}] is outside the {ref.width}x{ref.height} view {ref.name!r}"
            )
        out.append((c[0], c[1]))
    return out


def negative_prompt(pc: Any, ref, kind: str) -> torch.Tensor | None:
    """The ``[H, W]`` bool negative scribbles of the ``prompt`` config (``prompt.negative`` PNG and/or
    ``prompt.negative_clicks``) on the reference view, or None; checked like the positive prompt.
    A full mask prompt already says what is not the object, so it takes no negatives."""
    from .segmentation import clicks_to_mask

    neg_png = getattr(pc, "negative", "") or ""
    neg_clicks = list(getattr(pc, "negative_clicks", None) or [])
    if not neg_png and not neg_clicks:
        return None
    if kind == "mask":
        raise ConfigError(
            "segment: prompt.negative / prompt.negative_clicks go with a scribble or clicks prompt; a prompt.mask already marks what is not the object"
        )
    neg = torch.zeros(ref.height, ref.width, dtype=torch.bool)
    if neg_clicks:
        neg |= clicks_to_mask(
            _check_clicks(neg_clicks, "prompt.negative_clicks", ref), ref.height, ref.width, pc.radius
        )
    if neg_png:
        neg |= load_prompt_png(neg_png, ref)
    return neg


def save_overlay(image: torch.Tensor, mask: torch.Tensor, path: str | Path, prompt: torch.Tensor | None = None) -> Path:
    """Save the image ``[3, H, W]`` in [0, 1] with the mask ``[H, W]`` tinted red (and the prompt in
    green), enlarged to at least 480 px wide for a person to read."""
    from fulcra_plugins.scenes.viz import save_png

    img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy().copy()
    m = mask.cpu().numpy().astype(bool)
    img[m] = 0.45 * img[m] + 0.55 * np.array([1.0, 0.1, 0.1])
    if prompt is not None:
        img[prompt.cpu().numpy().astype(bool)] = np.array([0.1, 1.0, 0.1])
    return save_png(torch.from_numpy(img), path, min_width=480)


def check_extractor(method: str, node) -> None:
    """One-line ConfigError when ``method`` and the extractor do not fit: ``sam`` needs a prompted
    extractor (``sam``, ``sam2``), the feature routes one that maps an image alone to features."""
    import fulcra
    from fulcra.registry import preset

    name = node if isinstance(node, str) else (node or {}).get("name")
    try:
        p = preset("feature_extractors", name)  # sam_vit_h, sam2_hiera_large, ... name their plugin
        cls = fulcra.load_plugin("feature_extractors", p.get("name", name) if p else name)
    except (FulcraError, TypeError):  # unknown or uninstalled: fulcra.create reports it with its own one-line error
        return
    from fulcra.interfaces import PromptedExtractor

    prompted = isinstance(cls, PromptedExtractor) and bool(cls.needs_prompts)
    if method == "sam" and not prompted:
        raise ConfigError(
            f"segment: method=sam needs a prompted extractor (extractor=sam or extractor=sam2), "
            f"got extractor={name!r}, which takes no point prompts"
        )
    if method != "sam" and prompted:
        raise ConfigError(
            f"segment: extractor={name!r} needs point prompts; use method=sam with it, "
            f"or a feature extractor (dinov2, rgb, ...) with method={method}"
        )


def _diffusion_figures(
    ctx, cfg, method, scene, ref, prompt, kind, imgs, out, tuning, refiner=None, features=None, weights=None
) -> list:
    """``figures=true``: ``OUT/figures/diffusion_t{t}.png`` (:func:`.figures.diffusion_steps`) with the
    refiner's chosen parameters; one line (returned, for ``results.json``) when it cannot be drawn."""
    from fulcra.interfaces import SnapshotRefiner, TunableRefiner

    from .figures import diffusion_steps
    from .lifting import say

    if method != "diffusion":
        return [say(ctx, "segment", f"no figures: figures=true draws the graph diffusion, method={method} has none")]
    if tuning.params and isinstance(refiner, TunableRefiner):
        refiner = refiner.with_params(**tuning.params)
    if not isinstance(refiner, SnapshotRefiner):
        return [
            say(
                ctx,
                "segment",
                f"no figures: refiner {type(refiner).__name__} has no snapshots() (fulcra.interfaces.SnapshotRefiner)",
            )
        ]
    image = imgs[ref.name] if ref.name in imgs else None
    if image is not None and tuple(image.shape[-2:]) != (ref.height, ref.width):
        image = None
    try:
        diffusion_steps(
            scene,
            ref,
            prompt,
            features,
            refiner,
            steps=[int(t) for t in cfg.figure_steps],
            kind=kind,
            weights=weights,
            image=image,
            out=out / "figures",
        )
    except FulcraError as exc:  # matplotlib missing
        return [say(ctx, "segment", f"no figures: {exc}")]
    return []


class SegmentWorkflow:
    """Segment an object in 3D from a prompt on one view, render its mask everywhere, remove it (LUDVIG §5.4.1).

    ``method=diffusion`` (default): features of ``extractor`` are uplifted to the Gaussians, the prompt
    (scribble PNG, full mask PNG or clicks) on ``prompt.view`` is uplifted and refined by graph
    diffusion; ``method=uplift`` (or ``diffusion=false``): the uplifted features are scored directly;
    ``method=sam`` (``extractor=sam`` or ``sam2``): the prompt is uplifted and reprojected onto every
    view, SAM's masks from point prompts drawn there are averaged and uplifted (C.1.1);
    ``method=geometry``: the reference mask alone uplifted from ``prompt.view`` (Table 5.2's baseline,
    no extractor is built). The per-Gaussian scores are binarised in 3D and rendered on every camera.
    """

    @dataclass
    class Config:
        scene: Any = field(
            default_factory=lambda: _scene_config()(), metadata={"help": "the scene: ply, cameras, images, backend"}
        )
        extractor: Any = field(
            default_factory=lambda: {"name": "rgb", "patch_size": 4},
            metadata={"kind": "feature_extractors", "help": "2D feature extractor"},
        )
        prompt: PromptConfig = field(
            default_factory=PromptConfig, metadata={"help": "the reference view and its scribble/mask/clicks"}
        )
        refiner: Any = field(
            default_factory=lambda: {"name": "graph_diffusion"},
            metadata={
                "kind": "refiners",
                "help": "the refiner of the uplifted prompt (any refiners plugin; graph diffusion by default)",
            },
        )
        method: str = field(
            default="diffusion",
            metadata={
                "help": "diffusion (uplift + graph diffusion), uplift (score the uplifted features), sam (SAM/SAM 2 masks from reprojected prompts, uplifted; extractor=sam or sam2) or geometry (the reference mask, else the prompt, uplifted from the reference view and rendered: no extractor, Table 5.2's baseline)"
            },
        )
        diffusion: bool = field(
            default=True, metadata={"help": "false turns method=diffusion into method=uplift (kept for older configs)"}
        )
        tau: float = field(
            default=0.4,
            metadata={
                "help": "method=sam: keep reprojected prompt pixels above tau x their mean (0.4 SPIn-NeRF, 1.0 NVOS)"
            },
        )
        views: list = field(
            default_factory=list, metadata={"help": "cameras to uplift from (empty: all with an image)"}
        )
        center: bool = field(default=True, metadata={"help": "subtract the mean 2D feature before uplifting"})
        reference_extractor: Any = field(
            default=None,
            metadata={
                "kind": "feature_extractors",
                "help": "a sam or sam2 extractor that predicts the reference mask from scribbles/clicks on the reference view (the NVOS protocol); none: prompt.reference or the fallback rule",
            },
        )
        search: bool = field(
            default=True,
            metadata={
                "help": "with a reference mask, grid-search the refiner's bandwidths (and SAM's mask index with extractor.mask=all) on the reference view"
            },
        )
        rule: str = field(
            default="mean",
            metadata={
                "help": "method=sam: prompt pixels from the reprojection: mean (> tau x mean, the thesis) or top (the floor(tau x sum) highest after division by the max, the official code)"
            },
        )
        threshold: str = field(
            default="auto",
            metadata={
                "help": "3D binarisation: auto (the reference-view protocol: the threshold whose rendered selection best matches the reference mask; without one the fallback rule in results.json), otsu, li, or a number"
            },
        )
        masks: str = field(
            default="auto",
            metadata={
                "help": "2D masks: auto (the protocol's: rendered scores normalised and thresholded as on the reference view; without a reference the rendered selection), scores, or selection (the rendered 3D mask)"
            },
        )
        render_threshold: float = field(
            default=0.5, metadata={"help": "threshold of the rendered 3D mask (masks=selection)"}
        )
        save_removed: bool = field(default=True, metadata={"help": "write OUT/removed.ply"})
        figures: bool = field(
            default=False,
            metadata={
                "help": "write OUT/figures/diffusion_t{t}.png: the diffusion's g_t rendered on the reference view at figure_steps (thesis Fig. C.3; method=diffusion with a SnapshotRefiner; needs matplotlib)"
            },
        )
        figure_steps: list = field(
            default_factory=lambda: [1, 5, 20, 100], metadata={"help": "the steps t of figures=true"}
        )

    def __init__(self, config):
        self.cfg = config

    def check(self) -> None:
        """Before anything is written: the method/extractor pairing, the scene's files (PLY header,
        cameras, image folder) and the prompt (view, exactly one of scribble/mask/clicks, its size)."""
        from .lifting import check_scene

        cfg = self.cfg
        method = str(cfg.method)
        if method not in METHODS:
            raise ConfigError(f"segment: key 'method' must be one of {', '.join(METHODS)}, got {method!r}")
        if method != "geometry":  # the geometry baseline uses no extractor
            check_extractor(
                "uplift" if method == "diffusion" and not cfg.diffusion else method,
                OmegaConf.to_container(cfg.extractor, resolve=True),
            )
        if str(cfg.masks) not in ("auto", "scores", "selection"):
            raise ConfigError(f"segment: key 'masks' must be auto, scores or selection, got {cfg.masks!r}")
        if cfg.reference_extractor is not None:
            node = cfg.reference_extractor
            node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            try:
                check_extractor("sam", node)
            except ConfigError as exc:
                raise ConfigError(
                    f"segment: key 'reference_extractor' must be a prompted extractor (sam, sam2): {exc}"
                ) from None
        cams, _ = check_scene(cfg.scene, "segment")
        by_name = {c.name: c for c in cams}
        ref, _, kind = reference_prompt(cfg.prompt, by_name)
        negative_prompt(cfg.prompt, ref, kind)
        if cfg.prompt.reference:
            load_prompt_png(cfg.prompt.reference, by_name[cfg.prompt.view])

    def run(self, ctx) -> dict:
        from PIL import Image

        from fulcra.interfaces import EditableScene

        from .editing import save_removed
        from .lifting import say
        from .session import SegmentSession, save_mask_png

        cfg, out = self.cfg, Path(ctx.out)
        log = lambda m: say(ctx, "segment", m)  # noqa: E731
        # the same session fulcra view opens: method, masks, threshold and extractor pairing checked here
        session = SegmentSession(cfg, out, ctx.device, hooks=ctx.hooks, is_main=ctx.is_main, log=log)
        method, th = session.method, session.threshold
        out.mkdir(parents=True, exist_ok=True)
        stage = _segment_stage(cfg, out, ctx)
        if not stage.begin() and (out / "results.json").is_file():
            return json.loads((out / "results.json").read_text())
        t0 = time.time()
        session.open()
        scene, cams, imgs = session.scene, session.cams, session.imgs
        ref, prompt, kind = session.prompt(cfg.prompt)
        # the reference mask the protocol tunes on: the prompt mask, the user's own, or SAM's from the scribbles
        target, source = session.reference_target(ref, prompt, kind)
        if target is not None and cfg.reference_extractor is not None and kind != "mask" and not cfg.prompt.reference:
            Image.fromarray(target.cpu().numpy().astype(np.uint8) * 255).save(out / "reference_mask.png")
        negative = session.negative(cfg.prompt, ref, kind)
        answer = session.segment(ref, prompt, kind, target, source, negative=negative)
        seg, tuning = answer.seg, answer.tuning
        if method == "sam":
            (out / "sam_prompts").mkdir(exist_ok=True)
            for name, pos in seg.prompts.items():
                Image.fromarray(pos.cpu().numpy().astype(np.uint8) * 255).save(out / "sam_prompts" / f"{name}.png")
        mask3d = session.mask3d(answer)
        mode = session.mode(answer)
        _save_npy(mask3d.cpu().numpy(), out / "mask3d.npy")

        (out / "masks").mkdir(exist_ok=True)
        fractions = {}
        for i, cam in enumerate(cams):
            m = session.view_mask(answer, mask3d, cam, mode)
            save_mask_png(m, out / "masks" / f"{cam.name}.png")
            fractions[cam.name] = float(m.float().mean())
            ctx.hooks.step(step=i + 1, metrics={"mask_fraction": fractions[cam.name]}, total=len(cams), stage="render")
            if cam.name == ref.name and ref.name in imgs:
                save_overlay(imgs[ref.name], m, out / "overlay.png", prompt)
        results = {
            "num_gaussians": scene.num_primitives,
            "selected": int(mask3d.sum()),
            "prompt": kind,
            "negative_pixels": 0 if negative is None else int(negative.sum()),
            "reference_view": ref.name,
            "method": method,
            "diffusion": method == "diffusion",
            "features_resumed": session.resumed,
            "threshold": th if th != "auto" else tuning.threshold_3d,
            "masks_from": mode,
            "tuning": tuning.as_dict(),
            "mask3d": str(out / "mask3d.npy"),
            "masks": str(out / "masks"),
            "seconds": round(time.time() - t0, 2),
        }
        if int(mask3d.sum()) == 0:
            raise ConfigError(
                f"segment: the prompt selects no Gaussian (scores max {float(seg.scores.max()):.3g}); "
                "try a larger prompt, another method or another extractor"
            )
        if cfg.figures:
            used = (
                {"refiner": session.refiner, "features": session.features, "weights": session.weights}
                if method == "diffusion"
                else {}
            )
            if notes := _diffusion_figures(ctx, cfg, method, scene, ref, prompt, kind, imgs, out, tuning, **used):
                results["notes"] = notes
            else:
                results["figures"] = str(out / "figures")
        if cfg.save_removed:
            if isinstance(scene, EditableScene):
                results["removed"] = str(save_removed(scene, mask3d, out / "removed.ply"))
            else:
                results.setdefault("notes", []).append(
                    say(
                        ctx,
                        "segment",
                        f"removed.ply not written: removal needs a scene with subset() and "
                        f"save_ply() (EditableScene); scenes plugin {type(scene).__name__} has not",
                    )
                )
        # results.json last, then the stage record: a run killed earlier leaves no results.json and a
        # record that says complete: false, so nothing it left looks finished
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
        stage.complete()
        ctx.hooks.evaluate(metrics={"selected": float(results["selected"])})
        return results


class SegmentSyntheticWorkflow:
    """The Table 5.2 ablation on the embedded synthetic scene: single view vs uplifting vs uplifting +
    graph diffusion, IoU against the ground-truth labels in 3D and in 2D, per object and on average."""

    @dataclass
    class Config:
        scene: Any = field(
            default_factory=lambda: _scene_config()(synthetic=True),
            metadata={"help": "the scene (synthetic by default)"},
        )
        extractor: Any = field(
            default_factory=lambda: {"name": "rgb", "patch_size": 4},
            metadata={"kind": "feature_extractors", "help": "2D feature extractor"},
        )
        refiner: Any = field(
            default_factory=lambda: {"name": "graph_diffusion"},
            metadata={
                "kind": "refiners",
                "help": "the refiner of the uplifted prompt (any refiners plugin; graph diffusion by default)",
            },
        )
        eval_views: int = field(
            default=6, metadata={"help": "views (other than the reference) on which the 2D IoU is averaged"}
        )
        center: bool = field(default=True, metadata={"help": "subtract the mean 2D feature before uplifting"})
        reference: str = field(
            default="ground_truth",
            metadata={
                "help": "the reference mask the protocol tunes on: ground_truth (the reference view's true mask, as SPIn-NeRF's first-frame mask) or none (the fallback rules)"
            },
        )
        search: bool = field(
            default=True, metadata={"help": "grid-search the refiner's bandwidths on the reference mask"}
        )

    def __init__(self, config):
        self.cfg = config

    def run(self, ctx) -> dict:
        from PIL import Image
        from safetensors.torch import load_file

        import fulcra

        from .lifting import open_scene, resolve_scene_paths, uplift_views
        from .synthetic_benchmark import run_synthetic_benchmark

        cfg, out = self.cfg, Path(ctx.out)
        out.mkdir(parents=True, exist_ok=True)
        root = Path(resolve_scene_paths(cfg.scene, "segment_synthetic")[0]).parent
        if not (root / "labels.safetensors").is_file() or not (root / "masks").is_dir():
            raise FormatError(f"{root}: not a synthetic scene folder (labels.safetensors and masks/ are needed)")
        scene, cams, imgs, ply = open_scene(cfg.scene, ctx.device, "segment_synthetic")
        labels = load_file(str(root / "labels.safetensors"))["labels"]
        meta = json.loads((root / "scene.json").read_text()) if (root / "scene.json").is_file() else {}
        objects = meta.get("objects") or [f"object_{i}" for i in range(int(labels.max()) + 1)]
        gt = {}
        for c in cams:
            with Image.open(root / "masks" / f"{c.name}.png") as im:
                gt[c.name] = torch.from_numpy(np.asarray(im).astype(np.int64))
        extractor_node = OmegaConf.to_container(cfg.extractor, resolve=True)
        extractor = fulcra.create("feature_extractors", extractor_node)
        views = [c for c in cams if c.name in imgs]
        up = uplift_views(
            scene,
            views,
            imgs,
            extractor,
            out=out,
            ply=ply,
            extractor_node=extractor_node,
            hooks=ctx.hooks,
            center=cfg.center,
            stage="features",
            is_main=ctx.is_main,
        )
        refiner = fulcra.create("refiners", OmegaConf.to_container(cfg.refiner, resolve=True))
        res = run_synthetic_benchmark(
            scene,
            cams,
            imgs,
            labels,
            gt,
            extractor,
            objects,
            out,
            refiner=refiner,
            eval_views=cfg.eval_views,
            uplifted=up,
            reference=str(cfg.reference),
            search=cfg.search,
        )
        ctx.hooks.evaluate(metrics={k: v for k, v in res["mean"].items()})
        print((out / "results.md").read_text())
        return res
