"""Evaluation runners on the published benchmarks: ``fulcra run nvos``, ``fulcra run spinnerf``
(this module) and ``fulcra run lerf`` (:mod:`.lerf_benchmark`).

Each takes ``data=`` (the dataset root in its published layout, :mod:`.protocols`) and ``scenes=``
(the root of trained 3DGS outputs, one folder per scene as the official 3DGS code writes it)::

    <scenes>/<scene>/point_cloud/iteration_<N>/point_cloud.ply   the highest N is used
    <scenes>/<scene>/cameras.json

Images, the first of (the official code reads ``<colmap_dir>/images``):

1. ``images=ROOT``: ``ROOT/<scene>/images`` (the source datasets, e.g. ``llff_data``);
2. ``<scenes>/<scene>/images``;
3. ``<source_path>/images`` with ``source_path`` as recorded by 3DGS training in ``<scenes>/<scene>/cfg_args``;
4. LERF only: ``<data>/<scene>/images`` (``lerf_ovs`` holds them).

A scene named ``<base>_<suffix>`` without its own folder uses ``<scenes>/<base>`` (NVOS's
``horns_center`` and ``horns_left`` are both the ``horns`` scene). Each scene is a fingerprinted
stage (``OUT/scenes/<scene>/results.json``): a finished scene is not recomputed when the run is
repeated with the same inputs. ``OUT/results.json`` and ``OUT/results.md`` hold the per-scene and
mean tables.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from fulcra.engine import atomic_write_text
from fulcra.errors import ConfigError, FormatError

__all__ = [
    "scene_folder",
    "trained_scene",
    "image_folder",
    "predict_mask",
    "transposed_table",
    "NvosWorkflow",
    "SpinnerfWorkflow",
]

_METHODS = ("diffusion", "uplift", "sam")


# ---------------------------------------------------------------------------------------- layout
def scene_folder(scenes: str | Path, scene: str) -> Path:
    """``<scenes>/<scene>``, or ``<scenes>/<base>`` for a ``<base>_<suffix>`` name without its own folder."""
    root = Path(scenes).expanduser()
    d = root / scene
    if d.is_dir():
        return d
    if "_" in scene and (root / scene.rsplit("_", 1)[0]).is_dir():
        return root / scene.rsplit("_", 1)[0]
    raise FormatError(f"{d}: trained 3DGS folder of scene {scene!r} not found")


def trained_scene(folder: Path) -> tuple[Path, Path]:
    """``(ply, cameras.json)`` of a 3DGS output folder: the highest ``point_cloud/iteration_*``."""
    its = []
    for p in (folder / "point_cloud").glob("iteration_*/point_cloud.ply"):
        m = re.fullmatch(r"iteration_(\d+)", p.parent.name)
        if m:
            its.append((int(m.group(1)), p))
    if not its:
        raise FormatError(f"{folder / 'point_cloud' / 'iteration_*' / 'point_cloud.ply'}: no trained 3DGS scene")
    cams = folder / "cameras.json"
    if not cams.is_file():
        raise FormatError(f"{cams}: cameras of the trained scene not found")
    return max(its)[1], cams


def _cfg_args_source(folder: Path) -> Path | None:
    f = folder / "cfg_args"
    if not f.is_file():
        return None
    text = f.read_text(errors="replace")
    src = re.search(r"source_path=['\"]([^'\"]+)['\"]", text)
    sub = re.search(r"\bimages=['\"]([^'\"]+)['\"]", text)
    return Path(src.group(1)) / (sub.group(1) if sub else "images") if src else None


def image_folder(scene: str, folder: Path, images: str = "", extra: tuple[Path, ...] = ()) -> Path:
    """The image folder of a scene by the rule of the module docstring; one-line error naming where it looked."""
    if images:
        d = Path(images).expanduser() / folder.name / "images"  # the trained scene's name (horns for horns_center)
        if not d.is_dir():
            raise FormatError(f"{d}: image folder of scene {scene!r} not found (images= is set)")
        return d
    tried = [folder / "images"]
    src = _cfg_args_source(folder)
    if src is not None:
        tried.append(src)
    tried += list(extra)
    for d in tried:
        if d.is_dir():
            return d
    raise FormatError(
        f"{tried[0]}: image folder of scene {scene!r} not found (also looked in "
        f"{', '.join(str(t) for t in tried[1:]) or 'no cfg_args source_path'}; set images=ROOT for ROOT/<scene>/images)"
    )


# ---------------------------------------------------------------------------------------- helpers
def predict_mask(scene, scores: torch.Tensor, camera, tuning, size: tuple[int, int]) -> torch.Tensor:
    """A view's 2D mask under the reference-view protocol at the ground truth's ``size`` ``(H, W)``:
    the rendered scores min-max normalised (or the rendered 3D selection), upsampled bilinearly to
    ``size`` as the official evaluation does before thresholding, ``> threshold``."""
    from . import reference as R
    from .segmentation import render_scores
    from .thresholds import rescale

    if tuning.mode_2d == "selection":
        img, t = render_scores(scene, R.mask_3d(scores, tuning).float(), camera).float(), 0.5
    else:
        img, t = rescale(render_scores(scene, scores, camera).float()), tuning.threshold_2d
    if tuple(img.shape) != tuple(size):
        img = torch.nn.functional.interpolate(img[None, None], size=tuple(size), mode="bilinear", align_corners=False)
        img = img[0, 0]
    return (img > t).cpu()


def _fit_mask(mask: torch.Tensor, camera) -> torch.Tensor:
    """A prompt or reference mask at the camera's size (nearest, as the official ``load_scribbles``)."""
    m = torch.as_tensor(mask).bool()
    if tuple(m.shape) == (camera.height, camera.width):
        return m
    return torch.nn.functional.interpolate(m[None, None].float(), size=(camera.height, camera.width))[0, 0] > 0.5


