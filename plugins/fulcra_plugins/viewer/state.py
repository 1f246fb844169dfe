"""What the viewer holds between requests: one :class:`~fulcra_plugins.ludvig.session.SegmentSession`,
the current prompt and its segmentation, and the renders the page shows.

Every selection goes through the session, so a click in the browser runs exactly what
``fulcra run segment prompt.view=V prompt.clicks=[[x, y], ...]`` runs with the same keys. A
scribble is sent as the clicks along its stroke (one per pixel step), so it is a ``prompt.clicks``
prompt too. The per-Gaussian scores are kept: a new threshold re-binarises them and re-renders the
masks, nothing upstream is recomputed.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fulcra.camera import Camera
from fulcra.errors import ConfigError, FulcraError

__all__ = ["ViewerState", "HIGHLIGHT", "orbit_camera"]

#: the highlight colour of the selection (RGB in [0, 1]): magenta, which no part of the synthetic scene has
HIGHLIGHT = (1.0, 0.0, 1.0)
_BACKGROUND = (0.12, 0.12, 0.14)


def _look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[4, 4]`` (OpenCV axes: x right, y down, z forward) of a camera at ``eye``."""
    f = target - eye
    f = f / f.norm()
    r = torch.linalg.cross(f, up)
    if float(r.norm()) < 1e-8:  # looking along up: any right vector
        r = torch.linalg.cross(f, torch.tensor([1.0, 0.0, 0.0], dtype=f.dtype))
    r = r / r.norm()
    d = torch.linalg.cross(f, r)
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = torch.stack([r, d, f])
    V[:3, 3] = -V[:3, :3] @ eye
    return V.float()


