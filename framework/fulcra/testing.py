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
    "check_refiner",
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


def tiny_images(b: int = 2, h: int = 16, w: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0,
                device: str | torch.device = "cpu") -> torch.Tensor:
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


def check_scene(scene: Any, dim: int = 3) -> None:
    name = type(scene).__name__
    n = scene.num_primitives
    cams = getattr(scene, "cameras", None)
    cam = cams[0] if cams else tiny_camera()
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


def check_refiner(refiner: Any) -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(60, 3, generator=g)
    feats = torch.randn(60, 8, generator=g)
    scores = torch.zeros(60, 2)
    scores[:3, 0] = 1
    scores[-3:, 1] = 1
    out = refiner.refine(pos, feats, scores)
    assert out.shape == scores.shape, f"{type(refiner).__name__}: refine gave {list(out.shape)}"
    assert torch.isfinite(out).all(), f"{type(refiner).__name__}: non-finite scores"


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
    assert torch.allclose(xu, bb.normalize(torch.round(x * 255) / 255), atol=1e-4), f"{name}: normalize(uint8) != normalize(uint8 / 255)"
    bb.eval()
    with torch.no_grad():
        out = bb.forward_tokens(xn, n_last=n)
        again = bb.forward_tokens(xn, n_last=n)
        one = bb.forward_tokens(xn[:1], n_last=n)
    assert isinstance(out, dict) and set(out) >= {"cls", "patch"}, f"{name}: forward_tokens must return {{'cls', 'patch'}}"
    cls, patch = out["cls"], out["patch"]
    assert isinstance(cls, (list, tuple)) and len(cls) == n, f"{name}: n_last={n} gave {len(cls) if isinstance(cls, (list, tuple)) else type(cls)} CLS entries"
    for c in cls:
        assert tuple(c.shape) == (2, D), f"{name}: a CLS entry is {list(c.shape)}, expected [2, {D}]"
        assert torch.isfinite(c).all(), f"{name}: non-finite CLS tokens"
    assert tuple(patch.shape) == (2, D, 3, 2), f"{name}: patch tokens {list(patch.shape)} for a {3 * p}x{2 * p} input, expected [2, {D}, 3, 2]"
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
    assert torch.allclose(a, b, atol=1e-5), f"backbones plugin {name!r}: weights saved from its state_dict() do not load back"


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
        for mod in [m for m in sys.modules if any(m == r.split("/")[0].removesuffix(".py") or
                                                   m.startswith(r.split("/")[0].removesuffix(".py") + ".")
                                                   for r in (modules or {}))]:
            del sys.modules[mod]
        registry.clear_cache()
