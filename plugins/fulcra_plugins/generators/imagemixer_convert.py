"""Convert Pinkney's released ImageMixer checkpoint (original LDM layout) to the diffusers-format
folder that the ``imagemixer`` generator loads.

The released ``image-mixer-pruned.ckpt`` is a latent-diffusion checkpoint: a Stable Diffusion v1 UNet
under ``model.diffusion_model.*`` (cross-attention width 768, conditioned on CLIP ViT-L/14 image
embeddings), the KL autoencoder under ``first_stage_model.*`` and the frozen CLIP image tower of
``FrozenCLIPImageMutliEmbedder``. diffusers' one-shot converter picks its LDM-BERT branch for that
conditioning stage and cannot write the folder; this module instead calls diffusers' **key-mapping
helpers** directly (``create_unet_diffusers_config``, ``convert_ldm_unet_checkpoint``,
``create_vae_diffusers_config``, ``convert_ldm_vae_checkpoint``) and takes the image encoder from a
local CLIP ViT-L/14 folder (Hugging Face ``openai/clip-vit-large-patch14`` layout: the frozen
weights ImageMixer was trained with). Output::

    OUT/unet/            UNet2DConditionModel (safetensors + config.json)
    OUT/vae/             AutoencoderKL (scaling_factor from the checkpoint's config)
    OUT/scheduler/       DDIMScheduler config (the checkpoint's betas, SD v1's offsets)
    OUT/image_encoder/   CLIPVisionModelWithProjection
    OUT/feature_extractor/preprocessor_config.json
    OUT/fulcra_convert.json   what was converted from what

Loading is safe only: ``torch.load(weights_only=True)`` or safetensors; the YAML config with
``yaml.safe_load``. Nothing runs code from a file it reads, and nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fulcra.errors import ConfigError, DataNotFoundError, FormatError, MissingDependencyError

__all__ = ["IMAGEMIXER_CONFIG", "convert_imagemixer", "load_original_state_dict"]

# image-mixer-config.yaml as released with the checkpoint (lambdalabs/image-mixer): Stable Diffusion
# v1's UNet and autoencoder, context_dim 768 = CLIP ViT-L/14's projection. Used when --config is not given.
IMAGEMIXER_CONFIG: dict = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "image_size": 64,
            "channels": 4,
            "scale_factor": 0.18215,
            "conditioning_key": "crossattn",
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                },
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPImageMutliEmbedder"},
        },
    }
}

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."


def load_original_state_dict(path: str | Path) -> dict:
    """The flat ``{key: tensor}`` of an original-layout checkpoint (``.ckpt``/``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``); a Lightning ``{"state_dict": ...}`` is
    unwrapped. Raises :class:`FormatError` (one line naming the file) for anything else."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover
            raise MissingDependencyError(
                "reading .safetensors needs safetensors: pip install 'fulcra[science]'", extra="science"
            ) from exc
        try:
            sd: Any = load_file(str(path))
        except Exception as exc:
            raise FormatError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from exc
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise FormatError(
                f"{path}: cannot be read safely with torch.load(weights_only=True) ({first}); "
                "fulcra never unpickles arbitrary objects — save its state_dict as safetensors first"
            ) from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FormatError(f"{path}: not a state dict of tensors (nor a {{'state_dict': ...}} checkpoint)")
    return sd


def _load_config(config: str | Path | None) -> dict:
    if config is None:
        return copy.deepcopy(IMAGEMIXER_CONFIG)
    import yaml

    path = Path(config).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{path}: config not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise FormatError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    try:
        params = cfg["model"]["params"]
        params["unet_config"]["params"]["context_dim"]
        params["first_stage_config"]["params"]["ddconfig"]["ch_mult"]
    except (KeyError, TypeError) as exc:
        raise FormatError(
            f"{path}: not a latent-diffusion config (missing model.params.unet_config / first_stage_config: {exc})"
        ) from exc
    target = str((params.get("cond_stage_config") or {}).get("target", ""))
    if target and "CLIPImage" not in target:
        raise FormatError(
            f"{path}: model.params.cond_stage_config.target is {target!r}, not a CLIP image embedder: "
            "this is not an ImageMixer / image-variations checkpoint config"
        )
    return cfg


def _check_layout(sd: dict, path: Path) -> None:
    n_unet = sum(k.startswith(UNET_PREFIX) for k in sd)
    n_vae = sum(k.startswith(VAE_PREFIX) for k in sd)
    if not n_unet or not n_vae:
        sample = ", ".join(sorted(sd)[:3])
        raise FormatError(
            f"{path}: not an original-layout latent-diffusion checkpoint (no {UNET_PREFIX}* or {VAE_PREFIX}* keys; "
            f"found e.g. {sample})"
        )


