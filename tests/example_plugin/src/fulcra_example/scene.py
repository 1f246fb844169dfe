"""A scene plugin written only against fulcra's ``SceneRepresentation`` interface.

``point_splats``: every Gaussian of an INRIA 3DGS PLY becomes an isotropic screen-space splat (radius
from its mean scale, its opacity), composited front to back. Rendering is a dense ``[pixels, N]``
weight matrix times the features: linear in them and differentiable by autograd, so fulcra uplifts
into it without a fused adjoint. It has ``num_primitives``, ``positions`` and ``render`` and nothing
else (no ``subset``/``save_ply``, ``render_alpha``, ``render_rgb``, ``render_adjoint``): the
workflows must do without the optional protocols.
"""

from __future__ import annotations

import torch

from fulcra.engine import select_device

__all__ = ["PointSplatScene"]


class PointSplatScene:
    """Isotropic splats of the Gaussians of a 3DGS PLY (small scenes: memory is ``O(pixels x N)`` per row block).

    Args:
        ply: an INRIA 3DGS ``point_cloud.ply`` (read with the public ``fulcra_plugins.scenes.ply.read_ply``).
        device: ``auto``, ``cpu`` or ``cuda``.
        radius_scale: splat radius in world units = this x the Gaussian's mean scale.
        rows: image rows rendered per block (bounds memory).
    """

    def __init__(self, ply: str = "", device: str = "auto", radius_scale: float = 1.5, rows: int = 16):
        from fulcra.errors import ConfigError
        from fulcra_plugins.scenes.ply import read_ply

        if not ply:
            raise ConfigError("scenes 'point_splats': set ply=PATH")
        self.device = select_device(device)
        g = read_ply(ply, device=self.device)
        self.positions = g.means.float()  # [N, 3]
        self.radii = float(radius_scale) * g.scales.float().mean(1)  # [N]
        self.opacities = g.opacities.float()  # [N]
        self.num_primitives = int(self.positions.shape[0])
        self.rows = max(1, int(rows))

    def render(self, features: torch.Tensor, camera) -> torch.Tensor:  # features [N, D] -> [H, W, D]
        if features.ndim != 2 or features.shape[0] != self.num_primitives:
            raise ValueError(f"point_splats: features must be [N={self.num_primitives}, D], got {list(features.shape)}")
        V, K = camera.viewmat.to(self.device), camera.K.to(self.device)
        cam = self.positions @ V[:3, :3].T + V[:3, 3]  # [N, 3]
        z = cam[:, 2]
        front = z > 0.01
        zs = torch.where(front, z, torch.ones_like(z))
        uv = torch.stack([K[0, 0] * cam[:, 0] / zs + K[0, 2], K[1, 1] * cam[:, 1] / zs + K[1, 2]], -1)  # [N, 2]
        r = (K[0, 0] * self.radii / zs).clamp_min(0.5)  # [N] pixels
        order = torch.argsort(torch.where(front, z, torch.full_like(z, float("inf"))))
        uv, r, o, valid = uv[order], r[order], self.opacities[order], front[order]
        f = features.to(self.device, torch.float32)[order]
        H, W = camera.height, camera.width
        xs = torch.arange(W, device=self.device, dtype=torch.float32) + 0.5
        out = []
        for y0 in range(0, H, self.rows):
            ys = torch.arange(y0, min(H, y0 + self.rows), device=self.device, dtype=torch.float32) + 0.5
            px = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2).flip(-1)  # [P, 2] (x, y)
            d2 = ((px[:, None, :] - uv[None]) ** 2).sum(-1)  # [P, N]
            alpha = (o * torch.exp(-0.5 * d2 / r**2)).clamp(max=0.99) * valid
            alpha = torch.where(alpha >= 1.0 / 255.0, alpha, torch.zeros_like(alpha))
            trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            out.append((alpha * trans) @ f)  # [P, D]
        return torch.cat(out).reshape(H, W, -1)