def transposed_table(per_scene: dict, rows: list[tuple[str, str]], scale: float = 100.0, digits: int = 1) -> str:
    """Measures as rows and scenes as columns with an ``overall`` mean, as Tables 5.3-5.5."""
    scenes = list(per_scene)
    lines = ["| | " + " | ".join([*scenes, "overall"]) + " |", "|" + "---|" * (len(scenes) + 2)]
    for key, label in rows:
        vals = [per_scene[s].get(key) for s in scenes]
        if all(v is None for v in vals):
            continue
        cells = ["-" if v is None else f"{v * scale:.{digits}f}" for v in vals]
        kept = [v for v in vals if v is not None]
        lines.append("| " + " | ".join([label, *cells, f"{np.mean(kept) * scale:.{digits}f}"]) + " |")
    return "\n".join(lines)


def plain_node(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def say_line(ctx, name: str, msg: str) -> str:
    from .lifting import say

    return say(ctx, name, msg)


@dataclass
class BenchScene:
    """What a runner resolved for one scene before running it."""

    name: str
    ply: Path
    cameras: Path
    images: Path
    data_files: list  # the dataset files/folders this scene reads (for the fingerprint)


def run_scenes(
    workflow: str,
    cfg: Any,
    ctx: Any,
    scenes: list[BenchScene],
    evaluate: Callable[[BenchScene, Path], dict],
    table: Callable[[dict], str],
    title: str,
    notes: list[str],
) -> dict:
    """Run ``evaluate(scene, scene_out) -> row`` per scene as a fingerprinted stage (a finished scene is
    reused), then write ``OUT/results.json`` and ``OUT/results.md`` with ``table(rows)``."""
    from fulcra.engine import Stage, file_identity

    out = Path(ctx.out)
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "scenes_list"}
    rows, reused = {}, []
    for i, sc in enumerate(scenes):
        sdir = out / "scenes" / sc.name
        inputs = {
            "config": config,
            "files": {
                "ply": file_identity(sc.ply),
                "cameras": file_identity(sc.cameras),
                "images": file_identity(sc.images),
                "data": [file_identity(p) for p in sc.data_files],
            },
        }
        stage = Stage(out, f"scenes/{sc.name}", inputs, [sdir / "results.json"], ctx.hooks.message, writer=ctx.is_main)
        if not stage.begin() and (sdir / "results.json").is_file():
            rows[sc.name] = json.loads((sdir / "results.json").read_text())
            reused.append(sc.name)
        else:
            sdir.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            row = evaluate(sc, sdir)
            row["seconds"] = round(time.time() - t0, 2)
            atomic_write_text(json.dumps(row, indent=2), sdir / "results.json")
            stage.complete()
            rows[sc.name] = row
        ctx.hooks.step(step=i + 1, metrics={}, total=len(scenes), stage="scenes")
    md = table(rows)
    text = f"# {title}\n\n{md}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(text, out / "results.md")
    means = {}
    for row in rows.values():
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seconds", "n"):
                means.setdefault(k, []).append(float(v))
    results = {
        "benchmark": workflow,
        "scenes": rows,
        "mean": {k: float(np.mean(v)) for k, v in means.items()},
        "reused": reused,
        "notes": notes,
        "summary": md,
        "table": str(out / "results.md"),
    }
    atomic_write_text(json.dumps(results, indent=2), out / "results.json")
    ctx.hooks.evaluate(metrics={k: v for k, v in results["mean"].items()})
    return results


