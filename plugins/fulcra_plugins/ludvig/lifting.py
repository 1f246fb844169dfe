"""The one extract-and-uplift path of the LUDVIG workflows (``uplift``, ``segment``,
``segment-synthetic``): scene config, scene loading through the registry, and
:func:`uplift_views`, which streams every view through the extractor into :func:`fulcra.uplift`
with one feature cache.

Caching, in one place:

- per view, the extractor's own on-disk cache when it is a
  :class:`~fulcra.interfaces.CachingExtractor` (given ``OUT/feature_cache`` when it has none), so a
  fit over the views (:class:`~fulcra.interfaces.FittableExtractor`, DINOv2's PCA) and the
  extraction encode each view once, and re-reading a view's map later (the round trip, the
  single-view baseline) costs a file read;
- per run, the uplifted result ``OUT/features.safetensors`` (``features [N, D]``, ``weights [N]``)
  with ``OUT/features.json`` (the fingerprint of the inputs and the subtracted mean): a run repeated
  with the same inputs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fulcra.errors import ConfigError

__all__ = [
    "SceneConfig",
    "resolve_scene_paths",
    "open_scene",
    "prepare_extractor",
    "extract_map",
    "uplift_views",
    "Uplifted",
    "say",
]

log = logging.getLogger(__name__)

#: bump when what :func:`uplift_views` stores changes (older results are then recomputed)
_VERSION = 2


@dataclass
class SceneConfig:
    ply: str = field(default="", metadata={"help": "the scene file (3DGS point_cloud.ply for the bundled backends)"})
    cameras: str = field(
        default="",
        metadata={"help": "cameras.json, a COLMAP sparse folder or transforms.json (default: found near the PLY)"},
    )
    images: str = field(default="", metadata={"help": "image folder; images are matched to cameras by file stem"})
    backend: str = field(
        default="auto",
        metadata={
            "help": "scenes plugin: auto (gsplat on CUDA when installed, else torch), torch, gsplat, or any installed scenes plugin"
        },
    )
    synthetic: bool = field(
        default=False, metadata={"help": "use the embedded synthetic scene (generated on first use) when ply is empty"}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic scene"})
    cache: str = field(
        default="",
        metadata={"help": "where the synthetic scene is generated (default: $FULCRA_CACHE or ~/.cache/fulcra)"},
    )


def resolve_scene_paths(sc: Any, workflow: str = "uplift") -> tuple[str, str, str]:
    """(ply, cameras, images) of a scene config, generating the synthetic scene when asked."""
    if not sc.ply:
        if not sc.synthetic:
            raise ConfigError(f"{workflow}: set scene.ply=PATH (or scene.synthetic=true for the embedded scene)")
        from fulcra_plugins.scenes.synthetic import ensure_synthetic_scene

        folder = ensure_synthetic_scene(sc.cache or None, seed=int(sc.synthetic_seed))
        return str(folder / "point_cloud.ply"), str(folder / "cameras.json"), str(folder / "images")
    return sc.ply, sc.cameras, sc.images


def check_scene(sc: Any, workflow: str = "uplift"):
    """``(cameras, images)`` of a scene config, every file checked without loading the Gaussians
    (:func:`fulcra_plugins.scenes.scene_inputs`): what ``check()`` of a LUDVIG workflow runs before
    anything is written."""
    from fulcra_plugins.scenes import scene_inputs

    ply, cameras, images = resolve_scene_paths(sc, workflow)
    cams, imgs = scene_inputs(ply, cameras or None, images or None)
    imgs.size_note()  # an image of another aspect ratio than its camera fails here, before any writing
    imgs.verify()  # and a truncated or corrupt one
    return cams, imgs


def open_scene(sc: Any, device: Any, workflow: str = "uplift"):
    """``(scene, cameras, images, ply)`` of a scene config: the scenes plugin ``sc.backend`` built
    through the registry (``create("scenes", NAME, ply=PATH, device=...)``), the cameras and images."""
    from fulcra_plugins.scenes import load_scene

    ply, cameras, images = resolve_scene_paths(sc, workflow)
    scene, cams, imgs = load_scene(ply, cameras or None, images or None, backend=sc.backend, device=device)
    return scene, cams, imgs, ply


def say(ctx: Any, workflow: str, msg: str) -> str:
    """One line for the user, through the run's ``fulcra_message`` hook (printed by ``progress``,
    recorded by ``jsonl``); printed directly when the context has no hook relay. Also logged."""
    hooks = getattr(ctx, "hooks", None)
    if hooks is not None and hasattr(hooks, "message"):
        hooks.message(msg)
    elif getattr(ctx, "is_main", True):
        print(f"[{workflow}] {msg}", flush=True)
    log.info(msg)
    return msg


def extractor_device(extractor: Any, default: torch.device) -> torch.device:
    dev = getattr(extractor, "device", None)
    return torch.device(dev) if dev is not None else default


def scene_device(scene: Any) -> torch.device:
    return torch.device(getattr(scene, "device", None) or "cpu")


def prepare_extractor(extractor: Any, views: Sequence[Any], images: Any, out: Path | None) -> None:
    """Give a :class:`~fulcra.interfaces.CachingExtractor` without a cache ``out/feature_cache``, and
    fit a :class:`~fulcra.interfaces.FittableExtractor` that is not fitted over the views' images."""
    from fulcra.interfaces import CachingExtractor, FittableExtractor

    if out is not None and isinstance(extractor, CachingExtractor) and extractor.cache_dir is None:
        extractor.set_cache(Path(out) / "feature_cache")
    if isinstance(extractor, FittableExtractor) and not extractor.fitted:
        extractor.fit([(lambda n=cam.name: images[n]) for cam in views])


