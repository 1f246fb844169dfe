"""The ``remove`` workflow: open-vocabulary object removal (thesis §5.5, Fig. 5.1, 5.5 and C.4).

``fulcra run remove scene.ply=PLY scene.cameras=CAMERAS scene.images=DIR extractor=clip
prompt.text="teddy bear" features=dinov2 out=OUT``:

1. the text extractor's maps (CLIP, any :class:`~fulcra.interfaces.TextExtractor`) are uplifted and
   scored against the prompt: the 3D relevancy of Eq. C.2 (:func:`.localisation.relevancy_3d`);
2. with ``diffusion=true`` (default) the relevancies are refined by the refiner (graph diffusion)
   over a second extractor's uplifted features (``features=``, DINOv2 in the thesis), with
   ``prompt="relevancy"`` (C.1.4: positives by Otsu over relevancies above 0.5, a logistic-regression
   unary term, ``g_0`` on the top relevancies);
3. the per-Gaussian scores are binarised (``threshold=auto``): diffused scores at 0.006 of their
   maximum, the official removal demo's threshold (``configs/demo_removal_eval.yaml``: ``g_T``
   decays by orders of magnitude inside the object, so Otsu's split of the linear values keeps only
   its core; on the test scene 3D IoU 0.87 against 0.70 for Otsu); raw relevancies
   (``diffusion=false``) by Otsu's method over the positive scores, the thesis's 3D object selection
   (:func:`.localisation.select_3d`). ``otsu``, ``li`` or a number (a fraction of the maximum) force
   a rule;
4. the Gaussians of the selection are dropped.

Writes ``OUT/removed.ply`` (the scene without the selection, INRIA 3DGS PLY), ``OUT/mask3d.npy``
(one boolean per Gaussian, PLY order), ``OUT/renders/<camera>_before.png`` and ``_after.png`` (the
scene's colours on the views where the selection covers most pixels, when the scene plugin is an
:class:`~fulcra.interfaces.RGBScene`), ``OUT/figures/relevancy_<camera>.png`` (heat maps of the
rendered relevancy and of the selection scores, needs matplotlib) and ``OUT/results.json``. The
uplifted features are kept in ``OUT/text_features/`` and ``OUT/features/`` and reused by a rerun.
"""

from __future__ import annotations

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

__all__ = ["RemoveWorkflow", "TextPromptConfig", "check_text_extractor", "select_removal"]

#: the official removal demo's threshold on the max-rescaled diffused relevancy (demo_removal_eval.yaml)
OFFICIAL_THRESHOLD = 0.006


def _scene_config():
    from .lifting import SceneConfig

    return SceneConfig


@dataclass
class TextPromptConfig:
    text: str = field(default="", metadata={"help": 'the object to remove, in words ("teddy bear")'})


