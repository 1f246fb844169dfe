"""``fulcra run lerf``: open-vocabulary localisation and segmentation on the LERF scenes as extended by
LangSplat (Tables 5.3-5.5; thesis C.1.4, the official ``ludvig_clip.py`` with ``lerf_eval.yaml`` and
``lerf_eval_sam.yaml``).

``data=`` is ``lerf_ovs`` (holding ``label/<scene>/frame_*.json`` and ``<scene>/images``) or its
``label`` folder; ``scenes=`` the trained 3DGS outputs (:mod:`.benchmarks`). Per scene, the text
extractor's maps (CLIP) are uplifted and turned into per-Gaussian relevancies for every query of
the scene (Eq. C.2), the graph extractor's maps (DINOv2) are uplifted for the graph, and every
annotated frame is scored:

- ``localisation``: the relevancy rendered, smoothed by a zero-padded 5x5 mean filter, a hit when a
  maximal pixel lies in one of the query's boxes (Table 5.3);
- ``iou``: the same smoothed map, ``> 0.8`` of its max then Otsu (Table 5.5, no SAM, no diffusion);
- ``iou_diffusion``: relevancies refined by graph diffusion (``prompt="relevancy"``: 200 steps,
  b = 0.5, P = L^{1/2}), no smoothing, Otsu over the positive pixels (Table 5.5, row 2);
- ``iou_selection``: the diffused relevancies binarised in 3D (Otsu), rendered, Otsu again (Table
  5.4, "3D object selection");
- with ``sam_extractor=``: ``iou_sam`` and ``iou_sam_diffusion``, SAM prompted from the top-q pixels
  (q from Otsu over the pixels above 0.93, resp. 0.01 after diffusion with P = L^{1/0.025}), the
  averaged masks thresholded by Otsu (Table 5.4 top, Table 5.5 rows 3-4).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fulcra.errors import ConfigError, FormatError

from .benchmarks import (
    BenchScene,
    image_folder,
    plain_node,
    run_scenes,
    say_line,
    scene_folder,
    trained_scene,
    transposed_table,
)

__all__ = ["LerfWorkflow", "text_relevancy", "localisation_hit_any"]

ROWS = [
    ("localisation", "localisation accuracy (Table 5.3)"),
    ("localisation_diffusion", "localisation accuracy, diffused"),
    ("iou", "IoU, relevancy (Table 5.5 row 1)"),
    ("iou_diffusion", "IoU, graph diffusion (Table 5.5 row 2)"),
    ("iou_selection", "IoU, 3D object selection (Table 5.4 bottom)"),
    ("iou_sam", "IoU, SAM (Table 5.5 row 3)"),
    ("iou_sam_diffusion", "IoU, SAM + graph diffusion (Tables 5.4 top, 5.5 row 4)"),
]


def text_relevancy(extractor: Any, features: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Per-Gaussian relevancies ``[N, Q]`` of uplifted features ``[N, D]``: the extractor's own
    ``relevancy(features, texts)`` when it has one, else Eq. C.2 over its ``embed_text`` with the
    canonical phrases ("object", "things", "stuff", "texture") and T = 10."""
    if hasattr(extractor, "relevancy"):
        return torch.as_tensor(extractor.relevancy(features, list(texts))).float()
    from fulcra_plugins.extractors.clip import CANONICAL_PHRASES, relevancy

    q = extractor.embed_text(list(texts))
    c = extractor.embed_text(list(CANONICAL_PHRASES))
    return relevancy(features, q, c, 10.0).float()


def localisation_hit_any(smoothed: torch.Tensor, boxes: list) -> bool:
    """The official hit rule: some pixel equal to the map's maximum lies in one of the boxes
    ``[x1, y1, x2, y2]`` (inclusive)."""
    from .metrics import localisation_hit

    ys, xs = torch.nonzero(smoothed == smoothed.max(), as_tuple=True)
    return any(localisation_hit((int(x), int(y)), boxes) for x, y in zip(xs.tolist(), ys.tolist()))


