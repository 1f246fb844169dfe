"""Conformance checks for plugins, reusable by third-party plugin authors.

Each ``check_<kind>`` runs one instance through the contract of its kind on tiny inputs and raises
``AssertionError`` with a precise message on the first violation. :func:`check_plugin` dispatches
by kind; :func:`fake_distribution` installs a throwaway distribution (dist-info + modules) on
``sys.path`` so entry-point discovery can be tested without pip.

    from fulcra.testing import check_plugin
    def test_my_op():
        check_plugin("augmentations", "my_op")
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .camera import Camera

__all__ = [
    "tiny_images",
    "tiny_camera",
    "check_plugin",
    "check_feature_extractor",
    "check_augmentation_op",
    "check_scene",
    "check_editable_scene",
    "check_alpha_scene",
    "check_adjoint_scene",
    "check_weighted_adjoint_scene",
    "check_rgb_scene",
    "check_refiner",
    "check_fittable_extractor",
    "check_caching_extractor",
    "check_task",
    "check_generator",
    "check_dataset",
    "check_student",
    "check_teacher",
    "check_policy_optimizer",
    "check_backbone",
    "check_backbone_weights_round_trip",
    "fake_distribution",
    "CONFORMANCE",
]


def tiny_images(
    b: int = 2,
    h: int = 16,
    w: int = 16,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``[b, 3, h, w]`` random images: float in [0, 1] or uint8 in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8).to(device)
    return x.to(dtype).to(device)


def tiny_camera(width: int = 16, height: int = 12, distance: float = 3.0, name: str = "cam") -> Camera:
    """A camera on the -z axis looking at the origin (OpenCV axes)."""
    viewmat = torch.eye(4)
    viewmat[2, 3] = distance
    f = 1.2 * max(width, height)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera(viewmat, K, width, height, name)


def check_feature_extractor(ext: Any, size: int = 28) -> None:
    """Shape, dtype, finiteness, ``dim``, determinism and batch independence on tiny images.

    Extractors with ``needs_prompts = True`` (SAM-like) get a few positive pixels per image as
    ``prompts=[P, 2]`` (x, y), as the FeatureExtractor interface describes."""
    images = tiny_images(2, size, size)
    kw: dict = {}
    if getattr(ext, "needs_prompts", False):
        c = size // 2
        pts = torch.tensor([[c, c], [c + 1, c], [c, c + 1], [c - 1, c - 1]])
        kw = {"prompts": [pts, pts]}
    out = ext(images, **kw)
    assert isinstance(out, torch.Tensor), f"{type(ext).__name__}: must return a tensor, got {type(out)}"
    assert out.ndim == 4 and out.shape[0] == 2, f"{type(ext).__name__}: expected [B,D,h,w], got {list(out.shape)}"
    assert out.dtype == torch.float32, f"{type(ext).__name__}: expected float32, got {out.dtype}"
    assert torch.isfinite(out).all(), f"{type(ext).__name__}: non-finite features"
    dim = getattr(ext, "dim", None)
    if dim is not None:
        assert out.shape[1] == dim, f"{type(ext).__name__}: dim={dim} but output has {out.shape[1]} channels"
    again = ext(images, **kw)
    assert torch.allclose(out, again, atol=1e-5), f"{type(ext).__name__}: not deterministic"
    one = ext(images[:1], **{k: v[:1] for k, v in kw.items()})
    assert torch.allclose(out[:1], one, atol=1e-4), f"{type(ext).__name__}: result depends on the batch"
    from .interfaces import CachingExtractor, FittableExtractor

    if isinstance(ext, FittableExtractor):
        check_fittable_extractor(ext, size)
    if isinstance(ext, CachingExtractor):
        check_caching_extractor(ext)


def check_augmentation_op(op: Any) -> None:
    name = type(op).__name__
    lo, hi = op.value_range  # may decrease (Posterize: magnitude 0 = 8 bits = identity)
    for dtype in (torch.uint8, torch.float32):
        x = tiny_images(3, 12, 12, dtype=dtype)
        for mag in (0.0, 0.5, 1.0):
            g = torch.Generator().manual_seed(1)
            y = op(x, mag, generator=g)
            assert y.shape == x.shape, f"{name}: shape {list(x.shape)} -> {list(y.shape)}"
            assert y.dtype == x.dtype, f"{name}: dtype {x.dtype} -> {y.dtype}"
            y2 = op(x, mag, generator=torch.Generator().manual_seed(1))
            assert torch.equal(y, y2), f"{name}: same generator seed gave different results"
            if dtype == torch.float32:
                assert float(y.min()) >= -1e-5 and float(y.max()) <= 1 + 1e-5, f"{name}: float output leaves [0,1]"
        per_image = op(x, torch.tensor([0.0, 0.5, 1.0]), generator=torch.Generator().manual_seed(2))
        assert per_image.shape == x.shape, f"{name}: per-image magnitudes changed the shape"
        z = op.apply(x, torch.full((3,), float(lo)))
        assert z.shape == x.shape and z.dtype == x.dtype, f"{name}: apply() changed shape or dtype"


def check_scene(scene: Any, dim: int = 3, camera: Camera | None = None) -> None:
    """The SceneRepresentation contract: ``num_primitives``, ``positions [N, 3]``, ``render`` of shape
    ``[H, W, D]``, linear and differentiable in the features; then every optional protocol the scene
    claims (:func:`check_editable_scene`, :func:`check_alpha_scene`, :func:`check_adjoint_scene`,
    :func:`check_weighted_adjoint_scene`, :func:`check_rgb_scene`)."""
    from .interfaces import AdjointScene, AlphaScene, EditableScene, RGBScene, WeightedAdjointScene

    name = type(scene).__name__
    n = scene.num_primitives
    pos = getattr(scene, "positions", None)
    assert isinstance(pos, torch.Tensor) and tuple(pos.shape) == (n, 3), (
        f"{name}: positions must be a [N={n}, 3] tensor, got {None if pos is None else list(getattr(pos, 'shape', []))}"
    )
    cam = camera or _scene_camera(scene)
    g = torch.Generator().manual_seed(0)
    dev = getattr(scene, "device", torch.device("cpu"))
    f1 = torch.rand(n, dim, generator=g).to(dev)
    f2 = torch.rand(n, dim, generator=g).to(dev)
    r1, r2 = scene.render(f1, cam), scene.render(f2, cam)
    assert r1.shape == (cam.height, cam.width, dim), f"{name}: render gave {list(r1.shape)}"
    r12 = scene.render(2 * f1 - 0.5 * f2, cam)
    assert torch.allclose(r12, 2 * r1 - 0.5 * r2, atol=1e-4), f"{name}: render is not linear in the features"
    f = f1.clone().requires_grad_(True)
    scene.render(f, cam).sum().backward()
    assert f.grad is not None and f.grad.shape == f.shape, f"{name}: render is not differentiable in the features"
    if isinstance(scene, EditableScene):
        check_editable_scene(scene, cam)
    if isinstance(scene, AlphaScene):
        check_alpha_scene(scene, cam)
    if isinstance(scene, AdjointScene):
        check_adjoint_scene(scene, cam)
    if isinstance(scene, WeightedAdjointScene):
        check_weighted_adjoint_scene(scene, cam)
    if isinstance(scene, RGBScene):
        check_rgb_scene(scene, cam)


def _scene_camera(scene: Any) -> Camera:
    cams = getattr(scene, "cameras", None)
    return cams[0] if cams else tiny_camera()


def check_editable_scene(scene: Any, camera: Camera | None = None, tmp_dir: str | Path | None = None) -> None:
    """EditableScene: ``subset`` keeps the chosen primitives (count, positions, rendering of a kept
    feature) and ``save_ply`` writes a file."""
    import tempfile

    name = type(scene).__name__
    cam = camera or _scene_camera(scene)
    n = scene.num_primitives
    keep = torch.zeros(n, dtype=torch.bool)
    keep[: max(1, n // 2)] = True
    sub = scene.subset(keep.to(getattr(scene, "device", "cpu")))
    assert sub.num_primitives == int(keep.sum()), (
        f"{name}: subset kept {sub.num_primitives} of {int(keep.sum())} primitives"
    )
    assert torch.allclose(torch.as_tensor(sub.positions).cpu(), torch.as_tensor(scene.positions).cpu()[keep]), (
        f"{name}: subset changed the positions or their order"
    )
    dev = getattr(scene, "device", torch.device("cpu"))
    ones = sub.render(torch.ones(sub.num_primitives, 1, device=dev), cam)
    assert ones.shape == (cam.height, cam.width, 1), f"{name}: the subset renders {list(ones.shape)}"
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        path = Path(sub.save_ply(Path(d) / "subset.ply"))
        assert path.is_file() and path.stat().st_size > 0, f"{name}: save_ply wrote no file"


def check_alpha_scene(scene: Any, camera: Camera | None = None) -> None:
    """AlphaScene: ``render_alpha`` is ``[H, W]`` in [0, 1] and equals the render of a constant 1."""
    name = type(scene).__name__
    cam = camera or _scene_camera(scene)
    alpha = scene.render_alpha(cam)
    assert alpha.shape == (cam.height, cam.width), f"{name}: render_alpha gave {list(alpha.shape)}"
    assert float(alpha.min()) >= -1e-5 and float(alpha.max()) <= 1 + 1e-5, f"{name}: alpha leaves [0, 1]"
    dev = getattr(scene, "device", torch.device("cpu"))
    with torch.no_grad():
        ones = scene.render(torch.ones(scene.num_primitives, 1, device=dev), cam)[..., 0]
    assert torch.allclose(alpha.float(), ones.float(), atol=1e-4), f"{name}: render_alpha differs from rendering ones"


def check_adjoint_scene(scene: Any, camera: Camera | None = None, dim: int = 3) -> None:
    """AdjointScene: ``render_adjoint`` is the transpose of ``render``: ``<render(f), F> = <f, render_adjoint(F)>``."""
    name = type(scene).__name__
    cam = camera or _scene_camera(scene)
    g = torch.Generator().manual_seed(1)
    dev = getattr(scene, "device", torch.device("cpu"))
    f = torch.rand(scene.num_primitives, dim, generator=g).to(dev)
    img = torch.rand(cam.height, cam.width, dim, generator=g).to(dev)
    with torch.no_grad():
        lhs = float((scene.render(f, cam) * img).sum())
        adj = scene.render_adjoint(img, cam)
    assert adj.shape == (scene.num_primitives, dim), f"{name}: render_adjoint gave {list(adj.shape)}"
    rhs = float((f * adj).sum())
    assert abs(lhs - rhs) <= 1e-3 * max(1.0, abs(lhs)), (
        f"{name}: render_adjoint is not the transpose of render ({lhs} vs {rhs})"
    )


def check_weighted_adjoint_scene(scene: Any, camera: Camera | None = None, dim: int = 3) -> None:
    """WeightedAdjointScene: ``render_adjoint_with_weights(F)`` is ``(Wᵀ F, Wᵀ 1)``: the first the
    transpose of ``render`` against ``F``, the second against a constant 1 image."""
    name = type(scene).__name__
    cam = camera or _scene_camera(scene)
    g = torch.Generator().manual_seed(2)
    dev = getattr(scene, "device", torch.device("cpu"))
    n = scene.num_primitives
    f = torch.rand(n, dim, generator=g).to(dev)
    img = torch.rand(cam.height, cam.width, dim, generator=g).to(dev)
    with torch.no_grad():
        adj, w = scene.render_adjoint_with_weights(img, cam)
        lhs = float((scene.render(f, cam) * img).sum())
        lhs1 = float(scene.render(f[:, :1], cam).sum())
    assert adj.shape == (n, dim) and w.shape == (n,), (
        f"{name}: render_adjoint_with_weights gave {list(adj.shape)} and {list(w.shape)}, expected [{n}, {dim}] and [{n}]"
    )
    rhs, rhs1 = float((f * adj).sum()), float((f[:, 0] * w).sum())
    assert abs(lhs - rhs) <= 1e-3 * max(1.0, abs(lhs)), (
        f"{name}: render_adjoint_with_weights is not the transpose of render ({lhs} vs {rhs})"
    )
    assert abs(lhs1 - rhs1) <= 1e-3 * max(1.0, abs(lhs1)), (
        f"{name}: render_adjoint_with_weights' weights are not the adjoint of a constant 1 image ({lhs1} vs {rhs1})"
    )


def check_rgb_scene(scene: Any, camera: Camera | None = None) -> None:
    """RGBScene: ``render_rgb`` is ``[H, W, 3]`` and finite."""
    name = type(scene).__name__
    cam = camera or _scene_camera(scene)
    rgb = scene.render_rgb(cam)
    assert rgb.shape == (cam.height, cam.width, 3) and torch.isfinite(rgb).all(), (
        f"{name}: render_rgb gave {list(rgb.shape)}"
    )


def check_fittable_extractor(ext: Any, size: int = 28) -> None:
    """FittableExtractor: ``fit`` over views (images and zero-argument callables) leaves it ``fitted``
    and its outputs deterministic."""
    name = type(ext).__name__
    views = [tiny_images(1, size, size, seed=s)[0] for s in range(3)]
    out = ext.fit([views[0], lambda: views[1], views[2]])
    assert ext.fitted, f"{name}: still not fitted after fit()"
    assert out is None or out is ext, f"{name}: fit() should return the extractor"
    a, b = ext(views[0][None]), ext(views[0][None])
    assert torch.allclose(a, b, atol=1e-5), f"{name}: not deterministic after fit()"


def check_caching_extractor(ext: Any, size: int = 20, tmp_dir: str | Path | None = None) -> None:
    """CachingExtractor: ``set_cache(dir)`` sets ``cache_dir``, writes files there, and a second call
    reads the same values back; ``set_cache(None)`` turns it off."""
    import tempfile

    name = type(ext).__name__
    x = tiny_images(2, size, size, seed=3)
    kw: dict = {}
    if getattr(ext, "needs_prompts", False):
        c = size // 2
        pts = torch.tensor([[c, c], [c + 1, c]])
        kw = {"prompts": [pts, pts]}
    before = ext.cache_dir
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        ext.set_cache(d)
        assert ext.cache_dir is not None and Path(ext.cache_dir) == Path(d), (
            f"{name}: cache_dir is {ext.cache_dir!r} after set_cache({d!r})"
        )
        first = ext(x, **kw)
        assert any(Path(d).rglob("*")), f"{name}: set_cache({d!r}) but nothing was written there"
        again = ext(x, **kw)
        assert torch.allclose(first, again, atol=1e-5), f"{name}: the cached outputs differ from the computed ones"
        ext.set_cache(None)
        assert ext.cache_dir is None, f"{name}: set_cache(None) left cache_dir={ext.cache_dir!r}"
    ext.set_cache(before)


def check_refiner(refiner: Any) -> None:
    """The Refiner contract: ``refine`` keeps the shape (``[N, Q]`` and ``[N]``), gives finite scores,
    and accepts the keyword arguments the workflows pass (``prompt=``, ``weights=``)."""
    name = type(refiner).__name__
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(60, 3, generator=g)
    feats = torch.randn(60, 8, generator=g)
    scores = torch.zeros(60, 2)
    scores[:3, 0] = 1
    scores[-3:, 1] = 1
    out = refiner.refine(pos, feats, scores)
    assert out.shape == scores.shape, f"{name}: refine gave {list(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite scores"
    one = refiner.refine(pos, feats, scores[:, 0], prompt="scribble", weights=torch.ones(60))
    assert one.shape == (60,), f"{name}: refine of [N] scores with prompt=, weights= gave {list(one.shape)}"
    assert torch.isfinite(one).all(), f"{name}: non-finite scores with prompt=, weights="


def check_task(task: Any) -> None:
    assert isinstance(task.metric_name, str), f"{type(task).__name__}: metric_name must be a string"


def check_generator(gen: Any) -> None:
    x = tiny_images(4, 16, 16)
    y = gen.generate(x, generator=torch.Generator().manual_seed(0))
    y2 = gen.generate(x, generator=torch.Generator().manual_seed(0))
    assert y.ndim == 4 and y.shape[1:] == x.shape[1:], f"{type(gen).__name__}: generate gave {list(y.shape)}"
    assert torch.allclose(y, y2), f"{type(gen).__name__}: not deterministic for a seed"
    assert float(y.min()) >= -1e-4 and float(y.max()) <= 1 + 1e-4, f"{type(gen).__name__}: leaves [0,1]"


def check_dataset(ds: Any) -> None:
    splits = ds.splits()
    assert splits, f"{type(ds).__name__}: no splits"
    for split, data in splits.items():
        img, target = data[0]
        assert img.ndim == 3 and img.dtype == torch.uint8, f"{type(ds).__name__}[{split}]: image must be uint8 [C,H,W]"


def check_student(model: Any, size: int = 32) -> None:
    """Logits ``[B, K]`` or dense logits ``[B, K, H, W]`` at the input resolution; gradients flow."""
    x = tiny_images(2, size, size)
    model.train()
    out = model(x)
    name = type(model).__name__
    k = getattr(model, "num_classes", None)
    assert out.shape[0] == 2 and out.ndim in (2, 4), f"{name}: output {list(out.shape)}, expected [B,K] or [B,K,H,W]"
    if out.ndim == 4:
        assert out.shape[-2:] == (size, size), f"{name}: dense logits {list(out.shape)} not at input size {size}"
    if k is not None:
        assert out.shape[1] == k, f"{name}: num_classes={k} but output {list(out.shape)}"
    out.float().sum().backward()
    assert any(p.grad is not None for p in model.parameters()), f"{name}: no gradient reaches the parameters"


def check_teacher(teacher: Any, size: int = 28) -> None:
    x = tiny_images(2, size, size)
    feats = teacher.encode(x)
    assert not feats.requires_grad, f"{type(teacher).__name__}: encoder features must be frozen (no grad)"
    out = teacher(x)
    assert out.shape[0] == 2, f"{type(teacher).__name__}: output {list(out.shape)}"


def check_policy_optimizer(opt: Any) -> None:
    assert callable(getattr(opt, "search", None)), f"{type(opt).__name__}: no search()"


def check_backbone(bb: Any) -> None:
    """The :class:`fulcra.interfaces.Backbone` contract on tiny inputs: an ``nn.Module`` with integer
    ``embed_dim``/``patch_size``; ``normalize`` keeps the shape and takes uint8 as float/255;
    ``forward_tokens`` gives ``n_last`` CLS tensors ``[B, D]`` and patches ``[B, D, H/p, W/p]`` for
    non-square inputs, finite, deterministic, independent of the batch, differentiable in the
    parameters; ``n_last`` beyond ``depth`` (when declared) is a ConfigError."""
    from .errors import ConfigError

    name = type(bb).__name__
    assert isinstance(bb, torch.nn.Module), f"{name}: a backbone must be a torch.nn.Module"
    D, p = bb.embed_dim, bb.patch_size
    assert isinstance(D, int) and D > 0, f"{name}: embed_dim must be a positive int, got {D!r}"
    assert isinstance(p, int) and p > 0, f"{name}: patch_size must be a positive int, got {p!r}"
    depth = getattr(bb, "depth", None)
    n = 2 if depth is None or depth >= 2 else 1
    dev = next(iter(bb.parameters()), torch.empty(0)).device
    x = tiny_images(2, 3 * p, 2 * p, device=dev)
    xn = bb.normalize(x)
    assert xn.shape == x.shape and xn.is_floating_point(), f"{name}: normalize gave {xn.dtype} {list(xn.shape)}"
    xu = bb.normalize(tiny_images(2, 3 * p, 2 * p, dtype=torch.uint8, device=dev))
    assert torch.allclose(xu, bb.normalize(torch.round(x * 255) / 255), atol=1e-4), (
        f"{name}: normalize(uint8) != normalize(uint8 / 255)"
    )
    bb.eval()
    with torch.no_grad():
        out = bb.forward_tokens(xn, n_last=n)
        again = bb.forward_tokens(xn, n_last=n)
        one = bb.forward_tokens(xn[:1], n_last=n)
    assert isinstance(out, dict) and set(out) >= {"cls", "patch"}, (
        f"{name}: forward_tokens must return {{'cls', 'patch'}}"
    )
    cls, patch = out["cls"], out["patch"]
    assert isinstance(cls, (list, tuple)) and len(cls) == n, (
        f"{name}: n_last={n} gave {len(cls) if isinstance(cls, (list, tuple)) else type(cls)} CLS entries"
    )
    for c in cls:
        assert tuple(c.shape) == (2, D), f"{name}: a CLS entry is {list(c.shape)}, expected [2, {D}]"
        assert torch.isfinite(c).all(), f"{name}: non-finite CLS tokens"
    assert tuple(patch.shape) == (2, D, 3, 2), (
        f"{name}: patch tokens {list(patch.shape)} for a {3 * p}x{2 * p} input, expected [2, {D}, 3, 2]"
    )
    assert patch.is_floating_point() and torch.isfinite(patch).all(), f"{name}: patch tokens must be finite floats"
    assert torch.allclose(patch, again["patch"], atol=1e-5), f"{name}: forward_tokens is not deterministic in eval mode"
    assert torch.allclose(patch[:1], one["patch"], atol=1e-4), f"{name}: patch tokens depend on the batch"
    assert torch.allclose(cls[-1][:1], one["cls"][-1], atol=1e-4), f"{name}: CLS tokens depend on the batch"
    other = bb.forward_tokens(bb.normalize(tiny_images(1, 2 * p, 4 * p, device=dev)), n_last=1)["patch"]
    assert tuple(other.shape) == (1, D, 2, 4), f"{name}: patch tokens {list(other.shape)} for a {2 * p}x{4 * p} input"
    params = [q for q in bb.parameters() if q.requires_grad]
    if params:  # students train through the backbone
        res = bb.forward_tokens(xn, n_last=1)
        (res["patch"].float().sum() + res["cls"][-1].float().sum()).backward()
        assert any(q.grad is not None for q in params), f"{name}: no gradient reaches the parameters"
        bb.zero_grad(set_to_none=True)
    if depth is not None:
        try:
            bb.forward_tokens(xn, n_last=int(depth) + 1)
        except ConfigError:
            pass
        else:
            raise AssertionError(f"{name}: n_last={int(depth) + 1} > depth={depth} must raise ConfigError")


def check_backbone_weights_round_trip(name: str, **params: Any) -> None:
    """A backbone built with ``params``, saved from its ``state_dict()`` and rebuilt with
    ``weights=FILE`` (same params) gives the same tokens: what distillation's offline pre-training
    relies on (see :class:`fulcra.interfaces.Backbone`)."""
    import tempfile

    from .config import create

    params = dict(params)
    params.pop("weights", None)
    bb = create("backbones", name, **params)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in bb.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from safetensors.torch import save_file

            path = Path(tmp) / "weights.safetensors"
            save_file(sd, str(path))
        except ImportError:  # the file format the backbone must read either way
            path = Path(tmp) / "weights.pth"
            torch.save(sd, path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)  # a different random init: only the file can make them equal
            again = create("backbones", name, weights=str(path), **params)
    p = bb.patch_size
    x = bb.normalize(tiny_images(1, 2 * p, 2 * p))
    with torch.no_grad():
        a, b = bb.eval().forward_tokens(x)["patch"], again.eval().forward_tokens(x)["patch"]
    assert torch.allclose(a, b, atol=1e-5), (
        f"backbones plugin {name!r}: weights saved from its state_dict() do not load back"
    )


CONFORMANCE = {
    "feature_extractors": check_feature_extractor,
    "augmentations": check_augmentation_op,
    "scenes": check_scene,
    "refiners": check_refiner,
    "tasks": check_task,
    "generators": check_generator,
    "datasets": check_dataset,
    "students": check_student,
    "teachers": check_teacher,
    "policy_optimizers": check_policy_optimizer,
    "backbones": check_backbone,
}


def check_plugin(kind: str, name: str, **params: Any) -> Any:
    """Build ``kind``/``name`` with ``params`` and run its kind's conformance check; returns it.

    Backbones also go through :func:`check_backbone_weights_round_trip` with the same ``params``."""
    from .config import create
    from .registry import resolve_kind

    kind = resolve_kind(kind)
    obj = create(kind, name, **params)
    check = CONFORMANCE.get(kind)
    if check is not None:
        check(obj)
    if kind == "backbones":
        check_backbone_weights_round_trip(name, **params)
    return obj


@contextlib.contextmanager
def fake_distribution(
    root: Path,
    name: str,
    entry_points: Mapping[str, Mapping[str, str]],
    modules: Mapping[str, str] | None = None,
    version: str = "0.1.0",
) -> Iterator[Path]:
    """Put a minimal distribution on ``sys.path`` for the duration of the block.

    Args:
        root: an empty folder (e.g. pytest's ``tmp_path``).
        name: distribution name.
        entry_points: ``{group: {entry_name: "module:attr"}}``.
        modules: ``{"pkg/mod.py": source}`` files written under ``root``.
    """
    from . import registry

    root = Path(root)
    for rel, source in (modules or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    sys.path.insert(0, str(root))
    registry.clear_cache()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for mod in [
            m
            for m in sys.modules
            if any(
                m == r.split("/")[0].removesuffix(".py") or m.startswith(r.split("/")[0].removesuffix(".py") + ".")
                for r in (modules or {})
            )
        ]:
            del sys.modules[mod]
        registry.clear_cache()