def _node(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _plugin_class(node: Any):
    """The plugin class a ``feature_extractors`` node names (presets resolved), or None when the
    registry cannot load it (``fulcra.create`` then reports that with its own one-line error)."""
    import fulcra
    from fulcra.registry import preset

    name = node if isinstance(node, str) else (node or {}).get("name")
    try:
        p = preset("feature_extractors", name)
        return fulcra.load_plugin("feature_extractors", p.get("name", name) if p else name)
    except (FulcraError, TypeError):
        return None


def check_text_extractor(node: Any, key: str = "extractor", workflow: str = "remove") -> None:
    """One-line ConfigError unless the extractor ``node`` names can embed text (``TextExtractor``)."""
    from fulcra.interfaces import TextExtractor

    cls = _plugin_class(node)
    if cls is not None and not isinstance(cls, TextExtractor):
        name = node if isinstance(node, str) else (node or {}).get("name")
        raise ConfigError(
            f"{workflow}: key {key!r}: extractor {name!r} cannot embed text (it needs embed_text() and "
            "relevancy(), fulcra.interfaces.TextExtractor); use extractor=clip or another text-capable extractor"
        )


def select_removal(
    scores: torch.Tensor, threshold: str | float = "auto", query: str = ""
) -> tuple[torch.Tensor, float]:
    """The 3D selection of per-Gaussian scores ``[N]`` (non-negative; diffused or raw relevancies).

    ``otsu`` (or ``auto``): Otsu over the positive scores (:func:`.localisation.select_3d`); ``li``: Li's
    method over them; a number ``t``: ``scores / max > t`` (the official demo: 0.006). The workflow's
    ``auto`` picks 0.006 for diffused scores before calling this. Returns ``(mask [N] bool, the
    threshold on the max-rescaled scores)``.
    """
    from .localisation import check_selection
    from .thresholds import li, otsu

    s = scores.float()
    mx = float(s.max())
    r = s / mx if mx > 0 else torch.zeros_like(s)
    if isinstance(threshold, str):
        if threshold not in ("auto", "otsu", "li"):
            raise ValueError(f"threshold must be auto, otsu, li or a number, got {threshold!r}")
        pos = r[r > 0]
        t = (li(pos) if threshold == "li" else otsu(pos)) if pos.numel() > 1 else 0.0
        if pos.numel() and float(pos.min()) >= t:
            t = 0.0  # all alike: nothing to split, keep them all
    else:
        t = float(threshold)
    mask = r > t
    check_selection(mask, r, t, query, "Gaussians")
    return mask, float(t)


def text_scores(
    scene,
    text_features: torch.Tensor,
    text_weights: torch.Tensor,
    extractor,
    text: str,
    *,
    refiner=None,
    features: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The 3D scores of a text query, as ``fulcra run remove`` computes them (§5.5, C.1.4).

    Args:
        text_features: ``[N, D]`` uncentred uplifted features of the text-capable ``extractor``;
            ``text_weights``: ``[N]`` their weight sums (a Gaussian no view saw has no relevancy).
        refiner: refine the relevancies (``prompt="relevancy"``) over ``features [N, F]`` with the
            weight sums ``weights [N]``; None: the raw relevancies.

    Returns:
        ``(relevancy [N, 1], scores [N], the refiner's resolved parameters)``.
    """
    from .localisation import relevancy_3d
    from .segmentation import scene_positions

    seen = text_weights > 0
    relev = relevancy_3d(text_features, extractor, [text]).float() * seen[:, None].to(text_features.device)
    scores, params = relev[:, 0], {}
    if refiner is not None:
        refined = refiner.refine(scene_positions(scene), features, relev, prompt="relevancy", weights=weights)
        scores = torch.as_tensor(refined).float().reshape(-1, 1)[:, 0]
        resolved = getattr(refiner, "resolved", None)
        params = resolved("relevancy") if callable(resolved) else {}
    return relev, scores, params


def removal_rule(threshold: str | float, diffusion: bool) -> str | float:
    """The rule of :func:`select_removal` for a ``threshold`` key: ``auto`` is 0.006 of the max for
    diffused scores (the official removal demo) and Otsu for raw relevancies."""
    if threshold == "auto":
        return OFFICIAL_THRESHOLD if diffusion else "otsu"
    return threshold


__all__ += ["text_scores", "removal_rule"]


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


class RemoveWorkflow:
    """Remove an object named in words from a 3DGS scene (LUDVIG §5.5): CLIP relevancy in 3D, refined
    by graph diffusion over DINOv2 features, binarised, the selected Gaussians dropped."""

    @dataclass
    class Config:
        scene: Any = field(
            default_factory=lambda: _scene_config()(), metadata={"help": "the scene: ply, cameras, images, backend"}
        )
        extractor: Any = field(
            default_factory=lambda: {"name": "clip"},
            metadata={
                "kind": "feature_extractors",
                "help": "the text-capable extractor whose uplifted features are scored against prompt.text (clip, or any TextExtractor)",
            },
        )
        prompt: TextPromptConfig = field(
            default_factory=TextPromptConfig, metadata={"help": "prompt.text: the object to remove"}
        )
        diffusion: bool = field(
            default=True, metadata={"help": "refine the relevancies by graph diffusion over features= (C.1.4)"}
        )
        features: Any = field(
            default_factory=lambda: {"name": "dinov2"},
            metadata={
                "kind": "feature_extractors",
                "help": "the extractor whose uplifted features the diffusion runs over (DINOv2 in the thesis)",
            },
        )
        refiner: Any = field(
            default_factory=lambda: {"name": "graph_diffusion"},
            metadata={"kind": "refiners", "help": "the refiner of the relevancies (called with prompt=relevancy)"},
        )
        threshold: str = field(
            default="auto",
            metadata={
                "help": "3D binarisation: auto (diffused scores: 0.006 of the max, the official removal demo; raw relevancies: Otsu over the positive scores, the thesis), otsu, li, or a number on the max-rescaled scores"
            },
        )
        center: bool = field(
            default=True, metadata={"help": "subtract the mean 2D feature of features= before uplifting"}
        )
        views: list = field(
            default_factory=list, metadata={"help": "cameras to uplift from (empty: all with an image)"}
        )
        renders: int = field(
            default=3,
            metadata={"help": "views rendered before and after removal (those where the selection covers most pixels)"},
        )
        figures: bool = field(default=True, metadata={"help": "write relevancy heat maps (needs matplotlib)"})

    def __init__(self, config):
        self.cfg = config

    def _threshold(self) -> str | float:
        th = str(self.cfg.threshold)
        if th in ("auto", "otsu", "li"):
            return th
        try:
            t = float(th)
        except ValueError:
            raise ConfigError(
                f"remove: key 'threshold' must be auto, otsu, li or a number, got {self.cfg.threshold!r}"
            ) from None
        if not 0.0 <= t < 1.0:
            raise ConfigError(f"remove: key 'threshold' is a fraction of the maximum score in [0, 1), got {t}")
        return t

    def check(self) -> None:
        """Before anything is written: a prompt text, a text-capable extractor, a feature extractor
        that needs no prompts for the diffusion, the threshold and the scene's files."""
        from .lifting import check_scene

        cfg = self.cfg
        self._check_config()
        cams, imgs = check_scene(cfg.scene, "remove")
        names = {c.name for c in cams}
        unknown = [v for v in cfg.views if v not in names]
        if unknown:
            raise ConfigError(f"remove: key 'views': unknown cameras {unknown[:3]}")

    def _check_config(self) -> None:
        from fulcra.interfaces import PromptedExtractor

        cfg = self.cfg
        if not str(cfg.prompt.text).strip():
            raise ConfigError('remove: set prompt.text="..." (the object to remove, in words)')
        check_text_extractor(_node(cfg.extractor))
        if cfg.diffusion:
            cls = _plugin_class(_node(cfg.features))
            if cls is not None and isinstance(cls, PromptedExtractor) and bool(cls.needs_prompts):
                name = getattr(cls, "name", cls.__name__)
                raise ConfigError(
                    f"remove: key 'features': extractor {name!r} needs point prompts; the diffusion runs over "
                    "an extractor that maps an image alone to features (dinov2, rgb, ...)"
                )
        self._threshold()
        if int(cfg.renders) < 0:
            raise ConfigError(f"remove: key 'renders' must be >= 0, got {cfg.renders}")

    def run(self, ctx) -> dict:
        import fulcra
        from fulcra.engine import Stage, file_identity
        from fulcra.interfaces import EditableScene, RGBScene, TextExtractor

        from .editing import remove as remove_selection
        from .lifting import open_scene, resolve_scene_paths, say, uplift_views
        from .segmentation import render_scores

        self._check_config()  # the runner ran check(); a direct call still fails before any writing
        cfg, out = self.cfg, Path(ctx.out)
        th = self._threshold()
        text = str(cfg.prompt.text).strip()
        t0 = time.time()
        scene, cams, imgs, ply = open_scene(cfg.scene, ctx.device, "remove")
        if not isinstance(scene, EditableScene):
            raise ConfigError(
                f"remove: scenes plugin {type(scene).__name__} cannot be edited: removal needs subset() and "
                "save_ply() (fulcra.interfaces.EditableScene)"
            )
        by_name = {c.name: c for c in cams}
        views = [by_name[v] for v in cfg.views] if cfg.views else [c for c in cams if c.name in imgs]
        if not views:
            raise FormatError(f"{imgs.folder or '(no image folder; set scene.images)'}: no image matches a camera")
        text_node = _node(cfg.extractor)
        extractor = fulcra.create("feature_extractors", text_node)
        if not isinstance(extractor, TextExtractor):
            raise ConfigError(f"remove: extractor {type(extractor).__name__} cannot embed text (TextExtractor)")
        out.mkdir(parents=True, exist_ok=True)
        p, c, i = resolve_scene_paths(cfg.scene, "remove")
        stage = Stage(
            out,
            "remove",
            {
                "config": OmegaConf.to_container(cfg, resolve=True),
                "files": {k: file_identity(v) for k, v in {"ply": p, "cameras": c, "images": i}.items() if v},
            },
            [out / o for o in ("mask3d.npy", "removed.ply", "renders", "figures", "results.json")],
            ctx.hooks.message,
            writer=ctx.is_main,
        )
        if not stage.begin() and (out / "results.json").is_file():
            return json.loads((out / "results.json").read_text())
        up = uplift_views(
            scene,
            views,
            imgs,
            extractor,
            out=out / "text_features",
            ply=ply,
            extractor_node=text_node,
            hooks=ctx.hooks,
            center=False,  # relevancies compare directions in the joint space: no shift
            stage="text_features",
            is_main=ctx.is_main,
        )
        upf, refiner = None, None
        if cfg.diffusion:
            feat_node = _node(cfg.features)
            fx = fulcra.create("feature_extractors", feat_node)
            upf = uplift_views(
                scene,
                views,
                imgs,
                fx,
                out=out / "features",
                ply=ply,
                extractor_node=feat_node,
                hooks=ctx.hooks,
                center=cfg.center,
                stage="features",
                is_main=ctx.is_main,
            )
            refiner = fulcra.create("refiners", _node(cfg.refiner))
        relev, scores, params = text_scores(
            scene,
            up.features,
            up.weights,
            extractor,
            text,
            refiner=refiner,
            features=None if upf is None else upf.features,
            weights=None if upf is None else upf.weights,
        )
        seen = up.weights > 0
        rule = removal_rule(th, bool(cfg.diffusion))
        mask3d, t = select_removal(scores, rule, text)
        if int(mask3d.sum()) == 0:
            raise ConfigError(
                f"remove: prompt {text!r} selects no Gaussian (score max {float(scores.max()):.3g}); "
                "try another wording, threshold= or diffusion=false"
            )
        _save_npy(mask3d.cpu().numpy(), out / "mask3d.npy")
        kept = remove_selection(scene, mask3d)
        removed_path = kept.save_ply(out / "removed.ply")
        say(
            ctx,
            "remove",
            f"{int(mask3d.sum())} of {scene.num_primitives} Gaussians selected by {text!r}: {removed_path}",
        )
        # the views where the selection shows most
        cand = views[:: max(1, len(views) // 12)][:12]
        cover = {cam.name: float(render_scores(scene, mask3d.float(), cam).mean()) for cam in cand}
        shown = sorted(cand, key=lambda cam: -cover[cam.name])[: int(cfg.renders)]
        notes: list[str] = []
        renders = []
        if shown and isinstance(scene, RGBScene) and isinstance(kept, RGBScene):
            from .figures import save_image

            for cam in shown:
                with torch.no_grad():
                    before, after = scene.render_rgb(cam), kept.render_rgb(cam)
                save_image(before, out / "renders" / f"{cam.name}_before.png", min_width=0)
                save_image(after, out / "renders" / f"{cam.name}_after.png", min_width=0)
                renders.append(cam.name)
        elif shown:
            notes.append(
                say(
                    ctx,
                    "remove",
                    f"no before/after renders: scenes plugin {type(scene).__name__} has no render_rgb() (RGBScene)",
                )
            )
        if cfg.figures and shown:
            try:
                from .figures import heatmap, save_image

                for cam in shown:
                    img = imgs[cam.name] if cam.name in imgs else None
                    if img is not None and tuple(img.shape[-2:]) != (cam.height, cam.width):
                        img = None
                    for tag, s in (("relevancy", relev[:, 0]), ("scores", scores)):
                        pic = heatmap(render_scores(scene, s, cam).cpu(), img, floor=0.3 if img is not None else 0.0)
                        save_image(pic, out / "figures" / f"{tag}_{cam.name}.png", label=f"{tag}: {text}")
            except FulcraError as exc:  # matplotlib missing
                notes.append(say(ctx, "remove", f"no figures: {exc}"))
        results = {
            "prompt": text,
            "num_gaussians": scene.num_primitives,
            "selected": int(mask3d.sum()),
            "remaining": int(kept.num_primitives),
            "diffusion": bool(cfg.diffusion),
            "refiner": params,
            "threshold": {"rule": rule if isinstance(rule, str) else "fraction of max", "config": str(th), "value": t},
            "relevancy": {
                "min": float(relev[seen, 0].min()) if bool(seen.any()) else 0.0,
                "max": float(relev[:, 0].max()),
                "mean_selected": float(relev[mask3d.to(relev.device), 0].mean()),
                "mean_other_seen": float(relev[(~mask3d.to(relev.device)) & seen.to(relev.device), 0].mean())
                if bool(((~mask3d.to(relev.device)) & seen.to(relev.device)).any())
                else None,
            },
            "views": len(views),
            "renders": renders,
            "removed": str(removed_path),
            "mask3d": str(out / "mask3d.npy"),
            "seconds": round(time.time() - t0, 2),
        }
        if notes:
            results["notes"] = notes
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
        stage.complete()
        ctx.hooks.evaluate(metrics={"selected": float(results["selected"])})
        return results
