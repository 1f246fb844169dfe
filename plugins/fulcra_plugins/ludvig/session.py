"""One ``segment`` run split at the prompt, so that ``fulcra run segment`` and ``fulcra view`` run the
same code.

Everything before the prompt (the scene, its cameras and images, the extractor, the uplifted features
and the refiner with its kNN graph) is built once by :class:`SegmentSession`; each prompt then costs
one segmentation under the reference-view protocol (:func:`.segmentation.segment_with_reference`),
one 3D binarisation and one render per view. ``fulcra run segment`` (:class:`.workflows.SegmentWorkflow`)
opens a session and segments one prompt; the viewer opens one and segments every click, keeping the
per-Gaussian scores so that a new threshold re-binarises them without recomputing anything upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf

from fulcra.errors import ConfigError, FormatError

__all__ = ["SegmentSession", "SegmentAnswer", "parse_threshold", "resolve_method"]


def resolve_method(cfg: Any) -> str:
    """The route a segment config asks for (``diffusion=false`` turns ``diffusion`` into ``uplift``), checked."""
    from .workflows import METHODS

    method = str(cfg.method)
    if method not in METHODS:
        raise ConfigError(f"segment: key 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    return "uplift" if method == "diffusion" and not cfg.diffusion else method


def parse_threshold(value: Any) -> str | float:
    """``auto``, ``otsu``, ``li`` or a number (the ``threshold`` key), checked."""
    th = str(value)
    if th in ("auto", "otsu", "li"):
        return th
    try:
        return float(th)
    except ValueError:
        raise ConfigError(f"segment: key 'threshold' must be auto, otsu, li or a number, got {value!r}") from None


@dataclass
class SegmentAnswer:
    """One prompt's segmentation: what :meth:`SegmentSession.segment` returns.

    Attributes:
        ref: the reference camera; ``prompt``: ``[H, W]`` bool on it; ``kind``: ``scribble`` or ``mask``.
        seg: the :class:`.segmentation.Segmentation3D` (per-Gaussian ``scores [N]``).
        tuning: what the reference-view protocol chose (:class:`.reference.Tuning`).
        source: where the reference mask came from (``""``: none, the fallback rule).
        negative: ``[H, W]`` bool negative scribbles on ``ref``, or None.
    """

    ref: Any
    prompt: torch.Tensor
    kind: str
    seg: Any
    tuning: Any
    source: str = ""
    negative: torch.Tensor | None = None

    @property
    def scores(self) -> torch.Tensor:
        return self.seg.scores


class SegmentSession:
    """The scene side of a ``segment`` config, built once, and its prompts segmented one by one.

    Args:
        cfg: a ``SegmentWorkflow.Config`` node (the same keys and defaults as ``fulcra run segment``).
        out: the run folder: ``features.safetensors`` (the uplift cache), ``feature_cache/``.
        device: where the scene lives.
        hooks: the run's hook relay (``step`` per view, ``message``), or None.
        is_main: whether this process writes files (rank 0).
        log: one line for the user.
    """

    def __init__(
        self,
        cfg: Any,
        out: str | Path,
        device: Any = "cpu",
        *,
        hooks: Any = None,
        is_main: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        from .workflows import check_extractor

        self.cfg, self.out, self.device = cfg, Path(out), device
        self.hooks, self.is_main = hooks, is_main
        self.log = log or (lambda m: None)
        self.method = resolve_method(cfg)
        self.masks_mode = str(cfg.masks)
        if self.masks_mode not in ("auto", "scores", "selection"):
            raise ConfigError(f"segment: key 'masks' must be auto, scores or selection, got {cfg.masks!r}")
        self.extractor_node = OmegaConf.to_container(cfg.extractor, resolve=True)
        if self.method != "geometry":  # before loading the scene: a wrong pairing fails at once
            check_extractor(self.method, self.extractor_node)
        self.threshold = parse_threshold(cfg.threshold)
        self.scene = None
        self.extractor = None
        self.refiner = None
        self.features = self.weights = None
        self.resumed = False

    # ------------------------------------------------------------------ the part built once
    def open(self) -> SegmentSession:
        """Load the scene, cameras and images; choose the views to uplift from."""
        from .lifting import open_scene

        self.scene, self.cams, self.imgs, self.ply = open_scene(self.cfg.scene, self.device, "segment")
        self.by_name = {c.name: c for c in self.cams}
        if note := self.imgs.size_note():
            self.log(note)
        cfg = self.cfg
        for v in cfg.views:
            if v not in self.by_name:
                raise ConfigError(f"segment: key 'views': unknown camera {v!r}")
        self.views = (
            [self.by_name[v] for v in cfg.views] if cfg.views else [c for c in self.cams if c.name in self.imgs]
        )
        if not self.views:
            raise FormatError(f"{self.imgs.folder or '(no image folder; set scene.images)'}: no image matches a camera")
        return self

    def prepare(self) -> SegmentSession:
        """Build the extractor and refiner and uplift the features (cached in ``out``); idempotent."""
        import fulcra

        from .lifting import uplift_views

        if self.scene is None:
            self.open()
        if self.method == "geometry" or (self.method != "sam" and self.features is not None):
            return self
        if self.extractor is None:
            self.extractor = fulcra.create("feature_extractors", self.extractor_node)
        if self.method == "sam":
            return self
        up = uplift_views(
            self.scene,
            self.views,
            self.imgs,
            self.extractor,
            out=self.out,
            ply=self.ply,
            extractor_node=self.extractor_node,
            hooks=self.hooks,
            center=self.cfg.center,
            stage="features",
            is_main=self.is_main,
        )
        self.features, self.weights, self.resumed = up.features, up.weights, up.resumed
        if self.method == "diffusion" and self.refiner is None:
            self.refiner = fulcra.create("refiners", OmegaConf.to_container(self.cfg.refiner, resolve=True))
        return self

    # ------------------------------------------------------------------ per prompt
    def prompt(self, pc: Any) -> tuple[Any, torch.Tensor, str]:
        """``(reference camera, prompt [H, W] bool, kind)`` of a ``prompt`` node (view, exactly one of
        scribble/mask/clicks, radius), checked as ``fulcra run segment`` checks it."""
        from .workflows import reference_prompt

        return reference_prompt(pc, self.by_name)

    def negative(self, pc: Any, ref: Any, kind: str) -> torch.Tensor | None:
        """The negative scribbles of a ``prompt`` node on ``ref`` (``prompt.negative``,
        ``prompt.negative_clicks``), checked as ``fulcra run segment`` checks them; None without."""
        from .workflows import negative_prompt

        return negative_prompt(pc, ref, kind)

    def reference_target(self, ref: Any, prompt: torch.Tensor, kind: str) -> tuple[torch.Tensor | None, str]:
        """The reference mask the protocol tunes on and where it came from: the prompt mask, the
        user's own (``prompt.reference``) or SAM's from the scribbles (``reference_extractor``);
        ``(None, "")`` without one (the fallback rule)."""
        import fulcra

        from .segmentation import sam_reference_mask
        from .workflows import load_prompt_png

        cfg = self.cfg
        if kind == "mask":
            return prompt, "prompt mask"
        if cfg.prompt.reference:
            return load_prompt_png(cfg.prompt.reference, ref), f"user mask {cfg.prompt.reference}"
        if cfg.reference_extractor is not None:
            node = cfg.reference_extractor
            node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            if ref.name not in self.imgs:
                raise FormatError(f"segment: reference_extractor needs the image of the reference view {ref.name!r}")
            sam_ref = fulcra.create("feature_extractors", node)
            name = node.get("name") if isinstance(node, dict) else node
            return sam_reference_mask(sam_ref, self.imgs[ref.name], prompt, ref), f"sam mask ({name})"
        return None, ""

    def segment(
        self,
        ref: Any,
        prompt: torch.Tensor,
        kind: str,
        target: torch.Tensor | None = None,
        source: str = "",
        negative: torch.Tensor | None = None,
    ) -> SegmentAnswer:
        """Segment one prompt with the configured route under the reference-view protocol
        (``negative``: ``[H, W]`` bool negative scribbles, for the uplift and diffusion routes)."""
        from . import reference as R
        from .segmentation import segment_with_reference

        self.prepare()
        cfg, method, scene = self.cfg, self.method, self.scene
        if target is None:
            self.log(R.FALLBACKS[method])
        if negative is not None and method in ("sam", "geometry"):
            raise ConfigError(
                f"segment: negative prompts go with method=uplift or method=diffusion, not method={method} (drop prompt.negative / prompt.negative_clicks)"
            )
        if method == "sam":
            if getattr(self.extractor, "dim", 1) not in (1, 3):
                raise ConfigError(
                    f"segment: method=sam uplifts SAM's masks; set extractor.mask to single, best, 0, 1, 2 or all (got {getattr(self.extractor, 'mask', '?')!r})"
                )
            views = list(self.views)
            if ref.name in self.imgs and ref.name not in {c.name for c in views}:
                views = [ref, *views]  # the reference view's own prompt is SAM's best cue there
            hooks = self.hooks
            seg, tuning = segment_with_reference(
                scene,
                ref,
                prompt,
                kind,
                "sam",
                target=target,
                reference=source,
                search=cfg.search,
                cameras=views,
                images=self.imgs,
                extractor=self.extractor,
                tau=cfg.tau,
                rule=str(cfg.rule),
                progress=(
                    (lambda i, n: hooks.step(step=i, metrics={"view": float(i - 1)}, total=n, stage="sam"))
                    if hooks is not None
                    else None
                ),
                log=self.log,
            )
        elif method == "geometry":
            from .baselines import segment_geometry

            # Table 5.2 uplifts the reference mask; without one, the prompt itself
            seg, tuning = segment_geometry(
                scene, ref, prompt if target is None else target, target=target, reference=source, log=self.log
            )
        else:
            seg, tuning = segment_with_reference(
                scene,
                ref,
                prompt,
                kind,
                method,
                features=self.features,
                weights=self.weights,
                refiner=self.refiner,
                target=target,
                reference=source,
                search=cfg.search,
                log=self.log,
                negative=negative,
            )
        return SegmentAnswer(ref, prompt, kind, seg, tuning, source, negative)

    def mask3d(self, answer: SegmentAnswer, threshold: str | float | None = None) -> torch.Tensor:
        """``[N]`` bool: the 3D selection, by the protocol (``auto``) or ``otsu``/``li``/a number on
        the raw scores (``binarise_3d``); ``threshold=None``: the config's ``threshold`` key."""
        from . import reference as R
        from .segmentation import binarise_3d

        th = self.threshold if threshold is None else parse_threshold(threshold)
        return R.mask_3d(answer.scores, answer.tuning) if th == "auto" else binarise_3d(answer.scores, th)

    def mode(self, answer: SegmentAnswer, threshold: str | float | None = None) -> str:
        """How the 2D masks are made: ``scores`` (rendered, normalised, ``> threshold_2d``) or
        ``selection`` (the rendered 3D mask): the ``masks`` key, ``auto`` choosing the protocol's mode
        with ``threshold=auto`` and the rendered selection with any other threshold."""
        th = self.threshold if threshold is None else parse_threshold(threshold)
        if self.masks_mode != "auto":
            return self.masks_mode
        return answer.tuning.mode_2d if th == "auto" else "selection"

    def view_mask(self, answer: SegmentAnswer, mask3d: torch.Tensor, camera: Any, mode: str) -> torch.Tensor:
        """``[H, W]`` bool: the 2D mask on ``camera`` as ``OUT/masks/<camera>.png`` holds it."""
        from . import reference as R
        from .segmentation import render_mask

        if mode == "scores":
            return R.mask_2d(self.scene, answer.scores, camera, answer.tuning.threshold_2d)
        return render_mask(self.scene, mask3d, camera, self.cfg.render_threshold)


def save_mask_png(mask: torch.Tensor, path: Path) -> None:
    """A boolean ``[H, W]`` as a 0/255 PNG, written to a temporary name then renamed."""
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).save(tmp)
    tmp.replace(path)


__all__.append("save_mask_png")
