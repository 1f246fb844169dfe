"""PCA visualisation of uplifted features (Fig. 5.3): the first three principal components of the
per-Gaussian features as RGB, rendered from any camera."""

from __future__ import annotations

from pathlib import Path

import torch

from fulcra.camera import Camera

__all__ = ["pca_colors", "render_pca", "save_png"]


def pca_colors(
    features: torch.Tensor, weights: torch.Tensor | None = None, max_samples: int = 200_000, seed: int = 0
) -> torch.Tensor:
    """Per-Gaussian RGB from the first three principal components of ``features``.

    The PCA basis is fitted on Gaussians that some view sees (``weights > 0``), subsampled for
    speed; each component is mapped to [0, 1] by its 1st-99th percentile range.

    Args:
        features: ``[N, D]``.
        weights: ``[N]`` weight sums (Gaussians with 0 are ignored in the fit), optional.
    Returns:
        ``[N, 3]`` float in [0, 1] (fewer than 3 dimensions are padded with 0.5).
    """
    f = features.float()
    seen = torch.nonzero(weights > 0).squeeze(1) if weights is not None else torch.arange(f.shape[0], device=f.device)
    if seen.numel() == 0:
        return torch.full((f.shape[0], 3), 0.5, device=f.device)
    if seen.numel() > max_samples:
        g = torch.Generator().manual_seed(seed)
        seen = seen[torch.randperm(seen.numel(), generator=g)[:max_samples].to(seen.device)]
    x = f[seen]
    mean = x.mean(0)
    k = min(3, f.shape[1])
    _, _, V = torch.linalg.svd(x - mean, full_matrices=False)
    proj = (f - mean) @ V[:k].T  # [N, k]
    q = torch.quantile(proj[seen][:100_000], torch.tensor([0.01, 0.99], device=f.device), dim=0)
    rgb = ((proj - q[0]) / (q[1] - q[0]).clamp_min(1e-8)).clamp(0, 1)
    if k < 3:
        rgb = torch.cat([rgb, torch.full((f.shape[0], 3 - k), 0.5, device=f.device)], 1)
    return rgb


def save_png(image: torch.Tensor, path: str | Path, min_width: int = 0) -> Path:
    """Save ``[H, W, 3]`` (or ``[H, W]``) float in [0, 1] as an 8-bit PNG.

    ``min_width``: for images a person looks at (PCA renders, overlays), enlarge by the smallest
    integer factor that reaches this width, nearest neighbour (pixels stay pixels); 0 keeps the size
    (data such as masks must keep the camera's)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    im = Image.fromarray(arr)
    if min_width and im.width < min_width:
        f = -(-min_width // im.width)
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    im.save(path)
    return path


def render_pca(
    scene,
    features: torch.Tensor,
    camera: Camera,
    weights: torch.Tensor | None = None,
    path: str | Path | None = None,
    colors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render the PCA colours of ``features [N, D]`` from ``camera``: ``[H, W, 3]``; saved as PNG if ``path``.

    Pass precomputed ``colors`` (from :func:`pca_colors`) to keep the colouring identical across views.
    """
    if colors is None:
        colors = pca_colors(features, weights)
    with torch.no_grad():
        img = scene.render(colors.to(getattr(scene, "device", None) or colors.device), camera)
    if path is not None:
        save_png(img, path, min_width=480)  # for a person: enlarged, nearest neighbour
    return img
