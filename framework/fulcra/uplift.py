"""Uplifting 2D feature maps into any differentiable scene, by the adjoint of rendering (Eq. 5.3-5.5).

Rendering per-primitive features is linear: ``F̂ = W f``. Uplifting is ``f = D⁻¹ Wᵀ F`` with
``D = diag(Wᵀ 1)``. For any :class:`~fulcra.interfaces.SceneRepresentation` whose ``render`` is
differentiable in the features, ``Wᵀ F`` is the gradient of ``⟨render(f), F⟩`` with respect to ``f``
(independent of ``f``, since the map is linear), so it is computed view by view, without forming W.
A ones channel appended to ``F`` gives ``Wᵀ 1`` in the same backward pass (a
:class:`~fulcra.interfaces.WeightedAdjointScene` returns it beside ``Wᵀ F`` instead). Numerator and
denominator are sums over views: views shard across processes and meet in one all-reduce.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from .camera import Camera
from .engine import dist
from .interfaces import AdjointScene, WeightedAdjointScene

__all__ = ["uplift", "adjoint", "resize_to_camera", "check_feature_map"]


def resize_to_camera(fmap: torch.Tensor, camera: Camera) -> torch.Tensor:
    """A feature map ``[D, h, w]`` (or ``[h, w]``) resized bilinearly to ``[D, H, W]`` of the camera."""
    if fmap.ndim == 2:
        fmap = fmap[None]
    if fmap.ndim != 3:
        raise ValueError(f"feature map for camera {camera.name!r} must be [D,h,w], got {list(fmap.shape)}")
    check_feature_map(fmap, camera)
    if fmap.shape[-2:] != (camera.height, camera.width):
        fmap = F.interpolate(
            fmap[None].float(), size=(camera.height, camera.width), mode="bilinear", align_corners=False
        )[0]
    return fmap


def check_feature_map(fmap: torch.Tensor, camera: Camera) -> None:
    """Refuse maps that would uplift to wrong features without an error: a channels-last ``[h, w, D]``
    map (its grid's aspect ratio then differs from the camera's by far more than a patch grid's
    rounding; e.g. ``[120, 160, 3]`` for a 160×120 camera would give D = 120) and non-finite values.

    Raises:
        ValueError: naming the camera and the shape or the count of non-finite values.
    """
    d, h, w = fmap.shape
    cam_ratio = camera.width / camera.height
    ratio = w / h
    # patch grids round each side to whole patches: allow a factor 1.5 either way
    if not (cam_ratio / 1.5 <= ratio <= cam_ratio * 1.5):
        hint = ""
        if fmap.shape[0] == camera.height or (fmap.shape[1], fmap.shape[0]) == (camera.width, camera.height):
            hint = "; it looks channels-last [h, w, D]: pass fmap.permute(2, 0, 1)"
        raise ValueError(
            f"feature map for camera {camera.name!r} is [D={d}, h={h}, w={w}], whose grid aspect "
            f"{ratio:.3g} does not match the camera's {camera.width}x{camera.height} ({cam_ratio:.3g}){hint}"
        )
    if fmap.is_floating_point():
        bad = int((~torch.isfinite(fmap)).sum())
        if bad:
            raise ValueError(f"feature map for camera {camera.name!r} holds {bad} non-finite values (NaN or Inf)")


def adjoint(scene, images: torch.Tensor, camera: Camera) -> torch.Tensor:
    """``Wᵀ F`` for one view: ``images`` ``[H, W, D]`` -> ``[N, D]``.

    Uses the scene's fused ``render_adjoint`` when it is an :class:`~fulcra.interfaces.AdjointScene`,
    else autograd through ``render`` (the one autograd adjoint of fulcra)."""
    if isinstance(scene, AdjointScene):
        return scene.render_adjoint(images, camera)
    n = scene.num_primitives
    with torch.enable_grad():
        f = torch.zeros(n, images.shape[-1], device=images.device, dtype=images.dtype, requires_grad=True)
        out = scene.render(f, camera)  # [H, W, D]
        (grad,) = torch.autograd.grad(out, f, grad_outputs=images.to(out.dtype))
    return grad


def uplift(
    scene,
    views: Iterable[tuple[Camera, torch.Tensor]],
    *,
    dim_chunk: int | None = None,
    normalize: bool = True,
    eps: float = 1e-12,
    distributed: bool | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uplift 2D feature maps into per-primitive features.

    Args:
        scene: a SceneRepresentation (``render(features [N,D], camera) -> [H,W,D]``, linear and
            differentiable in ``features``).
        views: ``(camera, feature_map)`` pairs, streamed; ``feature_map`` is ``[D, h, w]`` float of
            any resolution (resized bilinearly to the camera's), ``[h, w]`` for a mask, or a
            zero-argument callable returning one (evaluated only by the rank that owns the view).
            Under ``torchrun`` pass every view on every rank: each rank takes its round-robin share,
            so with callables each feature map is computed exactly once across processes.
        dim_chunk: process at most this many feature channels per backward pass (bounds memory).
        normalize: divide by the weight sums (Eq. 5.3); False returns the raw ``Wᵀ F``.
        distributed: shard views across processes and all-reduce (default: when a process group is
            initialised).

    Returns:
        ``features`` ``[N, D]`` float32 (zero where a primitive is seen by no pixel) and ``weights``
        ``[N]`` float32, the per-primitive sums of rendering weights over all views (β of §5.3.2,
        used for pruning).
    """
    distributed = dist.is_distributed() if distributed is None else distributed
    rank, world = (dist.rank(), dist.world_size()) if distributed else (0, 1)
    num = den = None
    n = scene.num_primitives
    dev = torch.device(device) if device is not None else getattr(scene, "device", torch.device("cpu"))
    for i, (camera, fmap) in enumerate(views):
        if i % world != rank:  # another rank's view: never computed or loaded here
            continue
        if callable(fmap):
            fmap = fmap()
        fmap = resize_to_camera(torch.as_tensor(fmap).to(dev, torch.float32), camera)  # [D, H, W]
        if num is None:
            num = torch.zeros(n, fmap.shape[0], device=dev)
            den = torch.zeros(n, device=dev)
        if fmap.shape[0] != num.shape[1]:
            raise ValueError(f"view {camera.name!r} has {fmap.shape[0]} channels, earlier views {num.shape[1]}")
        img = fmap.permute(1, 2, 0)  # [H, W, D]
        d = img.shape[-1]
        step = d if not dim_chunk else max(1, int(dim_chunk))
        weighted = isinstance(scene, WeightedAdjointScene)  # the weight sums come with the first chunk
        ones = None if weighted else torch.ones_like(img[..., :1])  # else a ones channel on the last
        for c0 in range(0, d, step):
            chunk = img[..., c0 : c0 + step]
            if weighted:
                g, w = scene.render_adjoint_with_weights(chunk.contiguous(), camera)
                if c0 == 0:
                    den += w
            else:
                last = c0 + step >= d
                g = adjoint(scene, (torch.cat([chunk, ones], dim=-1) if last else chunk).contiguous(), camera)
                if last:
                    den += g[:, -1]
            num[:, c0 : c0 + chunk.shape[-1]] += g[:, : chunk.shape[-1]]
    if distributed:  # a rank with no view still joins the reductions, with zeros of the agreed width
        width = dist.all_reduce_max(torch.tensor([0 if num is None else num.shape[1]], device=dev))
        if num is None:
            num = torch.zeros(n, int(width.item()), device=dev)
            den = torch.zeros(n, device=dev)
        dist.all_reduce_sum(num)
        dist.all_reduce_sum(den)
    if num is None or num.shape[1] == 0:
        raise ValueError("uplift received no views")
    if normalize:
        num = torch.where(den[:, None] > eps, num / den.clamp_min(eps)[:, None], torch.zeros_like(num))
    return num, den