def orbit_camera(
    center: torch.Tensor, up: torch.Tensor, azimuth: float, elevation: float, radius: float, width: int, height: int
) -> Camera:
    """A pinhole camera (55 degree horizontal field of view) on a sphere around ``center``, looking at it.

    Args:
        center, up: ``[3]`` the orbit's centre and the world's up direction.
        azimuth, elevation: radians; ``radius``: distance to ``center``.
    """
    c, u = center.double(), up.double() / up.double().norm()
    e1 = torch.linalg.cross(u, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    if float(e1.norm()) < 1e-6:
        e1 = torch.linalg.cross(u, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(u, e1)
    el = max(-1.45, min(1.45, elevation))
    d = math.cos(el) * (math.cos(azimuth) * e1 + math.sin(azimuth) * e2) + math.sin(el) * u
    f = 0.5 * width / math.tan(math.radians(55.0) / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera(_look_at(c + radius * d, c, u), K, width, height, "orbit")


def _png(rgb: np.ndarray) -> bytes:
    """``[H, W, 3]`` float in [0, 1] or uint8 -> PNG bytes."""
    from PIL import Image

    arr = rgb if rgb.dtype == np.uint8 else (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class ViewerState:
    """The viewer's model: a prepared session, the chosen view, the prompt and the selection.

    Args:
        session: an opened and prepared :class:`~fulcra_plugins.ludvig.session.SegmentSession`.
        out: where exports go (``mask3d.npy``, ``masks/``, ``selected.ply``, ``removed.ply``,
            ``overlay.png``, ``results.json``); also the session's feature cache.
        log: one line for the user.
    """

    def __init__(self, session: Any, out: str | Path, log=print):
        self.session, self.out, self.log = session, Path(out), log
        self.lock = threading.RLock()
        self.cams = list(session.cams)
        self.by_name = {c.name: c for c in self.cams}
        self.view = session.cfg.prompt.view if session.cfg.prompt.view in self.by_name else self.cams[0].name
        self.clicks: list[list[int]] = []
        self.negative: list[list[int]] = []  # negative clicks on the same view
        self.answer = None  # the clicks' SegmentAnswer, or None
        self.text: str | None = None  # or the text query whose scores are kept
        self.text_scores: torch.Tensor | None = None
        self._text_t = 0.0
        self._text_up = None
        self.mask3d: torch.Tensor | None = None
        self.mode = "selection"
        self.threshold: float | None = None  # None: the config's threshold (auto: the protocol's)
        self.masks: dict[str, torch.Tensor] = {}
        self.seconds: float | None = None
        self.message = ""
        scene = session.scene
        pos = torch.as_tensor(scene.positions).float().cpu()
        centres = torch.stack([c.center.float() for c in self.cams])
        # the orbit turns about the point the cameras look at most: the median of the Gaussians
        self.center = pos.median(0).values.double()
        ups = torch.stack([-torch.as_tensor(c.viewmat)[1, :3].float() for c in self.cams])  # camera -y in world
        up = ups.mean(0)
        self.up = (up / up.norm()).double() if float(up.norm()) > 1e-6 else torch.tensor([0.0, 0.0, 1.0]).double()
        self.radius = float((centres.double() - self.center).norm(dim=1).median())
        w0, h0 = self.cams[0].width, self.cams[0].height
        w = max(320, min(480, 2 * w0))  # small enough to render in a fraction of a second on a CPU
        self.orbit_size = (w, int(round(w * h0 / w0)))

    # ------------------------------------------------------------------ selection
    def prompt_node(self, view: str, clicks: list, negative: list | None = None) -> Any:
        """The ``prompt`` node of this selection: the config's own with ``view``, ``clicks`` and
        ``negative_clicks`` set."""
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(self.session.cfg.prompt, resolve=True)
        node.update(
            view=view,
            clicks=[list(c) for c in clicks],
            negative_clicks=[list(c) for c in negative or []],
            scribble="",
            mask="",
            negative="",
        )
        return OmegaConf.create(node)

    @staticmethod
    def _pixels(clicks: list, cam: Camera, view: str, what: str = "click") -> list[list[int]]:
        pts: list[list[int]] = []
        for c in clicks:
            if not (isinstance(c, (list, tuple)) and len(c) == 2 and all(isinstance(v, (int, float)) for v in c)):
                raise ConfigError(f"select: a {what} must be [x, y], got {c!r}")
            x, y = int(math.floor(c[0])), int(math.floor(c[1]))
            if not (0 <= x < cam.width and 0 <= y < cam.height):
                raise ConfigError(f"select: {what} [{x}, {y}] is outside the {cam.width}x{cam.height} view {view!r}")
            if [x, y] not in pts:
                pts.append([x, y])
        return pts

    def select(self, view: str, clicks: list, negative: list | None = None) -> dict:
        """Segment the clicks ``[[x, y], ...]`` (and ``negative`` clicks) on ``view``; one-line
        ConfigError for a bad click."""
        if view not in self.by_name:
            raise ConfigError(f"view: unknown camera {view!r}")
        if not clicks:
            raise ConfigError("select: no click (left-click or drag on the view image)")
        cam = self.by_name[view]
        pts = self._pixels(clicks, cam, view)
        neg = self._pixels(list(negative or []), cam, view, "negative click")
        with self.lock:
            t0 = time.perf_counter()
            s = self.session
            node = self.prompt_node(view, pts, neg)
            ref, prompt, kind = s.prompt(node)
            target, source = s.reference_target(ref, prompt, kind)
            answer = s.segment(ref, prompt, kind, target, source, negative=s.negative(node, ref, kind))
            self.view, self.clicks, self.negative, self.answer, self.threshold = view, pts, neg, answer, None
            self.text = self.text_scores = None
            self._binarise()
            self.seconds = round(time.perf_counter() - t0, 3)
            n = int(self.mask3d.sum())
            self.message = f"selected {n} of {s.scene.num_primitives} Gaussians in {self.seconds:.2f} s"
            if n == 0:
                self.message = "the clicks select no Gaussian: click on an object, or lower the threshold"
            self.log(self.message)
        return self.state()

    def select_text(self, text: str) -> dict:
        """Open-vocabulary selection: the 3D relevancy of ``text`` from the text-capable extractor,
        refined by the session's refiner over its features and thresholded, as ``fulcra run remove
        extractor=E features=E prompt.text=TEXT`` does (:func:`fulcra_plugins.ludvig.removal.text_scores`)."""
        from fulcra.interfaces import TextExtractor
        from fulcra_plugins.ludvig.lifting import uplift_views
        from fulcra_plugins.ludvig.removal import text_scores

        s = self.session
        text = str(text or "").strip()
        if not text:
            raise ConfigError("text: type what to find (e.g. 'teddy bear')")
        if not isinstance(s.extractor, TextExtractor):
            raise ConfigError(
                f"text: extractor {type(s.extractor).__name__} cannot embed text (TextExtractor); "
                "open the viewer with extractor=clip"
            )
        if s.method not in ("diffusion", "uplift"):
            raise ConfigError(f"text: method={s.method} has no text route; use method=diffusion or uplift")
        with self.lock:
            t0 = time.perf_counter()
            if self._text_up is None:  # relevancies compare directions in the joint space: uncentred, as remove
                self._text_up = uplift_views(
                    s.scene,
                    s.views,
                    s.imgs,
                    s.extractor,
                    out=self.out / "text_features",
                    ply=s.ply,
                    extractor_node=s.extractor_node,
                    hooks=s.hooks,
                    center=False,
                    stage="text_features",
                    is_main=s.is_main,
                )
            up = self._text_up
            diffuse = s.method == "diffusion"
            try:
                _, scores, _ = text_scores(
                    s.scene,
                    up.features,
                    up.weights,
                    s.extractor,
                    text,
                    refiner=s.refiner if diffuse else None,
                    features=s.features,
                    weights=s.weights,
                )
            except ValueError as exc:  # the extractor's own word for a query it cannot embed
                raise ConfigError(f"text: {str(exc).splitlines()[0]}") from None
            before = (self.text, self.text_scores, self.answer, self.clicks, self.threshold)
            self.text, self.text_scores, self.answer, self.clicks, self.threshold = text, scores, None, [], None
            self.negative = []
            try:
                self._binarise()
            except Exception:  # e.g. the query selects nothing: the previous selection stays
                self.text, self.text_scores, self.answer, self.clicks, self.threshold = before
                raise
            self.seconds = round(time.perf_counter() - t0, 3)
            self.message = f"{text!r}: {int(self.mask3d.sum())} Gaussians in {self.seconds:.2f} s"
            self.log(self.message)
        return self.state()

    def _scores(self) -> torch.Tensor | None:
        return self.answer.scores if self.answer is not None else self.text_scores

    def set_threshold(self, value: float | None) -> dict:
        """Re-binarise the kept scores at ``value`` (raw scores, as ``threshold=VALUE``), or back to the
        config's threshold (``None``); nothing upstream is recomputed."""
        with self.lock:
            if self._scores() is None:
                raise ConfigError("threshold: select something first")
            if value is not None and not isinstance(value, (int, float)):
                raise ConfigError(f"threshold: expected a number or null, got {value!r}")
            self.threshold = None if value is None else float(value)
            self._binarise()
            self.message = f"threshold {self._threshold_label()}: {int(self.mask3d.sum())} Gaussians"
        return self.state()

    def clear(self) -> dict:
        with self.lock:
            self.clicks, self.answer, self.mask3d, self.masks, self.threshold = [], None, None, {}, None
            self.negative = []
            self.text = self.text_scores = None
            self.message = "cleared"
        return self.state()

    def _binarise(self) -> None:
        s, a = self.session, self.answer
        if a is None:  # a text query: remove's rule, or a number on the raw scores
            from fulcra_plugins.ludvig.removal import removal_rule, select_removal

            if self.threshold is None:
                rule = removal_rule("auto", s.method == "diffusion")
                self.mask3d, self._text_t = select_removal(self.text_scores, rule, self.text or "")
            else:
                self.mask3d = self.text_scores.float() > self.threshold
            self.mode = "selection"
        else:
            self.mask3d = s.mask3d(a, self.threshold)
            self.mode = s.mode(a, self.threshold)
        self.masks = {c.name: s.view_mask(a, self.mask3d, c, self.mode).cpu() for c in self.cams}

    def _threshold_label(self) -> str:
        return str(self.session.threshold) if self.threshold is None else f"{self.threshold:.4g}"

    def threshold_range(self) -> dict | None:
        """The slider: raw scores from min to max, at the value the current mask corresponds to."""
        if self._scores() is None:
            return None
        sc = self._scores().float()
        lo, hi = float(sc.min()), float(sc.max())
        if self.threshold is not None:
            value = self.threshold
        elif self.answer is None:  # remove's rule: a fraction of the maximum
            value = self._text_t * hi
        elif self.session.threshold == "auto":  # the protocol thresholds min-max normalised scores
            value = lo + float(self.answer.tuning.threshold_3d) * (hi - lo)
        elif isinstance(self.session.threshold, float):
            value = self.session.threshold
        else:
            sel = sc[self.mask3d.to(sc.device)]
            value = float(sel.min()) if sel.numel() else hi
        return {"min": lo, "max": hi, "value": value, "auto": self.threshold is None, "label": self._threshold_label()}

    # ------------------------------------------------------------------ what the page shows
    def state(self) -> dict:
        from fulcra.interfaces import TextExtractor

        s = self.session
        return {
            "views": [{"name": c.name, "width": c.width, "height": c.height} for c in self.cams],
            "view": self.view,
            "clicks": self.clicks,
            "negative": self.negative,
            "selected": None if self.mask3d is None else int(self.mask3d.sum()),
            "num_gaussians": s.scene.num_primitives,
            "method": s.method,
            "threshold": self.threshold_range(),
            "masks_from": self.mode if self._scores() is not None else None,
            "query": self.text,
            "seconds": self.seconds,
            "message": self.message,
            "text": isinstance(s.extractor, TextExtractor),
            "out": str(self.out),
            "orbit": self.orbit_of(self.view),
            "highlight": [int(255 * v) for v in HIGHLIGHT],
        }

    def orbit_of(self, view: str) -> dict:
        """The orbit angles that look from the direction of camera ``view``, at the cameras' distance."""
        if view not in self.by_name:
            raise ConfigError(f"view: unknown camera {view!r}")
        d = self.by_name[view].center.double() - self.center
        d = d / d.norm()
        u = self.up
        e1 = torch.linalg.cross(u, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        if float(e1.norm()) < 1e-6:
            e1 = torch.linalg.cross(u, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        e1 = e1 / e1.norm()
        e2 = torch.linalg.cross(u, e1)
        return {
            "azimuth": math.atan2(float(d @ e2), float(d @ e1)),
            "elevation": math.asin(max(-1.0, min(1.0, float(d @ u)))),
            "radius": self.radius,
        }

    def view_png(self, name: str, overlay: bool = True) -> bytes:
        """The training image of camera ``name`` (its render when there is no image), the mask tinted
        with the highlight colour and the clicks drawn, when ``overlay``."""
        if name not in self.by_name:
            raise ConfigError(f"view: unknown camera {name!r}")
        cam = self.by_name[name]
        with self.lock:
            imgs = self.session.imgs
            if name in imgs and tuple(imgs[name].shape[-2:]) == (cam.height, cam.width):
                img = torch.as_tensor(imgs[name]).float().permute(1, 2, 0).cpu().numpy()
            else:
                img = self._render_rgb(cam)
            img = img.copy()
            if overlay and name in self.masks:
                m = self.masks[name].numpy().astype(bool)
                img[m] = 0.35 * img[m] + 0.65 * np.array(HIGHLIGHT)
            if overlay and self.answer is not None and name == self.answer.ref.name:
                img[self.answer.prompt.cpu().numpy().astype(bool)] = (0.1, 1.0, 0.1)  # the prompt discs
                if self.answer.negative is not None:
                    img[self.answer.negative.cpu().numpy().astype(bool)] = (1.0, 0.15, 0.1)  # negative discs
        return _png(img)

    def _render_rgb(self, cam: Camera) -> np.ndarray:
        from fulcra.interfaces import RGBScene

        scene = self.session.scene
        with torch.no_grad():
            if isinstance(scene, RGBScene):
                return scene.render_rgb(cam).float().clamp(0, 1).cpu().numpy()
            ones = torch.ones(scene.num_primitives, 1, device=getattr(scene, "device", "cpu"))
            return scene.render(ones, cam).float().clamp(0, 1).expand(-1, -1, 3).cpu().numpy() * 0.7

    def orbit(self, azimuth: float, elevation: float, radius: float) -> dict:
        """The scene from an orbit camera, the selection in the highlight colour, and where the training
        cameras lie in that image (for the page to draw and pick them)."""
        import base64

        w, h = self.orbit_size
        cam = orbit_camera(self.center, self.up, azimuth, elevation, max(1e-3, radius), w, h)
        with self.lock:
            scene = self.session.scene
            dev = getattr(scene, "device", "cpu")
            rgb = torch.from_numpy(self._render_rgb(cam))
            sel = (
                self.mask3d.float().to(dev)
                if self.mask3d is not None
                else torch.zeros(scene.num_primitives, device=dev)
            )
            with torch.no_grad():
                extra = scene.render(torch.stack([torch.ones_like(sel), sel], 1), cam).float().cpu()
            alpha, a = extra[..., 0:1].clamp(0, 1), extra[..., 1:2].clamp(0, 1)
            img = rgb * (1 - a) + torch.tensor(HIGHLIGHT) * a + (1 - alpha) * torch.tensor(_BACKGROUND)
        V, K = cam.viewmat.double(), cam.K.double()
        marks = []
        for c in self.cams:
            p = V[:3, :3] @ c.center.double() + V[:3, 3]
            fwd = torch.as_tensor(c.viewmat).double()[2, :3]  # the camera's viewing direction in world
            q = V[:3, :3] @ (c.center.double() + 0.15 * self.radius * fwd) + V[:3, 3]
            if float(p[2]) < 0.01 or float(q[2]) < 0.01:
                continue
            px, qx = K @ p, K @ q
            marks.append(
                {
                    "name": c.name,
                    "x": float(px[0] / px[2]),
                    "y": float(px[1] / px[2]),
                    "dx": float(qx[0] / qx[2]),
                    "dy": float(qx[1] / qx[2]),
                }
            )
        data = base64.b64encode(_png(img.numpy())).decode()
        return {"image": f"data:image/png;base64,{data}", "width": w, "height": h, "cameras": marks}

    # ------------------------------------------------------------------ export
    def export(self) -> dict:
        """Write what ``fulcra run segment`` writes for this prompt into ``out`` (each file written to a
        temporary folder in ``out`` first, then moved into place; ``results.json`` last), plus the
        selected object alone as ``selected.ply``."""
        from fulcra.engine import atomic_write_text
        from fulcra.interfaces import EditableScene
        from fulcra_plugins.ludvig.editing import save_extracted, save_removed
        from fulcra_plugins.ludvig.session import save_mask_png
        from fulcra_plugins.ludvig.workflows import save_overlay

        with self.lock:
            if self._scores() is None or self.mask3d is None:
                raise ConfigError("export: nothing is selected yet (click on an object in a view)")
            if int(self.mask3d.sum()) == 0:
                raise ConfigError("export: the selection is empty (lower the threshold or click again)")
            s, a, out = self.session, self.answer, self.out
            out.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
            try:
                with open(tmp / "mask3d.npy", "wb") as fh:
                    np.save(fh, self.mask3d.cpu().numpy())
                (tmp / "masks").mkdir()
                for c in self.cams:
                    save_mask_png(self.masks[c.name], tmp / "masks" / f"{c.name}.png")
                written = ["mask3d.npy", "masks"]
                ref = a.ref if a is not None else self.by_name[self.view]
                if ref.name in s.imgs:
                    prompt = a.prompt if a is not None else None
                    save_overlay(s.imgs[ref.name], self.masks[ref.name], tmp / "overlay.png", prompt)
                    written.append("overlay.png")
                notes = []
                if isinstance(s.scene, EditableScene):
                    save_removed(s.scene, self.mask3d, tmp / "removed.ply")
                    save_extracted(s.scene, self.mask3d, tmp / "selected.ply")
                    written += ["removed.ply", "selected.ply"]
                else:
                    notes.append(
                        f"removed.ply and selected.ply not written: scenes plugin {type(s.scene).__name__} "
                        "has no subset() and save_ply() (EditableScene)"
                    )
                results = {
                    "num_gaussians": s.scene.num_primitives,
                    "selected": int(self.mask3d.sum()),
                    "method": s.method,
                    "masks_from": self.mode,
                    "command": self.command_line(),
                    "files": written,
                }
                if a is not None:
                    th = s.threshold if self.threshold is None else self.threshold
                    results.update(
                        prompt=a.kind,
                        reference_view=ref.name,
                        clicks=self.clicks,
                        negative_clicks=self.negative,
                        threshold=th if th != "auto" else a.tuning.threshold_3d,
                        tuning=a.tuning.as_dict(),
                    )
                else:
                    th = self._text_t * float(self.text_scores.max()) if self.threshold is None else self.threshold
                    results.update(prompt="text", text=self.text, threshold=th)
                if notes:
                    results["notes"] = notes
                for name in written:  # into place one by one; a folder replaces the old one
                    dst = out / name
                    if dst.is_dir():
                        old = out / f".{name}.old"
                        shutil.rmtree(old, ignore_errors=True)
                        dst.rename(old)
                        os.replace(tmp / name, dst)
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        os.replace(tmp / name, dst)
                atomic_write_text(json.dumps(results, indent=2), out / "results.json")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.message = f"exported {', '.join(written)} and results.json to {out}"
            self.log(self.message)
            return {"files": [*written, "results.json"], "out": str(out), "message": self.message}

    def command_line(self) -> str:
        """The ``fulcra run segment`` (or ``remove``, for a text query) call that gives the same ``mask3d.npy``."""
        if self.answer is None and self.text is not None:
            th = "" if self.threshold is None else " (a threshold moved by the slider: scores > value)"
            return f"fulcra run remove <the viewer's scene keys> extractor=E features=E prompt.text={self.text!r}{th}"
        pts = ",".join(f"[{x},{y}]" for x, y in self.clicks)
        th = "" if self.threshold is None else f" threshold={self.threshold:.9g}"
        neg = ",".join(f"[{x},{y}]" for x, y in self.negative)
        neg = f" 'prompt.negative_clicks=[{neg}]'" if self.negative else ""
        return f"fulcra run segment <the viewer's scene keys> prompt.view={self.view} 'prompt.clicks=[{pts}]'{neg}{th}"


def one_line(exc: BaseException) -> str:
    """The one line a request's error becomes."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if isinstance(exc, FulcraError) else f"{type(exc).__name__}: {text}"
