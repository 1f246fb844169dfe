"""In-memory 3D Gaussians in the conventions of DESIGN.md.

Means ``[N, 3]``, quaternions ``[N, 4]`` (w, x, y, z), linear scales ``[N, 3]``, opacities ``[N]`` in
(0, 1), spherical-harmonics colour coefficients ``sh0 [N, 3]`` (degree 0, the PLY's ``f_dc_*``) and
``shN [N, K, 3]`` (higher degrees, ``K = (deg + 1)^2 - 1``, the PLY's ``f_rest_*``). The INRIA PLY
stores log-scales and logit opacities; :mod:`.ply` converts on load and save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

__all__ = ["Gaussians", "quat_to_rotmat", "eval_sh", "rgb_to_sh", "sh_to_rgb", "SH_C0"]

SH_C0 = 0.28209479177387814


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficient whose colour is ``rgb`` (3DGS stores colours as ``(rgb - 0.5) / C0``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * SH_C0 + 0.5


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions.

    Args:
        quats: ``[..., 4]`` (w, x, y, z), normalised here.
    Returns:
        ``[..., 3, 3]``.
    """
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate real spherical harmonics as 3DGS does (``sh_utils.eval_sh``).

    Args:
        degree: 0..3.
        coeffs: ``[N, (degree + 1)^2, C]``.
        dirs: ``[N, 3]`` unit viewing directions (camera centre -> Gaussian).
    Returns:
        ``[N, C]`` (add 0.5 and clamp at 0 to get colours).
    """
    C1 = 0.4886025119029199
    C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
    C3 = (
        -0.5900435899266435,
        2.890611442640554,
        -0.4570457994644658,
        0.3731763325901154,
        -0.4570457994644658,
        1.445305721320277,
        -0.5900435899266435,
    )
    res = SH_C0 * coeffs[:, 0]
    if degree < 1:
        return res
    x, y, z = (dirs[:, i : i + 1] for i in range(3))
    res = res - C1 * y * coeffs[:, 1] + C1 * z * coeffs[:, 2] - C1 * x * coeffs[:, 3]
    if degree < 2:
        return res
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    res = (
        res
        + C2[0] * xy * coeffs[:, 4]
        + C2[1] * yz * coeffs[:, 5]
        + C2[2] * (2 * zz - xx - yy) * coeffs[:, 6]
        + C2[3] * xz * coeffs[:, 7]
        + C2[4] * (xx - yy) * coeffs[:, 8]
    )
    if degree < 3:
        return res
    return (
        res
        + C3[0] * y * (3 * xx - yy) * coeffs[:, 9]
        + C3[1] * xy * z * coeffs[:, 10]
        + C3[2] * y * (4 * zz - xx - yy) * coeffs[:, 11]
        + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[:, 12]
        + C3[4] * x * (4 * zz - xx - yy) * coeffs[:, 13]
        + C3[5] * z * (xx - yy) * coeffs[:, 14]
        + C3[6] * x * (xx - 3 * yy) * coeffs[:, 15]
    )


@dataclass
class Gaussians:
    """A set of ``N`` 3D Gaussians (float32 tensors on one device).

    Attributes:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations (w, x, y, z), unit norm.
        scales: ``[N, 3]`` standard deviations along the rotated axes (linear, > 0).
        opacities: ``[N]`` in (0, 1).
        sh0: ``[N, 3]`` degree-0 SH coefficients (the PLY's ``f_dc_0..2``).
        shN: ``[N, K, 3]`` higher-degree coefficients (``K`` = 0, 3, 8 or 15).
        normals: ``[N, 3]`` or ``None``; 3DGS writes zeros, kept only for a faithful round trip.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor = field(default=None)  # type: ignore[assignment]
    normals: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        if self.shN is None:
            self.shN = self.means.new_zeros((n, 0, 3))
        for name, shape in (
            ("means", (n, 3)),
            ("quats", (n, 4)),
            ("scales", (n, 3)),
            ("opacities", (n,)),
            ("sh0", (n, 3)),
        ):
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {list(got)}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise ValueError(f"Gaussians.shN must be [N, K, 3], got {list(self.shN.shape)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.shN.shape[1] + 1))) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def colors(self) -> torch.Tensor:  # [N, 3]
        """View-independent (degree-0) colours in [0, 1]."""
        return sh_to_rgb(self.sh0).clamp(0, 1)

    def colors_from(self, camera_center: torch.Tensor) -> torch.Tensor:
        """View-dependent colours ``[N, 3]`` seen from a camera centre ``[3]`` (clamped at 0 as 3DGS)."""
        coeffs = torch.cat([self.sh0[:, None], self.shN], dim=1)
        dirs = self.means - camera_center.to(self.means)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (eval_sh(self.sh_degree, coeffs, dirs) + 0.5).clamp_min(0.0)

    def to(self, device: torch.device | str) -> Gaussians:
        return Gaussians(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})

    def subset(self, index: torch.Tensor) -> Gaussians:
        """The Gaussians selected by a boolean mask ``[N]`` or an index tensor ``[M]`` (order kept)."""
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool and index.shape != (len(self),):
            raise ValueError(f"subset mask must be [{len(self)}], got {list(index.shape)}")
        return replace(
            self,
            **{k: v[index] for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)},
        )

    def covariances(self) -> torch.Tensor:  # [N, 3, 3]
        R = quat_to_rotmat(self.quats)
        M = R * self.scales[:, None, :]
        return M @ M.transpose(-1, -2)
