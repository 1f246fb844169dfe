"""``clip``: multi-resolution CLIP feature maps, text embeddings and LERF relevancy (§5.4.2, Eq. C.2).

Feature maps follow LERF / FMGS as the thesis does: CLIP image embeddings of a grid of overlapping
patches at several scales, aggregated by a simple average over the scales (Zuo et al. 2024). The
default ``mode="tiles"`` builds them as the official LUDVIG code does (``predictors/clip.py``): at 7
scales from 5% to 50% of the image height, zero-padded tiles, each scale's grid of embeddings
upsampled bilinearly to full resolution, the scales summed and L2-normalised per pixel. The
relevancy of Eq. C.2 works on any ``[..., D]`` features: 2D maps or per-Gaussian uplifted features.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fulcra.weights import file_identity

from .common import BaseExtractor, aggregate_windows, as_float_images, sliding_windows

__all__ = [
    "CLIPExtractor",
    "relevancy",
    "relevancy_reference",
    "CANONICAL_PHRASES",
    "OFFICIAL_SCALES",
    "official_stride_ratios",
    "tile_grid",
]

CANONICAL_PHRASES = ("object", "things", "stuff", "texture")
#: extractor variant -> backbone plugin; ``vitb16_laion2b`` is the official code's OpenCLIP model
VARIANTS = {"vitb16_laion2b": "clip_vitb16_laion2b", "vitb16": "clip_vitb16", "vitl14": "clip_vitl14"}
#: tile sides as fractions of the image height: ``np.linspace(0.05, 0.5, 7)`` (predictors/clip.py)
OFFICIAL_SCALES: tuple[float, ...] = tuple(float(r) for r in np.linspace(0.05, 0.5, 7))
MODES = ("tiles", "crops", "dense")


def official_stride_ratios(scales: Sequence[float]) -> list[float]:
    """Tile stride as a fraction of the tile side, per scale: ``np.interp(scale, [0.05, 0.15], [1, 0.5])``
    (predictors/clip.py, after LERF): no overlap at 5%, half a tile from 15% on."""
    return [float(r) for r in np.interp(np.asarray(scales, dtype=np.float64), [0.05, 0.15], [1.0, 0.5])]


def tile_grid(height: int, width: int, scale: float, stride_ratio: float) -> tuple[int, int, int, int, int]:
    """Geometry of one scale's tiles on an ``height x width`` image, as ``torch.nn.Unfold`` with zero
    padding cuts them in the official code: tile side ``k = int(scale * height)``, stride
    ``s = int(k * stride_ratio)``, padding ``k // 2`` on every side.

    Returns:
        ``(k, s, pad, rows, cols)``; tile ``(i, j)`` covers rows ``[i s - pad, i s - pad + k)`` and
        columns ``[j s - pad, j s - pad + k)`` of the image (outside it: zeros).
    """
    k = max(1, int(scale * height))
    s = max(1, int(k * stride_ratio))
    pad = k // 2
    rows = (height + 2 * pad - k) // s + 1
    cols = (width + 2 * pad - k) // s + 1
    return k, s, pad, rows, cols


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

    ``mode="tiles"`` (default; the official code, ``predictors/clip.py``): for each scale ``r`` in
    ``scales``, square tiles of side ``k = int(r H)`` pixels every ``int(k · stride_ratio)`` pixels
    over the image zero-padded by ``k // 2`` (so border tiles hang over the image and see black);
    each tile is resized to CLIP's input size (bilinear, antialiased) and embedded (L2-normalised);
    the ``rows x cols`` grid of embeddings, its last row and column repeated, is upsampled bilinearly
    to the output size; the scales are summed and each pixel L2-normalised. ``grid=None`` outputs the
    image's full resolution; an int gives a map with ``grid`` cells on the short side (the same
    construction upsampled to fewer pixels: memory). The per-tile embeddings are what is cached.

    ``mode="crops"`` (fulcra's former default): on an output grid whose short side is ``grid`` cells
    (64 when ``None``), windows of ``scale × grid`` cells, overlapping by ``overlap`` (0.5 when
    ``None``), cut from the image (no padding); each pixel averages the windows covering it within a
    scale, then the scales are averaged. ``mode="dense"``: one pass of MaskCLIP dense patch
    embeddings per image resized to a short side of ``dense_resolution`` pixels (much cheaper,
    coarser semantics), upsampled bilinearly to the output grid (64 cells when ``None``).

    Args:
        variant: ``vitb16_laion2b`` (OpenCLIP ViT-B/16, ``laion2b_s34b_b88k``: the official code),
            ``vitb16`` (OpenAI's ViT-B/16) or ``vitl14`` (OpenAI's ViT-L/14).
        weights: local open_clip weights (``open_clip_pytorch_model.bin`` or ``.safetensors``);
            ``None`` looks in the caches (``$FULCRA_WEIGHTS_DIR``, ``~/.cache/fulcra/weights``, the HF
            cache, where open_clip itself keeps them). Never downloads.
        tiny: a small random CLIP (tests, offline demos; deterministic, seed 0).
        mode: ``tiles``, ``crops`` or ``dense``.
        scales: tile sides as fractions of the image height (``tiles``; default
            :data:`OFFICIAL_SCALES`, ``linspace(0.05, 0.5, 7)``) or window sides as fractions of the
            grid's short side (``crops``; default ``[0.1, 0.2, 0.3, 0.5]``).
        overlap: fraction of a tile shared with its neighbour, the same at every scale. ``None``:
            ``tiles`` uses :func:`official_stride_ratios` (stride = tile at 5%, half a tile from 15%),
            ``crops`` 0.5.
        grid: short side of the output map in cells; ``None``: full resolution (``tiles``), 64
            (``crops``, ``dense``).
        dense_resolution: short side of the image for ``mode="dense"`` (rounded to patches).
        canonical_phrases: the negatives of the relevancy (Eq. C.2).
        temperature: relevancy temperature ``T``.
        device, batch_size (tiles or crops per forward), cache_dir, progress: see ``BaseExtractor``.

    Shape:
        ``[B, 3, H, W]`` float in [0, 1] -> ``[B, E, h, w]`` float32, ``(h, w) = (H, W)`` or
        ``min(h, w) = grid``, ``E`` the joint embedding size (512 for ViT-B/16).
    """

    name = "clip"
    #: tiny settings for the catalogue's conformance test (tests/core/test_catalogue.py)
    conformance_params = {"tiny": True, "grid": 4, "scales": [0.5, 1.0]}

    def __init__(
        self,
        variant: str = "vitb16_laion2b",
        weights: str | None = None,
        tiny: bool = False,
        mode: str = "tiles",
        scales: list[float] | None = None,
        overlap: float | None = None,
        grid: int | None = None,
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
        if mode not in MODES:
            raise ConfigError(f"clip: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if scales is None:
            scales = list(OFFICIAL_SCALES) if mode == "tiles" else [0.1, 0.2, 0.3, 0.5]
        scales = [float(s) for s in scales]
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ConfigError(f"clip: scales must be fractions in (0, 1], got {scales}")
        if overlap is not None and not 0 <= overlap < 1:
            raise ConfigError(f"clip: overlap must be in [0, 1), got {overlap}")
        if grid is not None and grid < 1:
            raise ConfigError(f"clip: grid must be >= 1 (or null: full resolution), got {grid}")
        from fulcra.backbone import create_backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.backbone = create_backbone(
                VARIANTS[variant],
                weights=weights,
                tiny=tiny,
                device=self.device,
                owner="feature_extractors plugin 'clip'",
            )
        self.backbone.requires_grad_(False)
        self.variant, self.weights, self.tiny, self.mode = variant, weights, bool(tiny), mode
        self.scales = scales
        self.overlap = None if overlap is None else float(overlap)
        self.grid = None if grid is None else int(grid)
        if mode != "tiles" and self.grid is None:
            self.grid = 64
        if mode == "crops" and self.overlap is None:
            self.overlap = 0.5
        #: tile stride / tile side per scale (``tiles``)
        self.stride_ratios = (
            official_stride_ratios(scales) if self.overlap is None else [1.0 - self.overlap] * len(scales)
        )
        self.dense_resolution = int(dense_resolution)
        self.canonical_phrases = list(canonical_phrases or CANONICAL_PHRASES)
        self.temperature = float(temperature)
        self.dim = self.backbone.clip_embed_dim
        visual = self.backbone.model.visual
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._canonical: torch.Tensor | None = None

    def cache_params(self) -> dict:
        common = {"name": self.name, "variant": self.variant, "weights": file_identity(self.weights), "tiny": self.tiny}
        if self.mode == "tiles":  # the tile embeddings are cached; the output size is applied after
            return {**common, "mode": "tiles", "scales": self.scales, "stride_ratios": self.stride_ratios}
        return {
            **common,
            "mode": self.mode,
            "scales": self.scales,
            "overlap": self.overlap,
            "grid": self.grid,
            **({"dense_resolution": self.dense_resolution} if self.mode == "dense" else {}),
        }

    # ------------------------------------------------------------------------------ geometry
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Output map size for an ``height x width`` image (``(height, width)`` when ``grid`` is None)."""
        if self.grid is None:
            return height, width
        s = self.grid / min(height, width)
        return max(self.grid, round(height * s)), max(self.grid, round(width * s))

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int, int, int]]:
        """``mode="tiles"``: per scale, ``(k, stride, pad, rows, cols)`` (see :func:`tile_grid`)."""
        return [tile_grid(height, width, r, q) for r, q in zip(self.scales, self.stride_ratios)]

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

    def _tile_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` -> ``[b, n_tiles, E]``: unit-norm embeddings of every scale's tiles, row-major
        per scale, the scales one after the other."""
        H, W = images.shape[-2:]
        S = self.input_size
        out = []
        for img in images:
            per_scale = []
            for k, s, pad, rows, cols in self.tiles(H, W):
                padded = F.pad(img, (pad, pad, pad, pad))  # zeros: black tiles beyond the border
                view = padded.unfold(1, k, s).unfold(2, k, s)[:, :rows, :cols]  # [3, rows, cols, k, k]
                flat = view.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, k, k)
                embs = []
                for a in range(0, flat.shape[0], self.batch_size):
                    t = F.interpolate(
                        flat[a : a + self.batch_size], size=(S, S), mode="bilinear", align_corners=False, antialias=True
                    )
                    embs.append(F.normalize(self.backbone.encode_image(self.backbone.normalize(t)).float(), dim=-1))
                per_scale.append(torch.cat(embs))
            out.append(torch.cat(per_scale))
        return torch.stack(out)

    def assemble(self, tiles: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[n_tiles, E]`` tile embeddings of an ``height x width`` image -> ``[E, h, w]`` map: each
        scale's grid (last row and column repeated, as the official code) upsampled bilinearly to the
        output size, summed over scales, L2-normalised per pixel."""
        h, w = self.grid_size(height, width)
        acc = torch.zeros(tiles.shape[-1], h, w, device=tiles.device)
        start = 0
        for _, _, _, rows, cols in self.tiles(height, width):
            g = tiles[start : start + rows * cols].T.reshape(-1, rows, cols)  # [E, rows, cols]
            start += rows * cols
            g = torch.cat([g, g[:, -1:]], 1)
            g = torch.cat([g, g[:, :, -1:]], 2)  # [E, rows + 1, cols + 1]
            acc += aggregate_windows(g[None], [(0, 0, h, w)], (h, w))  # separable bilinear, = F.interpolate
        return F.normalize(acc, dim=0)

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Feature maps ``[B, E, h, w]`` float32 on the device of ``images`` (see class doc)."""
        if self.mode != "tiles":
            return super().__call__(images, **kwargs)
        if kwargs:
            raise TypeError(f"{self.name}: unexpected arguments {sorted(kwargs)}")
        images = as_float_images(images)
        H, W = images.shape[-2:]
        n_tiles = sum(rows * cols for *_, rows, cols in self.tiles(H, W))
        tiles = self._run_cached(
            "tiles", images, self._tile_embeddings, {}, images_per_batch=max(1, self.batch_size // n_tiles)
        )
        return torch.stack([self.assemble(t.to(self.device), H, W).to(images.device) for t in tiles])

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