# ----------------------------------------------------------------------- segmentation benchmarks
def _seg_config(extra_reference: bool):
    """The Config dataclass shared by ``nvos`` and ``spinnerf``."""

    @dataclass
    class Config:
        data: str = field(default="", metadata={"help": "the dataset root in its published layout"})
        scenes: str = field(
            default="",
            metadata={
                "help": "root of trained 3DGS outputs: <scenes>/<scene>/point_cloud/iteration_*/point_cloud.ply + cameras.json"
            },
        )
        scenes_list: list = field(
            default_factory=list, metadata={"help": "the scenes to evaluate (empty: every scene of data=)"}
        )
        images: str = field(
            default="",
            metadata={
                "help": "root of the source images, ROOT/<scene>/images (empty: <scenes>/<scene>/images, then cfg_args' source_path)"
            },
        )
        backend: str = field(default="auto", metadata={"help": "scenes plugin (auto, torch, gsplat, ...)"})
        extractor: Any = field(
            default_factory=lambda: {"name": "dinov2", "variant": "vitg14_reg", "n_components": 40},
            metadata={"kind": "feature_extractors", "help": "2D feature extractor (thesis: DINOv2 ViT-g/14 reg, D=40)"},
        )
        refiner: Any = field(
            default_factory=lambda: {"name": "graph_diffusion"},
            metadata={"kind": "refiners", "help": "the refiner of method=diffusion (any refiners plugin)"},
        )
        method: str = field(
            default="diffusion",
            metadata={"help": "diffusion (uplift + graph diffusion), uplift, or sam (extractor=sam or sam2)"},
        )
        center: bool = field(default=True, metadata={"help": "subtract the mean 2D feature before uplifting"})
        search: bool = field(
            default=True,
            metadata={"help": "grid-search the refiner's bandwidths (and SAM's mask index) on the reference mask"},
        )
        tau: float = field(
            default=1.0 if extra_reference else 0.4,
            metadata={"help": "method=sam: reprojected prompt pixels above tau x their mean (NVOS 1.0, SPIn-NeRF 0.4)"},
        )
        if extra_reference:
            reference_extractor: Any = field(
                default=None,
                metadata={
                    "kind": "feature_extractors",
                    "help": "a sam or sam2 extractor predicting the reference mask from the scribbles (the thesis' NVOS protocol); none: the fallback rule",
                },
            )

    return Config