def _refine(refiner: Any, positions: torch.Tensor, graph: Any, rel: torch.Tensor) -> torch.Tensor:
    """The refiner over the graph features, ``prompt="relevancy"``, all queries (columns) in one call,
    as the official code diffuses them together (graph_diffusion: each node takes the ``s_f`` of its
    most relevant query)."""
    if rel.shape[1] == 0:
        return rel
    out = refiner.refine(positions, graph.features, rel, prompt="relevancy", weights=graph.weights)
    return torch.as_tensor(out).float().reshape(rel.shape).cpu()


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # [H, W, Q] -> [h, w, Q]
    if tuple(img.shape[:2]) == tuple(size):
        return img
    x = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0)


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    from .metrics import iou

    return iou(pred.cpu(), gt)


class LerfWorkflow:
    """LERF localisation and segmentation (Tables 5.3-5.5) from uplifted CLIP relevancies, with and
    without DINOv2 graph diffusion (and SAM when ``sam_extractor=`` is set).

    ``fulcra run lerf data=lerf_ovs scenes=GS_ROOT out=OUT``; ``extractor=`` any text-capable
    extractor (``relevancy`` or ``embed_text``), ``graph_extractor=`` the features of the graph.
    """

    @dataclass
    class Config:
        data: str = field(default="", metadata={"help": "lerf_ovs (with label/<scene>/*.json) or its label/ folder"})
        scenes: str = field(
            default="",
            metadata={
                "help": "root of trained 3DGS outputs: <scenes>/<scene>/point_cloud/iteration_*/point_cloud.ply + cameras.json"
            },
        )
        scenes_list: list = field(
            default_factory=list, metadata={"help": "the scenes to evaluate (empty: every scene of the labels)"}
        )
        images: str = field(
            default="",
            metadata={
                "help": "root of the source images, ROOT/<scene>/images (empty: <scenes>/<scene>/images, cfg_args' source_path, then <data>/<scene>/images)"
            },
        )
        backend: str = field(default="auto", metadata={"help": "scenes plugin (auto, torch, gsplat, ...)"})
        extractor: Any = field(
            default_factory=lambda: {"name": "clip", "variant": "vitb16_laion2b"},
            metadata={
                "kind": "feature_extractors",
                "help": "a text-capable extractor (relevancy or embed_text): CLIP ViT-B/16 laion2b as the thesis",
            },
        )
        graph_extractor: Any = field(
            default_factory=lambda: {"name": "dinov2", "variant": "vitg14_reg", "n_components": 40},
            metadata={"kind": "feature_extractors", "help": "the features the diffusion graph compares (DINOv2)"},
        )
        refiner: Any = field(
            default_factory=lambda: {"name": "graph_diffusion"},
            metadata={
                "kind": "refiners",
                "help": "refiner of the relevancies, called with prompt=relevancy (graph_diffusion: 200 steps, b = 0.5, P = L^(1/2))",
            },
        )
        diffusion: bool = field(default=True, metadata={"help": "also evaluate relevancies refined by the refiner"})
        sam_extractor: Any = field(
            default=None,
            metadata={"kind": "feature_extractors", "help": "a sam or sam2 extractor for the SAM rows (none: skipped)"},
        )
        sam_unary_bandwidth: float = field(
            default=0.025, metadata={"help": "b of P = L^(1/b) for the diffusion feeding SAM (lerf_eval_sam.yaml)"}
        )
        smooth: int = field(default=5, metadata={"help": "mean-filter size before the arg-max and the 0.8 cutoff"})
        cutoff: float = field(default=0.8, metadata={"help": "rough threshold of raw relevancies before Otsu"})
        sam_cutoff: float = field(default=0.93, metadata={"help": "rough threshold of the SAM prompt share (raw)"})
        sam_cutoff_diffusion: float = field(
            default=0.01, metadata={"help": "rough threshold of the SAM prompt share (diffused)"}
        )
        center: bool = field(default=False, metadata={"help": "subtract the mean 2D feature before uplifting"})

    def __init__(self, config):
        self.cfg = config

    def _labels(self) -> tuple[Path, Path]:
        """``(label root, dataset root)``."""
        root = Path(self.cfg.data).expanduser()
        if (root / "label").is_dir():
            return root / "label", root
        if not root.is_dir():
            raise FormatError(f"{root}: LERF folder not found (data= is lerf_ovs or lerf_ovs/label)")
        return root, root.parent

    def _resolve(self) -> list[tuple[BenchScene, list]]:
        from fulcra_plugins.scenes import scene_inputs

        from .protocols import read_lerf

        cfg = self.cfg
        if not cfg.data or not cfg.scenes:
            raise ConfigError("lerf: set data=lerf_ovs and scenes=ROOT of the trained 3DGS outputs")
        labels, root = self._labels()
        names = [str(s) for s in cfg.scenes_list] or sorted(p.name for p in labels.iterdir() if p.is_dir())
        out = []
        for name in names:
            folder = scene_folder(cfg.scenes, name)
            ply, cams_path = trained_scene(folder)
            images = image_folder(name, folder, str(cfg.images), extra=(root / name / "images",))
            cams, _ = scene_inputs(ply, cams_path, images)
            cases = read_lerf(labels, [name])
            known = {c.name for c in cams}
            for case in cases:
                if case.image not in known:
                    raise FormatError(f"{cams_path}: scene {name!r} has no camera {case.image!r} (a LERF frame)")
            out.append((BenchScene(name, ply, cams_path, images, [labels / name]), cases))
        return out

    def _check_extractors(self) -> None:
        import fulcra

        node = plain_node(self.cfg.extractor)
        name = node if isinstance(node, str) else (node or {}).get("name")
        try:
            from fulcra.registry import preset

            p = preset("feature_extractors", name)
            cls = fulcra.load_plugin("feature_extractors", p.get("name", name) if p else name)
        except Exception:  # unknown or uninstalled: fulcra.create reports it with its own one-line error
            return
        if not (hasattr(cls, "relevancy") or hasattr(cls, "embed_text")):
            raise ConfigError(
                f"lerf: key 'extractor': {name!r} embeds no text (needs relevancy() or embed_text(); e.g. extractor=clip)"
            )

    def check(self) -> None:
        """Before anything is written: the extractor embeds text, every scene's files and labels."""
        self._check_extractors()
        self._resolve()

    def run(self, ctx) -> dict:
        self._check_extractors()
        resolved = self._resolve()
        cases = {sc.name: c for sc, c in resolved}
        notes: list[str] = []
        if self.cfg.sam_extractor is None:
            notes.append(
                say_line(ctx, "lerf", "no sam_extractor: the SAM rows (Table 5.4 top, 5.5 rows 3-4) are skipped")
            )
        return run_scenes(
            "lerf",
            self.cfg,
            ctx,
            [sc for sc, _ in resolved],
            lambda sc, sdir: self._evaluate(sc, cases[sc.name], sdir, ctx),
            lambda rows: transposed_table(rows, ROWS),
            "LERF localisation and segmentation (Tables 5.3-5.5)",
            notes,
        )

    def _evaluate(self, sc: BenchScene, cases: list, sdir: Path, ctx) -> dict:
        import fulcra
        from fulcra_plugins.scenes import load_scene

        from .lifting import uplift_views
        from .localisation import segment_3d_selection, segment_relevancy
        from .segmentation import render_scores, scene_positions
        from .thresholds import mean_filter, otsu

        cfg = self.cfg
        scene, cams, imgs = load_scene(sc.ply, sc.cameras, sc.images, backend=str(cfg.backend), device=ctx.device)
        by_name = {c.name: c for c in cams}
        views = [c for c in cams if c.name in imgs]
        if not views:
            raise FormatError(f"{sc.images}: no image matches a camera of {sc.cameras}")
        texts = sorted({q.text for case in cases for q in case.queries})
        node = plain_node(cfg.extractor)
        text_ex = fulcra.create("feature_extractors", node)
        clip = uplift_views(
            scene, views, imgs, text_ex, out=sdir / "text", ply=str(sc.ply), extractor_node=node,
            hooks=ctx.hooks, center=cfg.center, stage="text features", is_main=ctx.is_main,
        )  # fmt: skip
        rel = text_relevancy(text_ex, clip.features, texts)  # [N, Q]
        rel = torch.where(clip.weights[:, None] > 0, rel, torch.zeros_like(rel))  # unseen Gaussians: no relevancy
        variants = {"raw": rel}
        sam = (
            fulcra.create("feature_extractors", plain_node(cfg.sam_extractor))
            if cfg.sam_extractor is not None
            else None
        )
        if cfg.diffusion:
            gnode = plain_node(cfg.graph_extractor)
            (sdir / "graph").mkdir(parents=True, exist_ok=True)
            graph = uplift_views(
                scene, views, imgs, fulcra.create("feature_extractors", gnode), out=sdir / "graph", ply=str(sc.ply),
                extractor_node=gnode, hooks=ctx.hooks, center=True, stage="graph features", is_main=ctx.is_main,
            )  # fmt: skip
            refiner = fulcra.create("refiners", plain_node(cfg.refiner))
            pos = scene_positions(scene)
            variants["diffused"] = _refine(refiner, pos, graph, rel)
            if sam is not None and hasattr(refiner, "with_params"):
                tuned = refiner.with_params(unary_bandwidth=float(cfg.sam_unary_bandwidth))
                variants["diffused_sam"] = _refine(tuned, pos, graph, rel)
            elif sam is not None:
                variants["diffused_sam"] = variants["diffused"]
        acc: dict = {}
        ious: dict = {}
        empty = 0
        for case in cases:
            cam = by_name[case.image]
            size = (case.height, case.width)
            rendered = {k: _resize(render_scores(scene, v, cam).float().cpu(), size) for k, v in variants.items()}
            image = imgs[cam.name] if sam is not None else None
            for q in case.queries:
                k = texts.index(q.text)
                with warnings.catch_warnings():  # an empty or full selection is a score, not a warning, here
                    warnings.simplefilter("ignore")
                    r = (
                        mean_filter(rendered["raw"][..., k], int(cfg.smooth))
                        if cfg.smooth > 1
                        else rendered["raw"][..., k]
                    )
                    if not bool((r > 0).any()):  # as the official code: no relevancy, a miss and IoU 0
                        empty += 1
                        acc.setdefault("localisation", []).append(False)
                        ious.setdefault("iou", []).append(0.0)
                    else:
                        acc.setdefault("localisation", []).append(localisation_hit_any(r, q.boxes))
                        ious.setdefault("iou", []).append(_iou(segment_relevancy(r, float(cfg.cutoff)), q.mask))
                    if "diffused" in rendered:
                        d = rendered["diffused"][..., k]
                        hit = bool((d > 0).any()) and localisation_hit_any(d, q.boxes)
                        acc.setdefault("localisation_diffusion", []).append(hit)
                        ious.setdefault("iou_diffusion", []).append(_iou(segment_relevancy(d, 0.0), q.mask))
                        sel = segment_3d_selection(scene, variants["diffused"][:, k], cam).float().cpu()
                        sel = _resize(sel[..., None], size)[..., 0] > 0.5
                        ious.setdefault("iou_selection", []).append(_iou(sel, q.mask))
                    if sam is not None:
                        for key, src, cut in (
                            ("iou_sam", "raw", cfg.sam_cutoff),
                            ("iou_sam_diffusion", "diffused_sam", cfg.sam_cutoff_diffusion),
                        ):
                            if src in rendered:
                                ious.setdefault(key, []).append(
                                    _iou(self._sam_mask(sam, image, rendered[src][..., k], float(cut), otsu), q.mask)
                                )
        row = {k: float(np.mean(v)) for k, v in {**acc, **ious}.items()}
        row.update(n=sum(len(c.queries) for c in cases), frames=len(cases), queries=texts, empty_relevancy=empty)
        return row

    @staticmethod
    def _sam_mask(sam, image: torch.Tensor, rendered: torch.Tensor, cutoff: float, otsu) -> torch.Tensor:
        """SAM prompted from the top-q pixels of ``rendered`` ``[h, w]``, its averaged masks at the
        annotation's size thresholded by Otsu (``return_mask="otsu"`` in the official ``sam_predict``)."""
        from .localisation import sam_prompt_mask

        pos = sam_prompt_mask(rendered, cutoff)
        if not bool(pos.any()):
            return torch.zeros_like(pos)
        img = torch.as_tensor(image)
        if tuple(img.shape[-2:]) != tuple(pos.shape):
            img = torch.nn.functional.interpolate(img[None].float(), size=tuple(pos.shape), mode="bilinear")[0]
        dev = torch.device(getattr(sam, "device", None) or "cpu")
        with torch.no_grad():
            m = sam(img[None].to(dev), positive=pos[None].to(dev))[0, 0].float().cpu()
        if tuple(m.shape) != tuple(pos.shape):
            m = torch.nn.functional.interpolate(m[None, None], size=tuple(pos.shape), mode="bilinear")[0, 0]
        if float(m.max()) <= float(m.min()):
            return m > 0.5
        return m > otsu(m)
