"""The camera convention every scene, format reader and extractor shares."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

__all__ = ["Camera"]


@dataclass
class Camera:
    """A pinhole camera in OpenCV axes (x right, y down, z forward), as gsplat takes it.

    Args:
        viewmat: ``[4, 4]`` float world-to-camera transform.
        K: ``[3, 3]`` float intrinsics in pixels; pixel centres sit at ``+0.5``.
        width: image width in pixels.
        height: image height in pixels.
        name: the image this camera belongs to (file stem), used to match images and outputs.
    """

    viewmat: torch.Tensor  # [4, 4]
    K: torch.Tensor  # [3, 3]
    width: int
    height: int
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.viewmat = torch.as_tensor(self.viewmat, dtype=torch.float32)
        self.K = torch.as_tensor(self.K, dtype=torch.float32)
        if self.viewmat.shape != (4, 4):
            raise ValueError(f"Camera {self.name!r}: viewmat must be [4,4], got {list(self.viewmat.shape)}")
        if self.K.shape != (3, 3):
            raise ValueError(f"Camera {self.name!r}: K must be [3,3], got {list(self.K.shape)}")
        self.width, self.height = int(self.width), int(self.height)

    @property
    def camtoworld(self) -> torch.Tensor:  # [4, 4]
        return torch.linalg.inv(self.viewmat)

    @property
    def center(self) -> torch.Tensor:  # [3]
        return self.camtoworld[:3, 3]

    def to(self, device: torch.device | str) -> Camera:
        return replace(self, viewmat=self.viewmat.to(device), K=self.K.to(device))

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera rendering at another resolution (intrinsics rescaled)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[0] *= sx
        K[1] *= sy
        return replace(self, K=K, width=width, height=height)
