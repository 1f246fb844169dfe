"""``sam``: mask maps from point prompts drawn among positive pixels (thesis app. C.1.1).

Given an image and a set of positive pixels, ``n_repeats`` times draw ``n_points`` point prompts
among them, predict a mask with SAM, and average the masks: the "SAM feature map" of a view that
LUDVIG uplifts. :class:`PromptedMaskExtractor` holds what SAM and SAM 2 share (prompt sampling,
mask choice, averaging); the subclasses only embed images and decode prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from fulcra.weights import file_identity, find_weights, load_state_dict_file
from fulcra.weights import weights_dirs as _weights_dirs

from .common import BaseExtractor, as_float_images

__all__ = ["SAMExtractor", "PromptedMaskExtractor", "sample_prompts", "positive_points", "MASK_CHOICES"]

MASK_CHOICES = ("single", "best", "all", "0", "1", "2")

SAM_CHECKPOINTS = {
    "vit_h": ("sam_vit_h_4b8939.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    "vit_l": ("sam_vit_l_0b3195.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    "vit_b": ("sam_vit_b_01ec64.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
}


def weights_dirs() -> list[Path]:
    """Where a checkpoint given by file name only is looked for, in order (:func:`fulcra.weights.weights_dirs`)."""
    return _weights_dirs()


def find_checkpoint(plugin: str, weights: str | None, filename: str, url: str) -> Path:
    """``weights`` if given (must exist), else ``filename`` in :func:`weights_dirs`.

    Raises:
        WeightsNotFoundError: naming the file, where it comes from, and where to put it.
    """
    return find_weights(plugin, weights, files=(filename,), url=url)


def positive_points(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of a boolean mask ``[H, W]`` as ``[P, 2]`` (x, y) integer coordinates."""
    yx = torch.nonzero(mask.bool(), as_tuple=False)
    return yx.flip(-1)


