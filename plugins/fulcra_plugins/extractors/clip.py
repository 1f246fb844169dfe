"""``clip``: multi-resolution CLIP feature maps, text embeddings and LERF relevancy (§5.4.2, Eq. C.2).

Feature maps follow LERF / FMGS as the thesis does: CLIP image embeddings of a grid of overlapping
crops at several scales, each crop's embedding spread over its window, windows averaged per pixel
within a scale and the scales averaged (simple average pooling, Zuo et al. 2024). The relevancy of
Eq. C.2 works on any ``[..., D]`` features: 2D maps or per-Gaussian uplifted features alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from fulcra.weights import file_identity

from .common import BaseExtractor, aggregate_windows, sliding_windows

__all__ = ["CLIPExtractor", "relevancy", "relevancy_reference", "CANONICAL_PHRASES"]

CANONICAL_PHRASES = ("object", "things", "stuff", "texture")
VARIANTS = ("vitb16", "vitl14")


def relevancy(
    features: torch.Tensor,
    queries: torch.Tensor,
    canonical: torch.Tensor,
    temperature: float = 10.0,
    normalize: bool = True,
    channel_dim: int = -1,
) -> torch.Tensor:
    """LERF relevancy (Eq. C.2): ``r_q = min_k exp(T f·φ_q) / (exp(T f·φ_q) + exp(T f·φ_k))``.

    Computed stably as ``sigmoid(T (f·φ_q − max_k f·φ_k))`` (each ratio is ``sigmoid(T(f·φ_q − f·φ_k))``
    and the sigmoid is increasing, so the min over ``k`` is reached at the largest ``f·φ_k``).

    Args:
        features: ``[..., D]`` (or ``D`` along ``channel_dim``, e.g. ``1`` for maps ``[B, D, h, w]``):
            2D CLIP maps or uplifted per-Gaussian features.
        queries: ``[Q, D]`` text embeddings of the queries.
        canonical: ``[K, D]`` text embeddings of the canonical phrases (:data:`CANONICAL_PHRASES`).
        temperature: ``T`` (10 in LERF and the thesis).
        normalize: L2-normalise features and embeddings first (averaged or uplifted features are not
            unit-norm; CLIP similarities are cosines).
        channel_dim: the axis of ``features`` holding ``D``; the output has ``Q`` on that axis.

    Returns:
        relevancies in [0, 1], ``features`` shape with ``D`` replaced by ``Q``; increasing in
        ``f·φ_q``; float32.
    """
    f = features.movedim(channel_dim, -1).float()
    q, c = queries.float().to(f.device), canonical.float().to(f.device)
    if normalize:
        f, q, c = F.normalize(f, dim=-1), F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    sq = f @ q.T  # [..., Q]
    sc = (f @ c.T).amax(-1, keepdim=True)  # [..., 1]
    return torch.sigmoid(temperature * (sq - sc)).movedim(-1, channel_dim)


def relevancy_reference(
    features: torch.Tensor, queries: torch.Tensor, canonical: torch.Tensor, temperature: float = 10.0
) -> torch.Tensor:
    """Eq. C.2 written literally (float64, exponentials, min over k), ``features`` ``[N, D]`` -> ``[N, Q]``;
    the slow reference :func:`relevancy` is tested against."""
    f = F.normalize(features.double(), dim=-1)
    q = F.normalize(queries.double(), dim=-1)
    c = F.normalize(canonical.double(), dim=-1)
    eq = torch.exp(temperature * f @ q.T)  # [N, Q]
    ec = torch.exp(temperature * f @ c.T)  # [N, K]
    ratios = eq[:, :, None] / (eq[:, :, None] + ec[:, None, :])  # [N, Q, K]
    return ratios.min(-1).values


class CLIPExtractor(BaseExtractor):
    """Multi-resolution CLIP feature maps in the joint image-text space (open_clip).

    ``mode="crops"`` (the thesis, §5.4.2): on an output grid whose short side is ``grid`` cells,
    square windows of ``scale × grid`` cells at each scale in ``scales``, overlapping by ``overlap``
    (the last aligned to the border); the image region under each window is resized to CLIP's input
    size and embedded (L2-normalised); each pixel averages the windows covering it within a scale,
    then the scales are averaged. ``mode="dense"``: one pass of MaskCLIP dense patch embeddings per
    image resized to a short side of ``dense_resolution`` pixels (much cheaper, coarser semantics),
    upsampled bilinearly to the output grid.

    Args:
        variant: ``vitb16`` (thesis: OpenCLIP ViT-B/16) or ``vitl14``.
        weights: local open_clip weights (``open_clip_model.safetensors`` or ``.bin``); ``None``
            looks in the caches (``$FULCRA_WEIGHTS_DIR``, ``~/.cache/fulcra/weights``, HF cache).
        tiny: a small random CLIP (tests, offline demos; deterministic, seed 0).
        mode: ``crops`` or ``dense``.
        scales: window sides as fractions of the image's short side.
        overlap: fraction of a window shared with its neighbour (0.5: stride = half a window).
        grid: short side of the output map in cells.
        dense_resolution: short side of the image for ``mode="dense"`` (rounded to patches).
        canonical_phrases: the negatives of the relevancy (Eq. C.2).
        temperature: relevancy temperature ``T``.
        device, batch_size (crops per forward), cache_dir, progress: see ``BaseExtractor``.

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] -> ``[B, E, h, w]`` float32, ``min(h, w) = grid``, ``E`` the
        joint embedding size (512 for ViT-B/16).
    """

    name = "clip"
    #: tiny settings for the catalogue's conformance test (tests/core/test_catalogue.py)
    conformance_params = {"tiny": True, "grid": 4, "scales": [0.5, 1.0]}

    def __init__(
        self,
        variant: str = "vitb16",
        weights: str | None = None,
        tiny: bool = False,
        mode: str = "crops",
        scales: list[float] | None = None,
        overlap: float = 0.5,
        grid: int = 64,
        dense_resolution: int = 448,
        canonical_phrases: list[str] | None = None,
        temperature: float = 10.0,
        device: str = "cpu",
        batch_size: int = 64,
        cache_dir: str | None = None,
        progress: bool = False,
    ):
        from fulcra.errors import ConfigError

        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        if variant not in VARIANTS:
            raise ConfigError(f"clip: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if mode not in ("crops", "dense"):
            raise ConfigError(f"clip: mode must be 'crops' or 'dense', got {mode!r}")
        scales = [0.1, 0.2, 0.3, 0.5] if scales is None else [float(s) for s in scales]
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ConfigError(f"clip: scales must be fractions in (0, 1], got {scales}")
        if not 0 <= overlap < 1 or grid < 1:
            raise ConfigError(f"clip: overlap must be in [0, 1) and grid >= 1, got {overlap}, {grid}")
        from fulcra.backbone import create_backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.backbone = create_backbone(
                f"clip_{variant}",
                weights=weights,
                tiny=tiny,
                device=self.device,
                owner="feature_extractors plugin 'clip'",
            )
        self.backbone.requires_grad_(False)
        self.variant, self.weights, self.tiny, self.mode = variant, weights, bool(tiny), mode
        self.scales, self.overlap, self.grid = scales, float(overlap), int(grid)
        self.dense_resolution = int(dense_resolution)
        self.canonical_phrases = list(canonical_phrases or CANONICAL_PHRASES)
        self.temperature = float(temperature)
        self.dim = self.backbone.clip_embed_dim
        visual = self.backbone.model.visual
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._canonical: torch.Tensor | None = None

    def cache_params(self) -> dict:
        return {
            "name": self.name,
            "variant": self.variant,
            "weights": file_identity(self.weights),
            "tiny": self.tiny,
            "mode": self.mode,
            "scales": self.scales,
            "overlap": self.overlap,
            "grid": self.grid,
            **({"dense_resolution": self.dense_resolution} if self.mode == "dense" else {}),
        }

    # ------------------------------------------------------------------------------ geometry
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Output map size for an ``height x width`` image."""
        s = self.grid / min(height, width)
        return max(self.grid, round(height * s)), max(self.grid, round(width * s))

    def windows(self, height: int, width: int) -> dict[float, list[tuple[int, int, int, int]]]:
        """Windows per scale on the output grid, ``{scale: [(y0, x0, y1, x1), ...]}``."""
        gh, gw = self.grid_size(height, width)
        out = {}
        for s in self.scales:
            win = max(1, round(s * self.grid))
            stride = max(1, round(win * (1 - self.overlap)))
            out[s] = sliding_windows(gh, gw, win, stride)
        return out

    # ------------------------------------------------------------------------------ features
    def _embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``[n, 3, S, S]`` in [0, 1] -> ``[n, E]`` unit-norm image embeddings, ``batch_size`` at a time."""
        outs = []
        for s in range(0, crops.shape[0], self.batch_size):
            x = self.backbone.normalize(crops[s : s + self.batch_size])
            outs.append(F.normalize(self.backbone.encode_image(x).float(), dim=-1))
        return torch.cat(outs)

    def forward_batch(self, images: torch.Tensor) -> torch.Tensor:  # images: [b, 3, H, W]
        H, W = images.shape[-2:]
        gh, gw = self.grid_size(H, W)
        if self.mode == "dense":
            p = self.backbone.patch_size
            s = self.dense_resolution / min(H, W)
            th, tw = max(1, round(H * s / p)), max(1, round(W * s / p))  # token grid
            x = F.interpolate(images, size=(th * p, tw * p), mode="bilinear", align_corners=False, antialias=True)
            outs = [
                self.backbone.patch_embeddings(self.backbone.normalize(x[i : i + 1])).float() for i in range(x.shape[0])
            ]
            dense = F.interpolate(torch.cat(outs), size=(gh, gw), mode="bilinear", align_corners=False)
            return F.normalize(dense, dim=1)
        sy, sx = H / gh, W / gw  # image pixels per grid cell
        S = self.input_size
        maps = []
        for img in images:
            per_scale = []
            for boxes in self.windows(H, W).values():
                crops = []
                for y0, x0, y1, x1 in boxes:
                    py0, py1 = int(round(y0 * sy)), max(int(round(y1 * sy)), int(round(y0 * sy)) + 1)
                    px0, px1 = int(round(x0 * sx)), max(int(round(x1 * sx)), int(round(x0 * sx)) + 1)
                    crop = img[:, py0:py1, px0:px1][None]
                    crops.append(
                        F.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False, antialias=True)[0]
                    )
                emb = self._embed_crops(torch.stack(crops))  # [n, E]
                per_scale.append(aggregate_windows(emb[:, :, None, None], boxes, (gh, gw), mode="nearest"))
            maps.append(torch.stack(per_scale).mean(0))
        return torch.stack(maps)

    # ------------------------------------------------------------------------------ text
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``T`` strings -> ``[T, E]`` unit-norm text embeddings (float32, on ``self.device``)."""
        if isinstance(texts, str):
            texts = [texts]
        with torch.no_grad():  # not inference_mode: outputs feed autograd-based uplifting
            return F.normalize(self.backbone.encode_text(list(texts)).float(), dim=-1)

    def canonical_embeddings(self) -> torch.Tensor:
        """``[K, E]`` embeddings of the canonical phrases (computed once)."""
        if self._canonical is None:
            self._canonical = self.embed_text(self.canonical_phrases)
        return self._canonical

    def relevancy(
        self, features: torch.Tensor, queries: Sequence[str] | torch.Tensor, channel_dim: int = -1
    ) -> torch.Tensor:
        """Relevancy (Eq. C.2) of ``features`` (``[..., E]``, or maps with ``channel_dim=1``) to text
        ``queries`` (strings or ``[Q, E]`` embeddings) against the canonical phrases; in [0, 1]."""
        q = queries if isinstance(queries, torch.Tensor) else self.embed_text(queries)
        return relevancy(features, q, self.canonical_embeddings(), self.temperature, channel_dim=channel_dim)