class _SegmentationBenchmark:
    """Shared by NVOS and SPIn-NeRF: resolve scenes, run one segmentation route per scene under the
    reference-view protocol, score every target view (IoU, pixel accuracy)."""

    name = ""
    title = ""

    def __init__(self, config):
        self.cfg = config

    # -- to specialise
    def read(self, scene: str, cameras: list[str]):  # -> SegmentationCase
        raise NotImplementedError

    def all_scenes(self) -> list[str]:
        raise NotImplementedError

    def data_files(self, scene: str) -> list[Path]:
        raise NotImplementedError

    # -- shared
    def _check_config(self) -> None:
        from .workflows import check_extractor

        cfg = self.cfg
        if not cfg.data:
            raise ConfigError(f"{self.name}: set data=DATASET_ROOT")
        if not cfg.scenes:
            raise ConfigError(f"{self.name}: set scenes=ROOT of the trained 3DGS outputs")
        if str(cfg.method) not in _METHODS:
            raise ConfigError(f"{self.name}: key 'method' must be one of {', '.join(_METHODS)}, got {cfg.method!r}")
        check_extractor(str(cfg.method), plain_node(cfg.extractor))
        ref = getattr(cfg, "reference_extractor", None)
        if ref is not None:
            try:
                check_extractor("sam", plain_node(ref))
            except ConfigError as exc:
                raise ConfigError(
                    f"{self.name}: key 'reference_extractor' must be a prompted extractor (sam, sam2): {exc}"
                ) from None

    def _resolve(self) -> list[tuple[BenchScene, Any]]:
        from fulcra_plugins.scenes import scene_inputs

        names = [str(s) for s in self.cfg.scenes_list] or self.all_scenes()
        out = []
        for name in names:
            folder = scene_folder(self.cfg.scenes, name)
            ply, cams_path = trained_scene(folder)
            images = image_folder(name, folder, str(self.cfg.images))
            cams, _ = scene_inputs(ply, cams_path, images)
            case = self.read(name, [c.name for c in cams])
            by_name = {c.name for c in cams}
            missing = [n for n in [case.reference, *case.targets] if n not in by_name]
            if missing:
                raise FormatError(
                    f"{cams_path}: scene {name!r} has no camera {missing[0]!r} (the {self.name} view; cameras: {', '.join(sorted(by_name)[:6])}...)"
                )
            out.append((BenchScene(name, ply, cams_path, images, self.data_files(name)), case))
        return out

    def check(self) -> None:
        """Before anything is written: the config, every scene's trained files, images and dataset files."""
        self._check_config()
        self._resolve()

    def run(self, ctx) -> dict:
        self._check_config()
        resolved = self._resolve()
        cases = {sc.name: case for sc, case in resolved}
        notes: list[str] = []
        if self.name == "nvos" and getattr(self.cfg, "reference_extractor", None) is None:
            from . import reference as R

            notes.append(
                say_line(
                    ctx,
                    self.name,
                    f"no reference_extractor: {R.FALLBACKS[str(self.cfg.method)]} (set reference_extractor=sam for the thesis' protocol)",
                )
            )

        def evaluate(sc: BenchScene, sdir: Path) -> dict:
            return self._evaluate(sc, cases[sc.name], sdir, ctx)

        return run_scenes(
            self.name,
            self.cfg,
            ctx,
            [sc for sc, _ in resolved],
            evaluate,
            lambda rows: _seg_table(rows),
            self.title,
            notes,
        )

    def _evaluate(self, sc: BenchScene, case, sdir: Path, ctx) -> dict:
        from PIL import Image

        import fulcra
        from fulcra_plugins.scenes import load_scene

        from .lifting import uplift_views
        from .segmentation import sam_reference_mask, segment_with_reference

        cfg, method = self.cfg, str(self.cfg.method)
        scene, cams, imgs = load_scene(sc.ply, sc.cameras, sc.images, backend=str(cfg.backend), device=ctx.device)
        by_name = {c.name: c for c in cams}
        ref = by_name[case.reference]
        prompt = _fit_mask(case.positive, ref)
        target, source = None, ""
        if case.kind == "mask":
            target, source = prompt, "first-frame mask"
        elif getattr(cfg, "reference_extractor", None) is not None:
            node = plain_node(cfg.reference_extractor)
            if ref.name not in imgs:
                raise FormatError(
                    f"{sc.images}: no image of the reference view {ref.name!r} for the SAM reference mask"
                )
            target = sam_reference_mask(fulcra.create("feature_extractors", node), imgs[ref.name], prompt, ref)
            source = f"sam mask ({node.get('name') if isinstance(node, dict) else node})"
            Image.fromarray(target.numpy().astype(np.uint8) * 255).save(sdir / "reference_mask.png")
        views = [c for c in cams if c.name in imgs]
        if not views:
            raise FormatError(f"{sc.images}: no image matches a camera of {sc.cameras}")
        node = plain_node(cfg.extractor)
        extractor = fulcra.create("feature_extractors", node)
        log = lambda m: say_line(ctx, self.name, f"{sc.name}: {m}")  # noqa: E731
        if method == "sam":
            seg, tuning = segment_with_reference(
                scene, ref, prompt, "scribble" if case.kind != "mask" else "mask", "sam",
                target=target, reference=source, search=cfg.search, cameras=views, images=imgs,
                extractor=extractor, tau=float(cfg.tau), log=log,
            )  # fmt: skip
        else:
            up = uplift_views(
                scene, views, imgs, extractor, out=sdir, ply=str(sc.ply), extractor_node=node,
                hooks=ctx.hooks, center=cfg.center, stage="features", is_main=ctx.is_main,
            )  # fmt: skip
            refiner = fulcra.create("refiners", plain_node(cfg.refiner)) if method == "diffusion" else None
            seg, tuning = segment_with_reference(
                scene, ref, prompt, case.kind, method, features=up.features, weights=up.weights,
                refiner=refiner, target=target, reference=source, search=cfg.search, log=log,
            )  # fmt: skip
        (sdir / "masks").mkdir(exist_ok=True)
        per_view = {}
        for name, gt in case.targets.items():
            if name == case.reference:  # the official mean skips the first frame (`if i > 0`)
                continue
            pred = predict_mask(scene, seg.scores, by_name[name], tuning, tuple(gt.shape))
            inter, union = int((pred & gt).sum()), int((pred | gt).sum())
            per_view[name] = {
                "iou": 1.0 if union == 0 else inter / union,
                "accuracy": float((pred == gt).float().mean()),
            }
            Image.fromarray(pred.numpy().astype(np.uint8) * 255).save(sdir / "masks" / f"{name}.png")
        if not per_view:
            raise FormatError(f"{self.name}: scene {sc.name!r} has no target view besides the reference")
        return {
            "iou": float(np.mean([v["iou"] for v in per_view.values()])),
            "accuracy": float(np.mean([v["accuracy"] for v in per_view.values()])),
            "n": len(per_view),
            "reference_view": case.reference,
            "method": method,
            "tuning": tuning.as_dict(),
            "views": per_view,
        }


