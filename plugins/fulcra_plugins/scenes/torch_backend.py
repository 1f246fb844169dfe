"""The ``torch`` scene backend: a pure-PyTorch, tile-based Gaussian rasteriser for any feature dimension.

It follows 3DGS "classic" rasterisation as gsplat does it: EWA projection with gsplat's clamped
Jacobian, 2D covariance dilated by ``eps2d = 0.3``, pixel centres at ``+0.5``,
``alpha = min(0.999, o * exp(-sigma))``, alphas under 1/255 skipped, front-to-back compositing that
stops (exclusively) when the transmittance would fall to 1e-4 or below, near plane 0.01.

How it works: Gaussians are projected once per view, each is binned into the small square tiles its
support touches (the support is exact: the ellipse where ``alpha >= 1/255``, so tiling changes no
pixel), pairs are sorted by tile then depth, and tiles are processed in batches, ``chunk`` Gaussians
deep at a time, carrying the transmittance. The weights ``w_i(p)`` of a chunk are a dense
``[tiles, pixels per tile, chunk]`` block, so the forward pass is a batched matmul with the gathered features
and the adjoint (``Wᵀ F``, the uplift) is the transposed matmul plus an ``index_add``. Memory stays
under ``max_elements`` floats per block whatever N, D or the resolution; tiles whose pixels are all
saturated leave the loop early. Autograd goes through a custom function whose backward is the fused
adjoint (weights recomputed, nothing stored), so ``fulcra.uplift`` costs about one extra raster pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from fulcra.camera import Camera

from .base import GaussianScene
from .gaussians import Gaussians

__all__ = ["TorchScene", "Projection", "project_gaussians", "ALPHA_MIN", "T_MIN", "ALPHA_MAX"]

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


@dataclass
class Projection:
    """Per-view screen-space Gaussians and their tile bins (what the backward pass reuses)."""

    means2d: torch.Tensor  # [N + 1, 2] (last row: a dummy with zero opacity, target of padding)
    conics: torch.Tensor  # [N + 1, 3] (a, b, c) of the inverse 2D covariance
    opacities: torch.Tensor  # [N + 1]
    sigma_coef: torch.Tensor  # [N + 1, 3] (a / 2, b, c / 2): sigma = coef . (dx^2, dx dy, dy^2)
    log_opacities: torch.Tensor  # [N + 1] (the dummy row: -1e4, so its alpha is 0)
    packed: torch.Tensor  # [N + 1, 6] (mx, my, a/2, b, c/2, log o): one gather per chunk
    tile_gids: torch.Tensor  # [M] Gaussian ids sorted by tile then depth
    tile_start: torch.Tensor  # [T] offset of each tile in tile_gids
    tile_count: torch.Tensor  # [T]
    tiles_x: int
    tiles_y: int
    tile_size: int
    width: int
    height: int


def project_gaussians(
    g: Gaussians, camera: Camera, eps2d: float = 0.3, near: float = 0.01, far: float = 1e10, tile_size: int = 16
) -> Projection:
    """EWA-project Gaussians into a view and bin them into tiles (gsplat's classic conventions).

    Args:
        g: the Gaussians (float32, on the scene's device).
        camera: the view; ``camera.viewmat``/``K`` are moved to ``g``'s device.
    Returns:
        a :class:`Projection`.
    """
    dev = g.means.device
    V = camera.viewmat.to(dev)
    K = camera.K.to(dev)
    W, H = camera.width, camera.height
    R, t = V[:3, :3], V[:3, 3]
    mc = g.means @ R.T + t  # [N, 3] camera-space means
    x, y, z = mc.unbind(-1)
    zs = torch.where(z > near, z, torch.ones_like(z))  # invalid ones are culled below; avoid 1/0
    cov = R @ g.covariances() @ R.T  # [N, 3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # gsplat clamps the projection point to 1.3x the field of view so the Jacobian of Gaussians near
    # or beyond the image border stays bounded
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    tx = zs * torch.clamp(x / zs, min=-(cx / fx + 0.3 * tan_x), max=(W - cx) / fx + 0.3 * tan_x)
    ty = zs * torch.clamp(y / zs, min=-(cy / fy + 0.3 * tan_y), max=(H - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cov @ J.transpose(1, 2)
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    opac = g.opacities
    # exact support: alpha >= 1/255  <=>  sigma <= log(255 o); the ellipse's half-extents follow
    sig_cut = torch.log((opac * 255.0).clamp_min(1e-12))
    valid = (z > near) & (z < far) & (det > 0) & (sig_cut >= 0) & torch.isfinite(means2d).all(-1)
    ext_x = torch.sqrt((2 * sig_cut.clamp_min(0) * a).clamp_min(0)) * (1 + 1e-4) + 1e-3
    ext_y = torch.sqrt((2 * sig_cut.clamp_min(0) * c).clamp_min(0)) * (1 + 1e-4) + 1e-3

    ts = tile_size
    tiles_x, tiles_y = math.ceil(W / ts), math.ceil(H / ts)
    # pixel p (centre p + 0.5) is inside iff |p + 0.5 - m| <= ext
    px0 = torch.ceil(means2d[:, 0] - ext_x - 0.5).clamp(min=0)
    px1 = torch.floor(means2d[:, 0] + ext_x - 0.5).clamp(max=W - 1)
    py0 = torch.ceil(means2d[:, 1] - ext_y - 0.5).clamp(min=0)
    py1 = torch.floor(means2d[:, 1] + ext_y - 0.5).clamp(max=H - 1)
    valid &= (px0 <= px1) & (py0 <= py1)
    ids = torch.nonzero(valid).squeeze(1)
    ids = ids[torch.argsort(z[ids], stable=True)]  # front to back
    tx0 = (px0[ids] // ts).long()
    ty0 = (py0[ids] // ts).long()
    nx = (px1[ids] // ts).long() - tx0 + 1
    ny = (py1[ids] // ts).long() - ty0 + 1
    cnt = nx * ny
    rep = torch.repeat_interleave(torch.arange(len(ids), device=dev), cnt)
    local = torch.arange(rep.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    tile = (ty0[rep] + local // nx[rep]) * tiles_x + tx0[rep] + local % nx[rep]
    tile_sorted, perm = torch.sort(tile, stable=True)  # stable: depth order kept inside a tile
    tile_gids = ids[rep[perm]]
    n_tiles = tiles_x * tiles_y
    count = torch.bincount(tile_sorted, minlength=n_tiles)
    start = torch.cumsum(count, 0) - count

    def pad(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, v.new_zeros((1,) + v.shape[1:])])

    opac_v = torch.where(valid, opac, torch.zeros_like(opac))
    log_op = torch.cat([torch.log(opac_v.clamp_min(1e-30)), opac_v.new_full((1,), -1e4)])
    coef = conics * conics.new_tensor([0.5, 1.0, 0.5])
    packed = torch.cat([pad(means2d), pad(coef), log_op[:, None]], 1).contiguous()
    return Projection(
        pad(means2d),
        pad(conics),
        pad(opac_v),
        pad(coef),
        log_op,
        packed,
        tile_gids,
        start,
        count,
        tiles_x,
        tiles_y,
        ts,
        W,
        H,
    )


def _blocks(p: Projection, chunk: int, max_elements: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(tiles [B], gids [B, k], weights [B, P, k])`` blocks covering every non-zero weight.

    ``P = tile_size**2`` pixels per tile in row-major order within the tile; padding gids point at
    the dummy Gaussian ``N`` whose weight is 0.
    """
    dev = p.means2d.device
    ts = p.tile_size
    P = ts * ts
    dummy = p.means2d.shape[0] - 1
    order = torch.argsort(p.tile_count, descending=True)
    order = order[p.tile_count[order] > 0]
    if order.numel() == 0:
        return
    local = torch.arange(P, device=dev)
    lx, ly = (local % ts).float() + 0.5, (local // ts).float() + 0.5
    batch = max(1, max_elements // (P * chunk))
    counts_host = p.tile_count[order].tolist()
    for b0 in range(0, order.numel(), batch):
        tiles = order[b0 : b0 + batch]
        kmax = counts_host[b0]  # tiles are sorted by count: the first is the deepest
        start, count = p.tile_start[tiles], p.tile_count[tiles]
        pix_x = (tiles % p.tiles_x).float()[:, None] * ts + lx  # [B, P]
        pix_y = (tiles // p.tiles_x).float()[:, None] * ts + ly
        T = torch.ones(tiles.numel(), P, device=dev)
        rows = torch.arange(tiles.numel(), device=dev)
        for k0 in range(0, kmax, chunk):
            if k0:  # drop tiles that ran out of Gaussians or whose pixels are all saturated
                keep = (count[rows] > k0) & (T[rows] > T_MIN).any(1)
                if not bool(keep.all()):
                    rows = rows[keep]
                    if rows.numel() == 0:
                        break
            kk = k0 + torch.arange(chunk, device=dev)
            inside = kk[None] < count[rows, None]
            pos = (start[rows, None] + kk[None]).clamp(max=max(p.tile_gids.numel() - 1, 0))
            gid = torch.where(inside, p.tile_gids[pos], torch.full_like(pos, dummy))  # [B, k]
            prm = p.packed.index_select(0, gid.reshape(-1)).view(gid.shape[0], chunk, 6)[:, None]  # [B, 1, k, 6]
            dx = pix_x[rows, :, None] - prm[..., 0]  # [B, P, k]
            dy = pix_y[rows, :, None] - prm[..., 1]
            # sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 (>= 0: the dilated 2D covariance is positive definite)
            sigma = dx * (prm[..., 2] * dx + prm[..., 3] * dy) + prm[..., 4] * dy * dy
            # alpha = min(0.999, o exp(-sigma)) as exp(log o - sigma); the floor keeps exp() off its
            # (very slow) denormal path, and any alpha it changes is far below 1/255
            alpha = (prm[..., 5] - sigma).clamp_(min=-40.0).exp_().clamp_(max=ALPHA_MAX)
            alpha = alpha * (alpha >= ALPHA_MIN)
            T_rows = T[rows]
            next_T = torch.cumprod(1.0 - alpha, dim=2).mul_(T_rows[:, :, None])
            before = torch.cat([T_rows[:, :, None], next_T[:, :, :-1]], dim=2)
            w = alpha.mul_(before).mul_(next_T > T_MIN)  # exclusive stop at transmittance <= 1e-4
            T[rows] = next_T[:, :, -1]
            yield tiles[rows], gid, w


class _RenderFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, scene, proj):  # features [N, D]
        ctx.scene, ctx.proj = scene, proj
        return scene._forward(features, proj)

    @staticmethod
    def backward(ctx, grad):  # grad [H, W, D]
        return ctx.scene._adjoint(grad.contiguous(), ctx.proj), None, None


class TorchScene(GaussianScene):
    """3D Gaussian Splatting scene rendered by a pure-PyTorch tile rasteriser (CPU or GPU).

    Renders any number of feature channels, is differentiable with respect to the features (so
    ``fulcra.uplift`` applies) and provides a fused ``render_adjoint``. The reference backend for
    tests and small scenes; use ``gsplat`` for large scenes on CUDA.

    Args:
        ply: a 3DGS ``point_cloud.ply`` (empty: use :meth:`from_gaussians`; the embedded synthetic
            scene is generated by :func:`~fulcra_plugins.scenes.synthetic.generate_scene`).
        device: ``auto``, ``cpu`` or ``cuda``.
        tile_size: tile side in pixels (0: chosen per view, see :meth:`tile_for`).
        chunk: Gaussians processed per step along a tile's depth list.
        max_elements: bound on the floats of one ``[tiles, pixels, chunk]`` block (memory control).
        max_channels: feature channels rendered at once (larger ``D`` is split).
    """

    @staticmethod
    def conformance_params() -> dict:
        """What the registry's conformance suite builds: the synthetic scene's Gaussians, tiny."""
        from .synthetic import synthetic_ply

        return {"ply": str(synthetic_ply(0.05)), "device": "cpu"}

    def __init__(
        self,
        ply: str = "",
        device: str = "auto",
        tile_size: int = 0,
        chunk: int = 32,
        max_elements: int = 1 << 17,
        max_channels: int = 64,
    ):
        super().__init__(ply=ply, device=device)
        self.tile_size = int(tile_size)
        self.chunk = int(chunk)
        self.max_elements, self.max_channels = int(max_elements), int(max_channels)

    def _options(self) -> dict:
        return {
            "device": str(self.device),
            "tile_size": self.tile_size,
            "chunk": self.chunk,
            "max_elements": self.max_elements,
            "max_channels": self.max_channels,
        }

    def project(self, camera: Camera) -> Projection:
        self._require()
        with torch.no_grad():
            return project_gaussians(self.gaussians, camera, tile_size=self.tile_for(camera))

    def tile_for(self, camera: Camera) -> int:
        """The tile side used for a view: ``tile_size`` if set, else 4 px on CPU up to 512x512 and
        8 px above (16 px on CUDA above 2 megapixels, 8 px below).

        Small tiles cut the (tile pixel, Gaussian) pairs whose alpha is under 1/255: 4x4 ran 2.5x
        faster than 16x16 on CPU at 256 px. Large images get larger tiles so the list of
        (tile, Gaussian) pairs, which grows with the number of tiles a Gaussian covers, stays bounded.
        """
        if self.tile_size:
            return self.tile_size
        pixels = camera.width * camera.height
        if self.device.type == "cuda":
            return 8 if pixels <= 1 << 21 else 16
        return 4 if pixels <= 1 << 18 else 8

    def render(self, features: torch.Tensor, camera: Camera) -> torch.Tensor:
        self._check_features(features)
        proj = self.project(camera)
        if features.requires_grad and torch.is_grad_enabled():
            return _RenderFn.apply(features, self, proj)
        return self._forward(features, proj)

    def render_adjoint(self, images: torch.Tensor, camera: Camera) -> torch.Tensor:
        """Fused ``Wᵀ F``: ``images [H, W, D]`` -> ``[N, D]`` (what autograd of :meth:`render` gives)."""
        if images.ndim != 3 or images.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"images must be [H={camera.height}, W={camera.width}, D], got {list(images.shape)}")
        return self._adjoint(images.to(self.device, torch.float32), self.project(camera))

    def render_adjoint_with_weights(self, images: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Wᵀ F [N, D], Wᵀ 1 [N])`` in one pass: the weight sums without a ones channel."""
        if images.ndim != 3 or images.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"images must be [H={camera.height}, W={camera.width}, D], got {list(images.shape)}")
        return self._adjoint(images.to(self.device, torch.float32), self.project(camera), with_weights=True)

    # ------------------------------------------------------------------------------------ kernels
    def _to_tiles(self, img: torch.Tensor, p: Projection) -> torch.Tensor:
        """``[H, W, D]`` -> ``[T, P, D]`` (zero padded to whole tiles)."""
        ts, D = p.tile_size, img.shape[-1]
        full = img.new_zeros(p.tiles_y * ts, p.tiles_x * ts, D)
        full[: p.height, : p.width] = img
        return full.reshape(p.tiles_y, ts, p.tiles_x, ts, D).permute(0, 2, 1, 3, 4).reshape(-1, ts * ts, D)

    def _from_tiles(self, tiles: torch.Tensor, p: Projection) -> torch.Tensor:
        ts, D = p.tile_size, tiles.shape[-1]
        img = (
            tiles.reshape(p.tiles_y, p.tiles_x, ts, ts, D)
            .permute(0, 2, 1, 3, 4)
            .reshape(p.tiles_y * ts, p.tiles_x * ts, D)
        )
        return img[: p.height, : p.width].contiguous()

    def _channel_step(self, D: int) -> int:
        return max(1, min(D, self.max_channels))

    def _forward(self, features: torch.Tensor, p: Projection) -> torch.Tensor:
        with torch.no_grad():
            feats = torch.cat([features.detach().float(), features.new_zeros(1, features.shape[1])])  # dummy row
            D = feats.shape[1]
            step = self._channel_step(D)
            parts = [feats[:, c0 : c0 + step].contiguous() for c0 in range(0, D, step)]
            outs = [feats.new_zeros(p.tiles_x * p.tiles_y, p.tile_size**2, f.shape[1]) for f in parts]
            for tiles, gid, w in _blocks(p, self.chunk, self.max_elements):
                flat = gid.reshape(-1)
                for f, out in zip(parts, outs):
                    g = f.index_select(0, flat).view(gid.shape[0], gid.shape[1], f.shape[1])  # [B, k, d]
                    out.index_add_(0, tiles, torch.bmm(w, g))  # tiles are distinct within a block
            return self._from_tiles(torch.cat(outs, -1) if len(outs) > 1 else outs[0], p)

    def _adjoint(self, images: torch.Tensor, p: Projection, with_weights: bool = False) -> Any:
        with torch.no_grad():
            img = self._to_tiles(images.float(), p)
            D = img.shape[-1]
            step = self._channel_step(D)
            parts = [img[..., c0 : c0 + step].contiguous() for c0 in range(0, D, step)]
            outs = [img.new_zeros(p.means2d.shape[0], f.shape[-1]) for f in parts]
            wsum = valid = None
            if with_weights:  # the pixels of the image (the tiles' padding beyond it weighs nothing)
                wsum = img.new_zeros(p.means2d.shape[0])
                valid = self._to_tiles(images.new_ones(images.shape[0], images.shape[1], 1).float(), p)
            for tiles, gid, w in _blocks(p, self.chunk, self.max_elements):
                wt = w.transpose(1, 2)
                flat = gid.reshape(-1)
                for f, out in zip(parts, outs):
                    contrib = torch.bmm(wt, f.index_select(0, tiles))  # [B, k, d]
                    out.index_add_(0, flat, contrib.reshape(-1, contrib.shape[-1]))
                if wsum is not None and valid is not None:  # Σ over the tile's pixels
                    wsum.index_add_(0, flat, torch.bmm(wt, valid.index_select(0, tiles)).reshape(-1))
            num = (torch.cat(outs, -1) if len(outs) > 1 else outs[0])[:-1]
            return (num, wsum[:-1]) if wsum is not None else num