def sample_prompts(points: torch.Tensor, n_points: int, n_repeats: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n_repeats`` sets of ``n_points`` prompts among ``points`` ``[P, 2]``.

    Each set holds distinct points when ``P >= n_points`` (otherwise all ``P`` points, repeated to
    ``n_points``); draws use ``generator`` only, so they are reproducible.

    Returns:
        ``[n_repeats, n_points, 2]`` rows of ``points``.
    """
    P = points.shape[0]
    if P == 0:
        raise ValueError("no positive pixels to draw point prompts from")
    sets = []
    for _ in range(n_repeats):
        idx = torch.randperm(P, generator=generator)[:n_points]
        if idx.numel() < n_points:
            idx = idx.repeat((n_points + idx.numel() - 1) // idx.numel())[:n_points]
        sets.append(points[idx])
    return torch.stack(sets)


class PromptedMaskExtractor(BaseExtractor):
    """Shared work of ``sam`` and ``sam2``: prompts -> averaged masks.

    Subclasses implement ``_embed(images [b,3,H,W] in [0,1]) -> per-image state`` and
    ``_decode(state, coords [R,n,2] float (x,y) pixels, labels [R,n], multimask) -> (logits
    [R,C,H,W], iou [R,C])`` and set ``mask_threshold``.
    """

    per_image_kwargs = ("prompts", "positive")
    mask_threshold = 0.0
    #: fulcra.testing's conformance check passes prompts to extractors that need them
    needs_prompts = True
    conformance_params = {"tiny": True, "n_repeats": 2}

    def _init_prompting(self, n_points: int, n_repeats: int, mask: str, binarize: bool, seed: int) -> None:
        from fulcra.errors import ConfigError

        if mask not in MASK_CHOICES:
            raise ConfigError(f"{self.name}: mask must be one of {', '.join(MASK_CHOICES)}, got {mask!r}")
        if n_points < 1 or n_repeats < 1:
            raise ConfigError(f"{self.name}: n_points and n_repeats must be >= 1")
        self.n_points, self.n_repeats, self.mask, self.binarize, self.seed = (
            int(n_points),
            int(n_repeats),
            mask,
            bool(binarize),
            int(seed),
        )
        self.dim = 3 if mask == "all" else 1

    def _prompt_params(self) -> dict:
        return {
            "n_points": self.n_points,
            "n_repeats": self.n_repeats,
            "mask": self.mask,
            "binarize": self.binarize,
            "seed": self.seed,
        }

    def __call__(
        self,
        images: torch.Tensor,
        prompts: Sequence[torch.Tensor] | None = None,
        positive: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Averaged masks for a batch.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1] (or uint8).
            prompts: per image, the positive pixels ``[P, 2]`` as (x, y) coordinates, or
            positive: ``[B, H, W]`` boolean masks of positive pixels, or a list of ``[H, W]`` masks
                (one of ``prompts`` / ``positive`` is required).

        Returns:
            ``[B, 1, H, W]`` (``[B, 3, H, W]`` with ``mask="all"``) float32 in [0, 1]: the fraction of
            the ``n_repeats`` predictions marking each pixel (or their mean probability when
            ``binarize=False``).
        """
        images = as_float_images(images)
        if prompts is None and positive is None:
            raise ValueError(
                f"{self.name}: give the positive pixels, prompts=[P,2] (x,y) per image or positive=[B,H,W] masks"
            )
        if prompts is None:
            if isinstance(positive, (list, tuple)):  # one [H, W] mask per image (iter_feature_maps)
                positive = torch.stack([torch.as_tensor(m) for m in positive])
            if positive.ndim == 4 and positive.shape[1] == 1:
                positive = positive[:, 0]
            if positive.shape[0] != images.shape[0] or positive.shape[-2:] != images.shape[-2:]:
                raise ValueError(
                    f"{self.name}: positive must be [B,H,W] = {[images.shape[0], *images.shape[-2:]]}, got {list(positive.shape)}"
                )
            prompts = [positive_points(m.cpu()) for m in positive]
        prompts = [torch.as_tensor(p).reshape(-1, 2).cpu() for p in prompts]
        return self._run_cached("features", images, self._masks_batch, {"prompts": prompts})

    def _masks_batch(self, images: torch.Tensor, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        H, W = images.shape[-2:]
        states = self._embed(images)
        out = []
        multimask = self.mask != "single"
        for state, pts in zip(states, prompts):
            if (pts[:, 0] < 0).any() or (pts[:, 0] >= W).any() or (pts[:, 1] < 0).any() or (pts[:, 1] >= H).any():
                raise ValueError(f"{self.name}: prompt outside the {W}x{H} image")
            # one generator per image seeded by `seed`: draws do not depend on the batch
            g = torch.Generator().manual_seed(self.seed)
            coords = sample_prompts(
                pts, self.n_points, self.n_repeats, g
            ).float()  # SAM adds the 0.5 of pixel centres itself
            labels = torch.ones(coords.shape[:2], dtype=torch.int64)
            logits, iou = self._decode(
                state, coords.to(self.device), labels.to(self.device), multimask
            )  # [R,C,H,W], [R,C]
            if self.mask == "best":
                logits = logits[torch.arange(logits.shape[0]), iou.argmax(1)][:, None]
            elif self.mask in ("0", "1", "2"):
                logits = logits[:, int(self.mask)][:, None]
            m = (logits > self.mask_threshold).float() if self.binarize else torch.sigmoid(logits.float())
            out.append(m.mean(0))
        return torch.stack(out)

    def _embed(self, images: torch.Tensor) -> list:
        raise NotImplementedError

    def _decode(
        self, state: Any, coords: torch.Tensor, labels: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def build_tiny_sam():
    """A small randomly initialised SAM (same classes as the official builder; seed 0): image encoder
    ViT of width 32 and depth 2 on 64x64 inputs, prompt dim 32. For tests and offline demos."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img, patch, dim = 64, 16, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=32,
                img_size=img,
                mlp_ratio=2,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=patch,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=[1],
                window_size=2,
                out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(img // patch, img // patch),
                input_image_size=(img, img),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
                transformer_dim=dim,
                iou_head_depth=2,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


class SAMExtractor(PromptedMaskExtractor):
    """SAM masks from random point prompts among positive pixels, averaged (app. C.1.1).

    For each image: the image embedding is computed once; then ``n_repeats`` times, ``n_points``
    distinct positive pixels are drawn (seeded by ``seed``) and SAM's decoder predicts a mask; the
    masks are averaged. ``mask`` picks among SAM's outputs: ``single`` (``multimask_output=False``),
    ``best`` (the multimask output with the highest predicted IoU), ``0``/``1``/``2`` (a fixed one of
    the three, from small to large parts), or ``all`` (the three as 3 channels).

    Args:
        variant: ``vit_h`` (thesis), ``vit_l`` or ``vit_b``.
        weights: the official checkpoint (``sam_vit_h_4b8939.pth`` ...); ``None`` looks for it in
            ``$FULCRA_WEIGHTS_DIR`` and ``~/.cache/fulcra/weights``. Never downloads.
        tiny: a small random SAM (tests, offline demos).
        n_points: point prompts per prediction (3 in the thesis).
        n_repeats: predictions averaged per image (10 in the thesis; 20 for LERF segmentation).
        mask: ``single``, ``best``, ``all``, ``0``, ``1`` or ``2``.
        binarize: threshold each predicted mask (SAM's ``mask_threshold``) before averaging; else
            average the probabilities.
        seed: seed of the prompt draws (per image, batch independent).
        device, batch_size (images per encoder pass), cache_dir, progress: see ``BaseExtractor``.

    Call: ``ext(images [B,3,H,W], prompts=[P_b, 2] (x, y) per image)`` or ``positive=[B, H, W]`` ->
    ``[B, 1 or 3, H, W]`` float32 in [0, 1].
    """

    name = "sam"

    def __init__(
        self,
        variant: str = "vit_h",
        weights: str | None = None,
        tiny: bool = False,
        n_points: int = 3,
        n_repeats: int = 10,
        mask: str = "single",
        binarize: bool = True,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 1,
        cache_dir: str | None = None,
        progress: bool = False,
    ):
        from fulcra.errors import ConfigError, MissingDependencyError

        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        self._init_prompting(n_points, n_repeats, mask, binarize, seed)
        if variant not in SAM_CHECKPOINTS:
            raise ConfigError(f"sam: unknown variant {variant!r}; choose from {', '.join(SAM_CHECKPOINTS)}")
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError as exc:
            raise MissingDependencyError(
                "the sam extractor needs segment-anything: pip install 'fulcra[sam]'", extra="sam"
            ) from exc
        self.variant, self.tiny = variant, bool(tiny)
        if tiny and not weights:
            model = build_tiny_sam()
            self.weights = None
        else:
            path = find_checkpoint("sam", weights, *SAM_CHECKPOINTS[variant])
            model = build_tiny_sam() if tiny else sam_model_registry[variant](checkpoint=None)
            try:
                model.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                from fulcra.errors import FormatError

                raise FormatError(
                    f"{path}: not a SAM {variant} checkpoint ({' '.join(str(exc).split())[:240]})"
                ) from exc
            self.weights = str(path)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.predictor = SamPredictor(self.model)
        self.mask_threshold = float(self.model.mask_threshold)

    def cache_params(self) -> dict:
        return {
            "name": self.name,
            "variant": self.variant,
            "tiny": self.tiny,
            "weights": file_identity(self.weights),
            **self._prompt_params(),
        }

    def _embed(self, images: torch.Tensor) -> list:
        H, W = images.shape[-2:]
        x = self.predictor.transform.apply_image_torch(images * 255.0)  # longest side -> encoder size
        feats = self.model.image_encoder(self.model.preprocess(x))  # [b, C, h, w]
        return [(feats[i : i + 1], tuple(x.shape[-2:]), (H, W)) for i in range(images.shape[0])]

    def _decode(self, state, coords, labels, multimask):
        feats, input_size, original_size = state
        p = self.predictor
        # SamPredictor.predict_torch on an embedding computed in a batch: set its per-image state
        p.features, p.input_size, p.original_size, p.is_image_set = feats, input_size, original_size, True
        pts = p.transform.apply_coords_torch(coords, original_size)
        logits, iou, _ = p.predict_torch(pts, labels, multimask_output=multimask, return_logits=True)
        p.reset_image()
        return logits, iou