def _seg_table(rows: dict) -> str:
    from .metrics import results_table

    table = {s: {"IoU": r["iou"], "Acc": r["accuracy"]} for s, r in rows.items()}
    return results_table(table, ["IoU", "Acc"])


class NvosWorkflow(_SegmentationBenchmark):
    """NVOS (Table 5.1, per scene Table C.2): scribbles on the reference view, one target view.

    ``fulcra run nvos data=llff_masks scenes=GS_ROOT images=llff_data [reference_extractor=sam_vit_h]
    out=OUT``. ``method=diffusion`` (default) over the uplifted features of ``extractor``; the
    thresholds and the refiner's bandwidths (the official grid) are chosen by IoU with the reference
    mask, SAM's mask from the scribbles (``reference_extractor=``; without it the fallback rule,
    said in one line and recorded in ``notes``). Reported: IoU and pixel accuracy on the target
    view's ground-truth mask.
    """

    name = "nvos"
    title = "NVOS segmentation (Table 5.1; per scene as Table C.2)"
    Config = _seg_config(extra_reference=True)

    def all_scenes(self) -> list[str]:
        root = Path(self.cfg.data).expanduser() / "masks"
        if not root.is_dir():
            raise FormatError(f"{root}: NVOS folder not found (data= must hold masks/, reference_image/, scribbles/)")
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    def read(self, scene: str, cameras: list[str]):
        from .protocols import read_nvos

        return read_nvos(self.cfg.data, [scene])[0]

    def data_files(self, scene: str) -> list[Path]:
        root = Path(self.cfg.data).expanduser()
        return [root / sub / scene for sub in ("masks", "reference_image", "scribbles")]


class SpinnerfWorkflow(_SegmentationBenchmark):
    """SPIn-NeRF (Tables 5.1-5.2, per scene Table C.3): the first frame's mask is the prompt and the
    reference mask; thresholds and bandwidths are chosen on it; IoU and pixel accuracy averaged over
    every other frame (the official mean skips the first).

    ``fulcra run spinnerf data=SPIn-NeRF_masks scenes=GS_ROOT images=SPIn-NeRF_data out=OUT``.
    """

    name = "spinnerf"
    title = "SPIn-NeRF segmentation (Table 5.1; per scene as Table C.3)"
    Config = _seg_config(extra_reference=False)

    def all_scenes(self) -> list[str]:
        root = Path(self.cfg.data).expanduser()
        if not root.is_dir():
            raise FormatError(f"{root}: SPIn-NeRF mask folder not found")
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    def read(self, scene: str, cameras: list[str]):
        from .protocols import read_spinnerf

        return read_spinnerf(self.cfg.data, [scene], cameras={scene: cameras})[0]

    def data_files(self, scene: str) -> list[Path]:
        return [Path(self.cfg.data).expanduser() / scene]
