"""What the Gaussian-Splatting scene backends (``torch``, ``gsplat``) share."""

from __future__ import annotations

from pathlib import Path

import torch

from fulcra.camera import Camera
from fulcra.engine import select_device

from .gaussians import Gaussians

__all__ = ["GaussianScene"]


class GaussianScene:
    """A 3D Gaussian Splatting scene that renders arbitrary per-Gaussian features.

    Subclasses implement :meth:`render` (and optionally a fused ``render_adjoint``; without one
    :func:`fulcra.uplift.adjoint` goes through autograd); everything else (RGB from spherical
    harmonics, alpha, subsets, saving: the optional protocols ``RGBScene``, ``AlphaScene`` and
    ``EditableScene`` of :mod:`fulcra.interfaces`) is shared. Rendering follows 3DGS "classic"
    rasterisation as gsplat does it (see ``docs/scenes.md``).

    Attributes:
        gaussians: the :class:`Gaussians` (on :attr:`device`).
        num_primitives: ``N``.
        source: the PLY the scene came from, if any.
    """

    def __init__(self, ply: str = "", device: str = "auto"):
        self.device = select_device(device)
        self.source: Path | None = None
        self.gaussians: Gaussians | None = None
        if ply:
            from .ply import read_ply

            self.source = Path(ply).expanduser()
            self.gaussians = read_ply(self.source, device=self.device)

    @classmethod
    def from_gaussians(cls, gaussians: Gaussians, **options) -> GaussianScene:
        """Build the scene around in-memory :class:`Gaussians` (``options`` as the constructor's)."""
        scene = cls(ply="", **options)
        scene.gaussians = gaussians.to(scene.device)
        return scene

    def _options(self) -> dict:
        return {"device": str(self.device)}

    # ------------------------------------------------------------------ the SceneRepresentation API
    @property
    def num_primitives(self) -> int:
        self._require()
        return len(self.gaussians)

    @property
    def positions(self) -> torch.Tensor:  # [N, 3]
        self._require()
        return self.gaussians.means

    def render(self, features: torch.Tensor, camera: Camera) -> torch.Tensor:
        """Alpha-composite per-Gaussian features.

        Args:
            features: ``[N, D]`` float32 (any ``D``), on :attr:`device`.
            camera: the view.
        Returns:
            ``[H, W, D]`` float32, linear in ``features`` and differentiable with respect to them.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------ conveniences
    def render_rgb(self, camera: Camera) -> torch.Tensor:
        """The scene's own colours (spherical harmonics evaluated for this camera): ``[H, W, 3]``."""
        self._require()
        with torch.no_grad():
            colors = self.gaussians.colors_from(camera.center.to(self.device))
            return self.render(colors, camera)

    def render_alpha(self, camera: Camera) -> torch.Tensor:
        """Accumulated opacity ``[H, W]`` (rendering a constant feature 1)."""
        with torch.no_grad():
            return self.render(torch.ones(self.num_primitives, 1, device=self.device), camera)[..., 0]

    def subset(self, index: torch.Tensor) -> GaussianScene:
        """A scene of the same backend keeping the Gaussians of a boolean mask or index ``[M]``."""
        self._require()
        scene = type(self).from_gaussians(
            self.gaussians.subset(torch.as_tensor(index, device=self.device)), **self._options()
        )
        scene.source = None
        return scene

    def save_ply(self, path: str | Path) -> Path:
        from .ply import write_ply

        self._require()
        return write_ply(self.gaussians, path)

    def _require(self) -> None:
        if self.gaussians is None:
            from fulcra.errors import ConfigError

            raise ConfigError(f"{type(self).__name__}: no Gaussians loaded; pass ply=PATH or use from_gaussians()")

    def _check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[0] != self.num_primitives:
            raise ValueError(f"features must be [N={self.num_primitives}, D], got {list(features.shape)}")

    def __repr__(self) -> str:
        n = len(self.gaussians) if self.gaussians is not None else 0
        return f"{type(self).__name__}(N={n}, device={self.device}, source={self.source})"
