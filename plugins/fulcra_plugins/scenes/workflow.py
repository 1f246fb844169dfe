"""The ``uplift`` workflow: 2D feature maps of every view -> per-Gaussian features (Eq. 5.3-5.5).

``fulcra run uplift scene.ply=PLY scene.cameras=CAMERAS scene.images=DIR extractor=NAME out=OUT``
writes ``OUT/features.safetensors`` (``features [N, D]`` in the PLY's Gaussian order and ``weights
[N]``, the weight sums) and ``OUT/pca/<camera>.png`` (first three PCA components rendered as RGB).
Optional: pruning by weight sums (``prune.keep``) into ``OUT/pruned/``, and a round-trip check that
re-renders the uplifted features into a few views and compares them with the 2D maps.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fulcra.errors import ConfigError, FormatError

__all__ = ["UpliftWorkflow", "SceneConfig", "PruneConfig"]


@dataclass
class SceneConfig:
    ply: str = field(default="", metadata={"help": "3DGS point_cloud.ply"})
    cameras: str = field(default="", metadata={"help": "cameras.json, a COLMAP sparse folder or transforms.json (default: found near the PLY)"})
    images: str = field(default="", metadata={"help": "image folder; images are matched to cameras by file stem"})
    backend: str = field(default="auto", metadata={"help": "scenes plugin: auto (gsplat on CUDA when installed, else torch), torch, gsplat"})
    synthetic: bool = field(default=False, metadata={"help": "use the embedded synthetic scene (generated on first use) when ply is empty"})
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic scene"})
    cache: str = field(default="", metadata={"help": "where the synthetic scene is generated (default: $FULCRA_CACHE or ~/.cache/fulcra)"})


@dataclass
class PruneConfig:
    keep: float = field(default=0.0, metadata={"help": "0: no pruning; a fraction in (0, 1] or a count > 1 of Gaussians kept by weight sum"})


def resolve_scene_paths(sc: Any) -> tuple[str, str, str]:
    """(ply, cameras, images) of a scene config, generating the synthetic scene when asked."""
    if not sc.ply:
        if not sc.synthetic:
            raise ConfigError("uplift: set scene.ply=PATH (or scene.synthetic=true for the embedded scene)")
        from .synthetic import ensure_synthetic_scene

        folder = ensure_synthetic_scene(sc.cache or None, seed=int(sc.synthetic_seed))
        return str(folder / "point_cloud.ply"), str(folder / "cameras.json"), str(folder / "images")
    return sc.ply, sc.cameras, sc.images


class UpliftWorkflow:
    """Uplift the 2D features of an extractor into a 3DGS scene, learning-free (LUDVIG, §5.3.2).

    Streams the views (image -> extractor -> bilinear resize to the camera -> ``Wᵀ F``), normalises
    by the weight sums, saves features aligned with the PLY, renders PCA images, optionally prunes by
    weight sums and checks the round trip. Resumes: a finished uplift with the same inputs is reused.
    """

    @dataclass
    class Config:
        scene: SceneConfig = field(default_factory=SceneConfig, metadata={"help": "the scene: ply, cameras, images, backend"})
        extractor: Any = field(default_factory=lambda: {"name": "rgb"}, metadata={"kind": "feature_extractors", "help": "2D feature extractor"})
        views: list = field(default_factory=list, metadata={"help": "camera names to uplift from (empty: every camera with an image)"})
        pca: bool = field(default=True, metadata={"help": "render the first three PCA components to OUT/pca/<camera>.png"})
        pca_views: list = field(default_factory=list, metadata={"help": "cameras for the PCA images (empty: the uplifted views)"})
        prune: PruneConfig = field(default_factory=PruneConfig, metadata={"help": "pruning by weight sums"})
        check_views: int = field(default=3, metadata={"help": "views re-rendered to measure the round trip (0: none)"})
        dim_chunk: int = field(default=0, metadata={"help": "feature channels per adjoint pass (0: all)"})

    def __init__(self, config):
        self.cfg = config

    def _fingerprint(self, ply: str, cams: list, extractor_node: dict) -> str:
        st = Path(ply).stat()
        key = json.dumps({"ply": str(Path(ply).resolve()), "size": st.st_size, "mtime": int(st.st_mtime),
                          "views": [c.name for c in cams], "extractor": extractor_node}, sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()

    def run(self, ctx) -> dict:
        import fulcra

        from . import load_scene
        from .prune import load_features, save_features, save_subset, select_by_weight
        from .viz import pca_colors, render_pca

        cfg = self.cfg
        out = Path(ctx.out)
        ply, cameras, images = resolve_scene_paths(cfg.scene)
        scene, cams, imgs = load_scene(ply, cameras or None, images or None, backend=cfg.scene.backend, device=ctx.device)
        by_name = {c.name: c for c in cams}
        if cfg.views:
            unknown = [v for v in cfg.views if v not in by_name]
            if unknown:
                raise ConfigError(f"uplift: key 'views': unknown camera {unknown[0]!r} (cameras: {', '.join(list(by_name)[:8])}...)")
            views = [by_name[v] for v in cfg.views]
        else:
            views = [c for c in cams if c.name in imgs]
        missing = [c.name for c in views if c.name not in imgs] if views else [c.name for c in cams]
        if missing:
            where = imgs.folder or "(no image folder; set scene.images)"
            raise FormatError(f"{where}: no image for camera {missing[0]!r} ({len(missing)} of {len(cams)} cameras lack one); "
                              "images are matched to cameras by file stem")
        extractor_node = OmegaConf.to_container(cfg.extractor, resolve=True)
        extractor = fulcra.create("feature_extractors", extractor_node)
        feats_path = out / "features.safetensors"
        state_path = out / "uplift.json"
        fp = self._fingerprint(ply, views, extractor_node)
        n = scene.num_primitives
        t0 = time.time()
        done = state_path.is_file() and json.loads(state_path.read_text()).get("fingerprint") == fp and feats_path.is_file()
        if done:
            arrays = load_features(feats_path, expected=n)
            features, weights = arrays["features"].to(scene.device), arrays["weights"].to(scene.device)
        else:
            dev = extractor_device(extractor, scene.device)
            if getattr(extractor, "cache", "n/a") is None:
                # per-view features cached under OUT: DINOv2's PCA fit and the extraction then encode each
                # view once, and a run killed mid-uplift re-extracts nothing when resumed
                from fulcra_plugins.extractors.common import FeatureCache

                extractor.cache = FeatureCache(out / "feature_cache")
            if hasattr(extractor, "fit") and not getattr(extractor, "fitted", True):
                # extractors with a dataset-level step (DINOv2's PCA, app. C.1.2) fit it over all views first
                extractor.fit([(lambda n=cam.name: imgs[n]) for cam in views])

            def loader(i: int, cam):  # evaluated only by the rank that uplifts view i
                def load() -> torch.Tensor:
                    with torch.no_grad():
                        fmap = extractor(imgs[cam.name][None].to(dev))[0]  # [D, h, w]
                    ctx.hooks.step(step=i + 1, metrics={"view": float(i)}, total=len(views), stage="uplift")
                    return fmap.float()
                return load

            features, weights = fulcra.uplift(scene, [(cam, loader(i, cam)) for i, cam in enumerate(views)],
                                              dim_chunk=cfg.dim_chunk or None)
            if ctx.is_main:
                save_features(feats_path, {"ply": str(ply), "extractor": extractor_node, "views": len(views)},
                              features=features, weights=weights)
                state_path.write_text(json.dumps({"fingerprint": fp, "seconds": round(time.time() - t0, 3)}))
                ctx.hooks.checkpoint(path=feats_path, step=len(views))
        results: dict = {
            "features": str(feats_path), "num_gaussians": n, "dim": int(features.shape[1]), "views": len(views),
            "seen_fraction": float((weights > 0).float().mean()), "uplift_seconds": round(time.time() - t0, 3),
            "resumed": bool(done),
        }
        if not ctx.is_main:
            return results
        if cfg.check_views > 0:
            results.update(self._round_trip(scene, views, imgs, extractor, features, cfg.check_views))
            ctx.hooks.evaluate(metrics={k: v for k, v in results.items() if k.startswith("roundtrip")})
        if cfg.pca:
            colors = pca_colors(features, weights)
            pca_names = list(cfg.pca_views) or [c.name for c in views]
            for name in pca_names:
                if name not in by_name:
                    raise ConfigError(f"uplift: key 'pca_views': unknown camera {name!r}")
                render_pca(scene, features, by_name[name], path=out / "pca" / f"{name}.png", colors=colors)
            results["pca"] = str(out / "pca")
        if cfg.prune.keep:
            idx = select_by_weight(weights, float(cfg.prune.keep))
            save_subset(scene, idx, out / "pruned", features=features, weights=weights)
            results.update(pruned=str(out / "pruned"), kept=int(idx.numel()))
        (out / "results.json").write_text(json.dumps(results, indent=2))
        return results

    @staticmethod
    def _round_trip(scene, views, imgs, extractor, features, k) -> dict:
        """Re-render the uplifted features into ``k`` evenly spaced views and compare with their 2D maps
        (resized to the camera): relative L2 error and PSNR (maps scaled by their range) over covered pixels."""
        from fulcra.uplift import resize_to_camera

        picks = [views[round(i * (len(views) - 1) / max(k - 1, 1))] for i in range(min(k, len(views)))]
        errs, psnrs = [], []
        for cam in picks:
            with torch.no_grad():
                fmap = extractor(imgs[cam.name][None].to(extractor_device(extractor, scene.device)))[0].float()
                target = resize_to_camera(fmap.to(scene.device), cam).permute(1, 2, 0)  # [H, W, D]
                pred = scene.render(features, cam)
                cover = scene.render_alpha(cam) > 0.99
            if not bool(cover.any()):
                continue
            diff = (pred - target)[cover]
            errs.append(float(diff.norm() / target[cover].norm().clamp_min(1e-12)))
            rng = float(target.max() - target.min()) or 1.0
            psnrs.append(float(10 * math.log10(rng**2 / max(float((diff**2).mean()), 1e-12))))
        if not errs:
            return {}
        return {"roundtrip_rel_error": sum(errs) / len(errs), "roundtrip_psnr": sum(psnrs) / len(psnrs)}


def extractor_device(extractor, default: torch.device) -> torch.device:
    dev = getattr(extractor, "device", None)
    return torch.device(dev) if dev is not None else default