def extract_map(extractor: Any, image: torch.Tensor, camera: Any, device: torch.device) -> torch.Tensor:
    """One view's feature map, resized to the camera: ``image [3, H, W]`` -> ``[D, H_cam, W_cam]`` float32."""
    from fulcra.uplift import resize_to_camera

    with torch.no_grad():
        fmap = extractor(image[None].to(extractor_device(extractor, device)))[0]
    return resize_to_camera(fmap.float().to(device), camera)


@dataclass
class Uplifted:
    """What :func:`uplift_views` returns.

    Attributes:
        features: ``[N, D]`` float32 uplifted features (minus ``mean`` on the Gaussians some view sees,
            when centred; 0 on the others).
        weights: ``[N]`` float32 rendering-weight sums over the views.
        mean: ``[D]`` the mean 2D feature subtracted (zeros when not centred).
        resumed: whether ``OUT/features.safetensors`` was reused.
    """

    features: torch.Tensor
    weights: torch.Tensor
    mean: torch.Tensor
    resumed: bool = False


def _fingerprint(ply: str, views: Sequence[Any], extractor_node: Any, center: bool) -> str:
    p = Path(ply)
    st = p.stat() if p.is_file() else None
    key = json.dumps(
        {
            "v": _VERSION,
            "ply": str(p.resolve()),
            "size": st.st_size if st else None,
            "mtime": int(st.st_mtime) if st else None,
            "center": bool(center),
            "views": [c.name for c in views],
            "extractor": extractor_node,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(key.encode()).hexdigest()


def uplift_views(
    scene: Any,
    views: Sequence[Any],
    images: Any,
    extractor: Any,
    *,
    out: Path | None,
    ply: str = "",
    extractor_node: Any = None,
    hooks: Any = None,
    center: bool = False,
    dim_chunk: int | None = None,
    stage: str = "uplift",
    is_main: bool = True,
    view_map: Callable[[int, Any], torch.Tensor] | None = None,
) -> Uplifted:
    """Extract every view's feature map and uplift it into ``scene`` (Eq. 5.3), streaming, resumable.

    Args:
        scene: any scene plugin (``num_primitives``, ``render``).
        views: the cameras to uplift from; ``images[cam.name]`` is each one's ``[3, H, W]`` image.
        extractor: any feature extractor; prepared by :func:`prepare_extractor` (cache, fit).
        out: the run folder (``None``: no caching at all).
        ply, extractor_node: what identifies the inputs (with the view names and ``center``) in the
            fingerprint of ``OUT/features.json``.
        hooks: the run's hook relay (``step`` per view, ``checkpoint`` when saved).
        center: subtract the mean 2D feature over the views (the average of each view's mean, on the
            camera-resolution maps), as a PCA would, so that similarities compare deviations from the
            average look. Uplifting is weight-normalised, so it commutes with the shift: the mean is
            subtracted from the uplifted features of the seen Gaussians.
        dim_chunk: feature channels per adjoint pass (``None``: all).
        stage: the ``stage`` of the per-view ``step`` hook calls.
        is_main: whether this process writes the files (rank 0).
        view_map: ``view_map(i, camera) -> [D, h, w]`` replaces the extractor call for view ``i`` (the
            SAM route's prompted masks); ``extractor`` is then neither prepared nor called.

    Returns:
        :class:`Uplifted`.
    """
    import fulcra
    from fulcra.engine import dist
    from fulcra_plugins.scenes.prune import load_features, save_features

    out = Path(out) if out is not None else None
    fp = _fingerprint(ply, views, extractor_node, center)
    path = out / "features.safetensors" if out is not None else None
    state = out / "features.json" if out is not None else None
    n = scene.num_primitives
    dev = scene_device(scene)
    if path is not None and path.is_file() and state.is_file():
        meta = json.loads(state.read_text())
        if meta.get("fingerprint") == fp:
            arr = load_features(path, expected=n)
            mean = torch.tensor(meta.get("mean", []), dtype=torch.float32)
            if mean.numel() != arr["features"].shape[1]:
                mean = torch.zeros(arr["features"].shape[1])
            if hooks is not None and hasattr(hooks, "message"):
                hooks.message(f"reusing the uplifted features in {path} (same scene, views and extractor)")
            return Uplifted(arr["features"].to(dev), arr["weights"].to(dev), mean.to(dev), resumed=True)
        if hooks is not None and hasattr(hooks, "message"):
            hooks.message(f"recomputing the uplifted features: the scene, views or extractor changed since {path}")
    if view_map is None:
        prepare_extractor(extractor, views, images, out)
    sums: dict = {"mean": None, "count": 0}

    def loader(i: int, cam: Any):  # evaluated only by the rank that uplifts view i
        def load() -> torch.Tensor:
            if view_map is None:
                fmap = extract_map(extractor, images[cam.name], cam, dev)  # [D, H, W]
            else:
                from fulcra.uplift import resize_to_camera

                fmap = resize_to_camera(torch.as_tensor(view_map(i, cam)).float().to(dev), cam)
            m = fmap.mean((1, 2))
            sums["mean"] = m if sums["mean"] is None else sums["mean"] + m
            sums["count"] += 1
            if hooks is not None:
                hooks.step(step=i + 1, metrics={"view": float(i)}, total=len(views), stage=stage)
            return fmap

        return load

    features, weights = fulcra.uplift(
        scene, [(cam, loader(i, cam)) for i, cam in enumerate(views)], dim_chunk=dim_chunk
    )
    d = features.shape[1]
    total = torch.zeros(d + 1, device=features.device)
    if sums["mean"] is not None:
        total[:d] = sums["mean"].to(features.device)
        total[d] = float(sums["count"])
    if dist.is_distributed():
        dist.all_reduce_sum(total)
    mean = total[:d] / total[d].clamp_min(1) if center else torch.zeros(d, device=features.device)
    if center:
        features = torch.where(weights[:, None] > 1e-12, features - mean, features)  # as fulcra.uplift's eps
    if path is not None and is_main:
        save_features(
            path,
            {"ply": str(ply), "extractor": extractor_node, "center": bool(center), "views": len(views)},
            features=features,
            weights=weights,
        )
        state.write_text(json.dumps({"fingerprint": fp, "mean": mean.cpu().tolist()}))
        if hooks is not None:
            hooks.checkpoint(path=path, step=len(views))
    return Uplifted(features, weights, mean, resumed=False)
