"""The ``uplift`` workflow: 2D feature maps of every view -> per-Gaussian features (Eq. 5.3-5.5).

``fulcra run uplift scene.ply=PLY scene.cameras=CAMERAS scene.images=DIR extractor=NAME out=OUT``
writes ``OUT/features.safetensors`` (``features [N, D]`` in the PLY's Gaussian order and ``weights
[N]``, the weight sums) and ``OUT/pca/<camera>.png`` (first three PCA components rendered as RGB).
Optional: pruning by weight sums (``prune.keep``) into ``OUT/pruned/``, and a round-trip check that
re-renders the uplifted features into a few views and compares them with the 2D maps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fulcra.errors import ConfigError, FormatError

from .lifting import SceneConfig, check_scene, extract_map, open_scene, say, scene_device, uplift_views

__all__ = ["UpliftWorkflow", "SceneConfig", "PruneConfig"]


@dataclass
class PruneConfig:
    keep: float = field(
        default=0.0,
        metadata={"help": "0: no pruning; a fraction in (0, 1] or a count > 1 of Gaussians kept by weight sum"},
    )


class UpliftWorkflow:
    """Uplift the 2D features of an extractor into a 3DGS scene, learning-free (LUDVIG, §5.3.2).

    Streams the views (image -> extractor -> bilinear resize to the camera -> ``Wᵀ F``), normalises
    by the weight sums, saves features aligned with the PLY, renders PCA images, optionally prunes by
    weight sums and checks the round trip. Resumes: a finished uplift with the same inputs is reused.
    """

    @dataclass
    class Config:
        scene: SceneConfig = field(
            default_factory=SceneConfig, metadata={"help": "the scene: ply, cameras, images, backend"}
        )
        extractor: Any = field(
            default_factory=lambda: {"name": "rgb"},
            metadata={"kind": "feature_extractors", "help": "2D feature extractor"},
        )
        views: list = field(
            default_factory=list, metadata={"help": "camera names to uplift from (empty: every camera with an image)"}
        )
        strict_images: bool = field(
            default=False,
            metadata={
                "help": "refuse to run when some cameras have no image (default: uplift the others, with a warning)"
            },
        )
        pca: bool = field(
            default=True, metadata={"help": "render the first three PCA components to OUT/pca/<camera>.png"}
        )
        pca_views: list = field(
            default_factory=list, metadata={"help": "cameras for the PCA images (empty: the uplifted views)"}
        )
        prune: PruneConfig = field(default_factory=PruneConfig, metadata={"help": "pruning by weight sums"})
        check_views: int = field(default=3, metadata={"help": "views re-rendered to measure the round trip (0: none)"})
        dim_chunk: int = field(default=0, metadata={"help": "feature channels per adjoint pass (0: all)"})

    def __init__(self, config):
        self.cfg = config

    def check(self) -> None:
        """Before anything is written: the scene's files (PLY header, cameras, image folder), the
        views named in ``views``, and at least one camera with an image."""
        cams, imgs = check_scene(self.cfg.scene, "uplift")
        self._views(cams, imgs)

    def _views(self, cams, imgs) -> list:
        by_name = {c.name: c for c in cams}
        if self.cfg.views:
            unknown = [v for v in self.cfg.views if v not in by_name]
            if unknown:
                raise ConfigError(
                    f"uplift: key 'views': unknown camera {unknown[0]!r} (cameras: {', '.join(list(by_name)[:8])}...)"
                )
            views = [by_name[v] for v in self.cfg.views]
        else:
            views = [c for c in cams if c.name in imgs]
        missing = [c.name for c in views if c.name not in imgs] if views else [c.name for c in cams]
        if missing:
            where = imgs.folder or "(no image folder; set scene.images)"
            raise FormatError(
                f"{where}: no image for camera {missing[0]!r} ({len(missing)} of {len(cams)} cameras lack one); "
                "images are matched to cameras by file stem"
            )
        unknown_pca = [v for v in self.cfg.pca_views if v not in by_name]
        if unknown_pca:
            raise ConfigError(f"uplift: key 'pca_views': unknown camera {unknown_pca[0]!r}")
        if self.cfg.strict_images and imgs.missing:
            raise FormatError(
                f"{imgs.folder}: {len(imgs.missing)} of {len(cams)} cameras have no image "
                f"(first: {imgs.missing[0]!r}); strict_images=true"
            )
        return views

    def run(self, ctx) -> dict:
        import fulcra
        from fulcra.interfaces import EditableScene
        from fulcra_plugins.scenes.prune import save_subset, select_by_weight
        from fulcra_plugins.scenes.viz import pca_colors, render_pca

        cfg = self.cfg
        out = Path(ctx.out)
        scene, cams, imgs, ply = open_scene(cfg.scene, ctx.device, "uplift")
        views = self._views(cams, imgs)
        by_name = {c.name: c for c in cams}
        if note := imgs.size_note():
            say(ctx, "uplift", note)
        if imgs.missing and not cfg.views:
            say(
                ctx,
                "uplift",
                f"{len(imgs.missing)} of {len(cams)} cameras have no image in {imgs.folder} "
                f"(first: {imgs.missing[0]!r}); uplifting the {len(views)} that do (strict_images=true makes this an error)",
            )
        extractor_node = OmegaConf.to_container(cfg.extractor, resolve=True)
        extractor = fulcra.create("feature_extractors", extractor_node)
        feats_path = out / "features.safetensors"
        n = scene.num_primitives
        t0 = time.time()
        up = uplift_views(
            scene,
            views,
            imgs,
            extractor,
            out=out,
            ply=ply,
            extractor_node=extractor_node,
            hooks=ctx.hooks,
            center=False,
            dim_chunk=cfg.dim_chunk or None,
            stage="views",  # progress reads "[fulcra] uplift views step 3/18"
            is_main=ctx.is_main,
        )
        features, weights = up.features, up.weights
        results: dict = {
            "features": str(feats_path),
            "num_gaussians": n,
            "dim": int(features.shape[1]),
            "views": len(views),
            "seen_fraction": float((weights > 0).float().mean()),
            "uplift_seconds": round(time.time() - t0, 3),
            "resumed": bool(up.resumed),
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
                render_pca(scene, features, by_name[name], path=out / "pca" / f"{name}.png", colors=colors)
            results["pca"] = str(out / "pca")
        if cfg.prune.keep:
            if isinstance(scene, EditableScene):
                idx = select_by_weight(weights, float(cfg.prune.keep))
                save_subset(scene, idx, out / "pruned", features=features, weights=weights)
                results.update(pruned=str(out / "pruned"), kept=int(idx.numel()))
            else:
                results["notes"] = [
                    say(
                        ctx,
                        "uplift",
                        f"prune.keep skipped: pruning needs a scene with subset() and "
                        f"save_ply() (EditableScene); scenes plugin {type(scene).__name__} has not",
                    )
                ]
        (out / "results.json").write_text(json.dumps(results, indent=2))
        return results

    @staticmethod
    def _round_trip(scene, views, imgs, extractor, features, k) -> dict:
        """Re-render the uplifted features into ``k`` evenly spaced views and compare with their 2D maps
        (resized to the camera): relative L2 error and PSNR (maps scaled by their range) over covered pixels."""
        from .segmentation import render_alpha

        picks = [views[round(i * (len(views) - 1) / max(k - 1, 1))] for i in range(min(k, len(views)))]
        errs, psnrs = [], []
        dev = scene_device(scene)
        for cam in picks:
            target = extract_map(extractor, imgs[cam.name], cam, dev).permute(1, 2, 0)  # [H, W, D]
            with torch.no_grad():
                pred = scene.render(features, cam)
            cover = render_alpha(scene, cam) > 0.99
            if not bool(cover.any()):
                continue
            diff = (pred - target)[cover]
            errs.append(float(diff.norm() / target[cover].norm().clamp_min(1e-12)))
            rng = float(target.max() - target.min()) or 1.0
            psnrs.append(float(10 * math.log10(rng**2 / max(float((diff**2).mean()), 1e-12))))
        if not errs:
            return {}
        return {"roundtrip_rel_error": sum(errs) / len(errs), "roundtrip_psnr": sum(psnrs) / len(psnrs)}
