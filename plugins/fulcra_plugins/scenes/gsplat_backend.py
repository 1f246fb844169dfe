"""The ``gsplat`` scene backend: gsplat's CUDA rasteriser with N-D features.

``gsplat.rasterization`` in its ``classic`` mode is the reference of the conventions the ``torch``
backend reproduces (eps2d 0.3, near plane 0.01, pixel centres +0.5, 1/255 alpha cut, 1e-4
transmittance stop), so both backends render the same images up to float rounding and gsplat's
tile culling at 3 sigma. Features of any dimension are rendered ``channel_chunk`` channels at a
time (gsplat pads each chunk to a supported width); the adjoint is autograd through gsplat's
backward kernel.
"""

from __future__ import annotations

import torch

from fulcra.camera import Camera
from fulcra.errors import ConfigError, MissingDependencyError

from .base import GaussianScene

__all__ = ["GsplatScene"]


def _gsplat():
    try:
        import gsplat
    except ImportError as exc:
        raise MissingDependencyError("the gsplat scene backend needs gsplat (CUDA): pip install 'fulcra[gsplat]'", extra="gsplat") from exc
    return gsplat


class GsplatScene(GaussianScene):
    """3D Gaussian Splatting scene rendered with gsplat's CUDA kernels (``rasterize_mode="classic"``).

    Renders ``[N, D]`` features for any ``D`` (chunked over channels), differentiable with respect
    to them, so ``fulcra.uplift`` applies. Needs CUDA and ``pip install 'fulcra[gsplat]'``.

    Args:
        ply: a 3DGS ``point_cloud.ply`` (empty: use :meth:`from_gaussians`; ``synthetic[:DENSITY]``:
            the embedded synthetic scene built in memory).
        device: a CUDA device (``auto`` picks ``cuda``).
        channel_chunk: channels rasterised per gsplat call.
        packed: gsplat's packed mode (less memory for large scenes).
    """

    conformance_params = {"ply": "synthetic:0.05", "device": "cuda"}

    def __init__(self, ply: str = "", device: str = "auto", channel_chunk: int = 64, packed: bool = False):
        self._gs = _gsplat()
        if not torch.cuda.is_available():
            raise ConfigError("scenes 'gsplat': CUDA is not available; use the 'torch' backend on CPU")
        super().__init__(ply=ply, device=device)
        if self.device.type != "cuda":
            raise ConfigError(f"scenes 'gsplat': device must be cuda, got {self.device}")
        self.channel_chunk, self.packed = int(channel_chunk), bool(packed)

    def _options(self) -> dict:
        return {"device": str(self.device), "channel_chunk": self.channel_chunk, "packed": self.packed}

    def render(self, features: torch.Tensor, camera: Camera) -> torch.Tensor:
        self._check_features(features)
        g = self.gaussians
        kwargs = dict(
            means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities,
            colors=features.to(self.device, torch.float32),
            viewmats=camera.viewmat.to(self.device)[None], Ks=camera.K.to(self.device)[None],
            width=camera.width, height=camera.height, near_plane=0.01, far_plane=1e10, eps2d=0.3,
            sh_degree=None, packed=self.packed, rasterize_mode="classic", channel_chunk=self.channel_chunk,
            render_mode="RGB",
        )
        out, _, _ = self._gs.rasterization(**{k: v for k, v in kwargs.items() if k in self._accepted})
        return out[0]

    @property
    def _accepted(self) -> set:
        # keyword arguments differ across gsplat releases (channel_chunk appeared in 1.0)
        if not hasattr(self, "_accepted_cache"):
            import inspect

            self._accepted_cache = set(inspect.signature(self._gs.rasterization).parameters)
        return self._accepted_cache