def _load_into(module, converted: dict, what: str, path: Path) -> None:
    """Strict load with a one-line error naming the first wrong key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        bad = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise FormatError(
            f"{path}: the {what} weights do not match the config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys; {bad}); pass the checkpoint's own --config"
        )
    for k, v in converted.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise FormatError(
                f"{path}: {what} weight {k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}; "
                "pass the checkpoint's own --config"
            )
    module.load_state_dict(converted, strict=True)


def convert_imagemixer(
    ckpt: str | Path,
    clip: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    extract_ema: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert ``ckpt`` (+ the CLIP folder ``clip``) to a diffusers-format folder ``out``.

    Args:
        ckpt: the original ImageMixer checkpoint (``image-mixer-pruned.ckpt``, or a safetensors file
            with the same keys).
        clip: local Hugging Face CLIP ViT-L/14 folder (``config.json`` + weights; ``openai/clip-vit-large-patch14``).
        out: output folder (must not exist, or be empty, unless ``overwrite``).
        config: the checkpoint's LDM YAML (``image-mixer-config.yaml``); default: its released values.
        extract_ema: take the EMA UNet weights when the checkpoint has them.
        overwrite: allow writing into a non-empty ``out``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        FormatError, DataNotFoundError, ConfigError: one line naming the file or the key at fault.
    """
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from diffusers.pipelines.stable_diffusion import convert_from_ckpt as cv
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError as exc:
        raise MissingDependencyError(
            "fulcra convert imagemixer needs diffusers and transformers: pip install 'fulcra[diffusers]'",
            extra="diffusers",
        ) from exc

    ckpt_path, clip_dir, out_dir = Path(ckpt).expanduser(), Path(clip).expanduser(), Path(out).expanduser()
    if not ckpt_path.is_file():
        raise DataNotFoundError(f"{ckpt_path}: checkpoint not found")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: output folder exists and is not empty (pass --overwrite)")
    # check the small inputs before reading a 2 GB checkpoint
    clip_cfg_path = clip_dir / "config.json"
    if not clip_cfg_path.is_file():
        raise DataNotFoundError(f"{clip_dir}: not a Hugging Face CLIP folder (no config.json)")
    try:
        raw = json.loads(clip_cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{clip_cfg_path}: not valid JSON ({exc.msg})") from exc
    if raw.get("model_type") not in ("clip", "clip_vision_model"):
        raise FormatError(f"{clip_cfg_path}: model_type is {raw.get('model_type')!r}, not a CLIP model")
    cfg = _load_config(config)
    params = cfg["model"]["params"]
    context_dim = params["unet_config"]["params"]["context_dim"]
    context_dim = context_dim if isinstance(context_dim, int) else context_dim[0]
    vision_cfg = CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)
    if int(vision_cfg.projection_dim) != int(context_dim):
        raise ConfigError(
            f"{clip_dir}: CLIP projection_dim {vision_cfg.projection_dim} != the UNet's context_dim {context_dim} "
            "(ImageMixer needs CLIP ViT-L/14: 768)"
        )

    sd = load_original_state_dict(ckpt_path)
    _check_layout(sd, ckpt_path)
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    vae_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
    image_size = int(params.get("image_size", 64)) * vae_factor  # latent side x VAE factor = pixels
    has_ema = sum(k.startswith("model_ema") for k in sd) > 100
    # diffusers' helpers pop from the dict they are given: each gets its own shallow copy
    unet_cfg = cv.create_unet_diffusers_config(cfg, image_size=image_size)
    try:
        unet_sd = cv.convert_ldm_unet_checkpoint(dict(sd), unet_cfg, path=str(ckpt_path), extract_ema=extract_ema)
    except KeyError as exc:
        raise FormatError(f"{ckpt_path}: UNet key {exc} expected by the config is missing") from exc
    vae_cfg = cv.create_vae_diffusers_config(cfg, image_size=image_size)
    vae_cfg["scaling_factor"] = float(params.get("scale_factor", 0.18215))
    try:
        vae_sd = cv.convert_ldm_vae_checkpoint(dict(sd), vae_cfg)
    except KeyError as exc:
        raise FormatError(f"{ckpt_path}: autoencoder key {exc} expected by the config is missing") from exc

    unet = UNet2DConditionModel(**unet_cfg)
    _load_into(unet, unet_sd, "UNet", ckpt_path)
    vae = AutoencoderKL(**vae_cfg)
    _load_into(vae, vae_sd, "autoencoder", ckpt_path)
    # ImageMixer's sampler: DDIM over the checkpoint's scaled-linear betas, with SD v1's conventions
    sched = DDIMScheduler(
        num_train_timesteps=int(params.get("timesteps", 1000)),
        beta_start=float(params.get("linear_start", 0.00085)),
        beta_end=float(params.get("linear_end", 0.012)),
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(clip_dir), local_files_only=True)
    except OSError as exc:
        raise DataNotFoundError(f"{clip_dir}: no CLIP weights readable ({str(exc).splitlines()[0]})") from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".converting"
    tmp.mkdir(exist_ok=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    sched.save_pretrained(tmp / "scheduler")
    encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
    pre_src = clip_dir / "preprocessor_config.json"
    size = int(vision_cfg.image_size)
    pre = json.loads(pre_src.read_text()) if pre_src.is_file() else {}
    pre = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "size": {"shortest_edge": size},
        **{k: v for k, v in pre.items() if k in ("image_mean", "image_std", "crop_size", "size", "resample")},
    }
    (tmp / "feature_extractor").mkdir(exist_ok=True)
    (tmp / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    meta = {
        "source": str(ckpt_path),
        "clip": str(clip_dir),
        "config": str(config) if config else "built-in image-mixer-config.yaml values",
        "ema": bool(has_ema and extract_ema),
        "image_size": image_size,
    }
    (tmp / "fulcra_convert.json").write_text(json.dumps(meta, indent=1))
    # move into place only once everything is written: a killed conversion leaves no half folder
    import shutil

    for child in tmp.iterdir():
        dest = out_dir / child.name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        child.replace(dest)
    tmp.rmdir()
    return out_dir
