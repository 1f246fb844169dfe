"""``sam2``: SAM 2 masks from point prompts among positive pixels, averaged (thesis app. C.1.1).

Same behaviour as ``sam`` (see :class:`~fulcra_plugins.extractors.sam.PromptedMaskExtractor`)
through the official ``sam2`` package (image predictor path; the video memory is not used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fulcra.weights import file_identity, load_state_dict_file

from .sam import PromptedMaskExtractor, find_checkpoint

__all__ = ["SAM2Extractor", "build_tiny_sam2", "SAM2_VARIANTS"]

_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2"
# (version, variant) -> (config inside the sam2 package, official checkpoint name, URL)
SAM2_VARIANTS = {
    ("2.1", size): (
        f"configs/sam2.1/sam2.1_hiera_{short}.yaml",
        f"sam2.1_hiera_{size}.pt",
        f"{_BASE}/092824/sam2.1_hiera_{size}.pt",
    )
    for size, short in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))
}
SAM2_VARIANTS.update(
    {
        ("2.0", size): (
            f"configs/sam2/sam2_hiera_{short}.yaml",
            f"sam2_hiera_{size}.pt",
            f"{_BASE}/072824/sam2_hiera_{size}.pt",
        )
        for size, short in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))
    }
)


def _import_sam2():
    from fulcra.errors import MissingDependencyError

    try:
        import sam2  # noqa: F401 (initialises its hydra config module)
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as exc:
        raise MissingDependencyError(
            "the sam2 extractor needs the official sam2 package: pip install 'fulcra[sam2]'", extra="sam2"
        ) from exc
    return sam2, instantiate, OmegaConf, SAM2ImagePredictor


def _config(config: str):
    sam2, _, OmegaConf, _ = _import_sam2()
    cfg = OmegaConf.load(Path(sam2.__file__).parent / config)  # plain YAML, nothing executed
    # what sam2.build_sam.build_sam2 adds by default (apply_postprocessing=True)
    extra = {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    cfg.model.sam_mask_decoder_extra_args = extra
    return cfg


def build_tiny_sam2():
    """A small randomly initialised SAM 2 (the official classes from the hiera-tiny config with every
    width shrunk, 128x128 inputs; seed 0). For tests and offline demos."""
    _, instantiate, OmegaConf, _ = _import_sam2()
    cfg = _config(SAM2_VARIANTS[("2.1", "tiny")][0])
    m = cfg.model
    e, d, mem = 8, 32, 16
    m.image_size = 128
    m.image_encoder.trunk.update(
        embed_dim=e,
        num_heads=1,
        stages=[1, 1, 2, 1],
        global_att_blocks=[3],
        window_pos_embed_bkg_spatial_size=[2, 2],
        window_spec=[4, 4, 4, 2],
    )
    m.image_encoder.neck.update(d_model=d, backbone_channel_list=[8 * e, 4 * e, 2 * e, e])
    m.image_encoder.neck.position_encoding.num_pos_feats = d
    ma = m.memory_attention
    ma.update(d_model=d, num_layers=1)
    ma.layer.update(d_model=d, dim_feedforward=64)
    fs = [m.image_size // 16] * 2
    ma.layer.self_attention.update(embedding_dim=d, feat_sizes=fs)
    ma.layer.cross_attention.update(embedding_dim=d, feat_sizes=fs, kv_in_dim=mem)
    me = m.memory_encoder
    me.out_dim = mem
    me.position_encoding.num_pos_feats = mem
    me.mask_downsampler.embed_dim = d
    me.fuser.layer.dim = d
    me.fuser.num_layers = 1
    m.num_maskmem = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = instantiate(OmegaConf.to_container(m, resolve=True), _recursive_=True, _convert_="all")
    return model.eval()


class SAM2Extractor(PromptedMaskExtractor):
    """SAM 2 masks from random point prompts among positive pixels, averaged (app. C.1.1).

    As ``sam``: per image one embedding; ``n_repeats`` draws of ``n_points`` distinct positive
    pixels (seeded by ``seed``); masks averaged; ``mask`` = ``single`` / ``best`` / ``all`` /
    ``0`` / ``1`` / ``2`` picks among the decoder's outputs.

    Args:
        variant: ``tiny``, ``small``, ``base_plus`` or ``large`` (thesis: large).
        version: ``2.1`` (current checkpoints) or ``2.0`` (the 2024 release used in the thesis).
        weights: the official checkpoint (``sam2.1_hiera_large.pt`` ...); ``None`` looks for it in
            ``$FULCRA_WEIGHTS_DIR`` and ``~/.cache/fulcra/weights``. Never downloads.
        tiny: a small random SAM 2 (tests, offline demos).
        n_points, n_repeats, mask, binarize, seed: as for ``sam``.
        device, batch_size (images per encoder pass), cache_dir, progress: see ``BaseExtractor``.

    Call: ``ext(images [B,3,H,W], prompts=[P_b, 2] (x, y) per image)`` or ``positive=[B, H, W]`` ->
    ``[B, 1 or 3, H, W]`` float32 in [0, 1].
    """

    name = "sam2"

    def __init__(
        self,
        variant: str = "large",
        version: str = "2.1",
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
        from fulcra.errors import ConfigError, FormatError

        super().__init__(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
        self._init_prompting(n_points, n_repeats, mask, binarize, seed)
        if (str(version), variant) not in SAM2_VARIANTS:
            raise ConfigError(
                f"sam2: unknown variant {variant!r} / version {version!r}; variants: tiny, small, base_plus, large; versions: 2.0, 2.1"
            )
        _, instantiate, OmegaConf, SAM2ImagePredictor = _import_sam2()
        config, filename, url = SAM2_VARIANTS[(str(version), variant)]
        self.variant, self.version, self.tiny = variant, str(version), bool(tiny)
        path = find_checkpoint("sam2", weights, filename, url) if (weights or not tiny) else None  # fail fast
        if tiny:
            model = build_tiny_sam2()
        else:
            cfg = _config(config)
            model = instantiate(OmegaConf.to_container(cfg.model, resolve=True), _recursive_=True, _convert_="all")
        self.weights = None
        if path is not None:
            try:
                model.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                raise FormatError(
                    f"{path}: not a SAM 2 {version} {variant} checkpoint ({' '.join(str(exc).split())[:240]})"
                ) from exc
            self.weights = str(path)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.predictor = SAM2ImagePredictor(self.model)
        s = self.model.image_size
        # the predictor hard-codes the feature sizes of 1024-pixel inputs
        self.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.mask_threshold = float(self.predictor.mask_threshold)

    def cache_params(self) -> dict:
        return {
            "name": self.name,
            "variant": self.variant,
            "version": self.version,
            "tiny": self.tiny,
            "weights": file_identity(self.weights),
            **self._prompt_params(),
        }

    def _embed(self, images: torch.Tensor) -> list:
        # SAM2Transforms in torch: square resize to the model size, ImageNet normalisation
        s = self.model.image_size
        x = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.predictor._transforms.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.predictor._transforms.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        m = self.model
        backbone_out = m.forward_image(x)
        _, vision_feats, _, _ = m._prepare_backbone_features(backbone_out)
        if m.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + m.no_mem_embed
        b = x.shape[0]
        feats = [
            f.permute(1, 2, 0).reshape(b, -1, *fs)
            for f, fs in zip(vision_feats[::-1], self.predictor._bb_feat_sizes[::-1])
        ][::-1]
        H, W = images.shape[-2:]
        return [
            ({"image_embed": feats[-1][i : i + 1], "high_res_feats": [f[i : i + 1] for f in feats[:-1]]}, (H, W))
            for i in range(b)
        ]

    def _decode(self, state: Any, coords: torch.Tensor, labels: torch.Tensor, multimask: bool):
        features, orig_hw = state
        p = self.predictor
        p._features, p._orig_hw, p._is_image_set, p._is_batch = features, [orig_hw], True, False
        pts = p._transforms.transform_coords(coords, normalize=True, orig_hw=orig_hw)
        logits, iou, _ = p._predict(pts, labels, multimask_output=multimask, return_logits=True, img_idx=0)
        p.reset_predictor()
        return logits, iou
