"""ImageMixer (Pinkney, 2022; thesis §4.3.2): Stable Diffusion conditioned on the CLIP image
embeddings of two or more images, concatenated along the sequence dimension — a Mixup of images in
the space of a diffusion model, needing no text prompt and no class label.

Built from diffusers components loaded from a local diffusers-format folder (nothing is downloaded)::

    MODEL/unet/            UNet2DConditionModel (cross_attention_dim = CLIP projection size)
    MODEL/vae/             AutoencoderKL
    MODEL/scheduler/       scheduler_config.json (sampled with DDIM, deterministic for a seed)
    MODEL/image_encoder/   transformers CLIPVisionModelWithProjection
    MODEL/feature_extractor/preprocessor_config.json   (optional: CLIP image size, mean, std)

This is the layout of ``lambdalabs/sd-image-variations-diffusers``; ImageMixer's weights converted to
diffusers format use it too (see docs/distill.md). diffusers and transformers are imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fulcra.errors import ConfigError, MissingDependencyError, WeightsNotFoundError

__all__ = ["ImageMixer"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SUBFOLDERS = ("unet", "vae", "scheduler", "image_encoder")


class ImageMixer:
    """Synthetic images mixing ``mix_k`` inputs through a CLIP-image-conditioned diffusion model.

    ``generate([n·mix_k, 3, H, W] in [0, 1], generator) -> [n, 3, H, W]`` (or the model's resolution
    when ``keep_size`` is false): consecutive groups of ``mix_k`` inputs are encoded by CLIP, their
    embeddings concatenated into a ``[n, mix_k, E]`` sequence conditioning the UNet, with
    classifier-free guidance against an all-zero conditioning. The UNet and the CLIP encoder run in
    float16 on GPU; the VAE decodes in float32.

    Args:
        model: local diffusers-format folder (see module doc).
        mix_k: images per output (2 in the thesis).
        steps: DDIM sampling steps.
        guidance_scale: classifier-free guidance scale (1 disables it).
        size: generation resolution in pixels (default: the UNet's ``sample_size`` × VAE factor).
        keep_size: resize outputs to the input resolution.
        device: ``auto``, ``cpu`` or ``cuda``. dtype: ``auto`` (float16 on GPU), ``float32``, ``float16``.
        weights: optional per-input scaling of the embeddings (length ``mix_k``), as in ImageMixer's demo.
    """

    def __init__(
        self,
        model: str | None = None,
        mix_k: int = 2,
        steps: int = 50,
        guidance_scale: float = 3.0,
        size: int | None = None,
        keep_size: bool = True,
        device: str = "auto",
        dtype: str = "auto",
        weights: list | None = None,
    ):
        if mix_k < 1:
            raise ConfigError(
                f"generators plugin 'imagemixer': mix_k must be >= 1 (1: image variations, Table 4.4), got {mix_k}"
            )
        if weights is not None and len(weights) != mix_k:
            raise ConfigError(f"generators plugin 'imagemixer': {len(weights)} weights for mix_k={mix_k}")
        self.model, self.mix_k, self.steps = model, int(mix_k), int(steps)
        self.guidance_scale, self.size, self.keep_size = float(guidance_scale), size, bool(keep_size)
        self.device_spec, self.dtype_spec = device, dtype
        self.weights = None if weights is None else [float(w) for w in weights]
        self._parts = None

    # ------------------------------------------------------------------------------------ loading
    def _load(self):
        if self._parts is not None:
            return self._parts
        if not self.model:
            raise WeightsNotFoundError(
                "generators plugin 'imagemixer' needs model=DIR, a local diffusers-format folder with "
                f"{', '.join(SUBFOLDERS)}/ (see docs/distill.md); nothing is downloaded"
            )
        root = Path(self.model).expanduser()
        missing = [s for s in SUBFOLDERS if not (root / s).is_dir()]
        if missing:
            raise WeightsNotFoundError(
                f"{root}: not a diffusers-format ImageMixer folder (missing {', '.join(s + '/' for s in missing)})"
            )
        try:
            from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
            from transformers import CLIPVisionModelWithProjection
        except ImportError as exc:
            raise MissingDependencyError(
                "generators plugin 'imagemixer' needs diffusers and transformers: pip install 'fulcra[diffusers]'",
                extra="diffusers",
            ) from exc
        from fulcra.engine import select_device, select_dtype

        device = select_device(self.device_spec)
        dtype = select_dtype(self.dtype_spec, device)
        kw = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype, **kw).to(device).eval()
        # the VAE decodes once per image: keep it in float32, where SD VAEs cannot overflow to NaN
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw).to(device, torch.float32).eval()
        sched = DDIMScheduler.from_pretrained(root, subfolder="scheduler", **kw)
        enc = CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder", **kw).to(device, dtype).eval()
        mean, std, clip_size = CLIP_MEAN, CLIP_STD, int(enc.config.image_size)
        pre = root / "feature_extractor" / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
            crop = p.get("crop_size", clip_size)
            clip_size = int(crop["height"] if isinstance(crop, dict) else crop)
        if unet.config.cross_attention_dim != enc.config.projection_dim:
            raise ConfigError(
                f"{root}: unet cross_attention_dim {unet.config.cross_attention_dim} != image_encoder projection_dim {enc.config.projection_dim}"
            )
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._parts = dict(
            unet=unet,
            vae=vae,
            scheduler=sched,
            encoder=enc,
            device=device,
            dtype=dtype,
            mean=mean,
            std=std,
            clip_size=clip_size,
            vae_factor=vae_factor,
        )
        return self._parts

    # --------------------------------------------------------------------------------- generation
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``[B, E]`` of ``images`` ``[B, 3, H, W]`` in [0, 1]."""
        p = self._load()
        x = clip_preprocess(images.to(p["device"], torch.float32), p["clip_size"])
        mean = torch.tensor(p["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(p["std"], device=x.device).view(1, 3, 1, 1)
        return p["encoder"](pixel_values=((x - mean) / std).to(p["dtype"])).image_embeds

    @torch.no_grad()
    def generate(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self._load()
        if images.ndim != 4 or images.shape[0] % self.mix_k:
            raise ConfigError(
                f"generators plugin 'imagemixer': expected [n*{self.mix_k}, 3, H, W], got {tuple(images.shape)}"
            )
        n, (H, W) = images.shape[0] // self.mix_k, images.shape[-2:]
        cond = self.embed(images).view(n, self.mix_k, -1)  # concatenated along the sequence
        if self.weights is not None:
            cond = cond * torch.tensor(self.weights, device=cond.device, dtype=cond.dtype).view(1, -1, 1)
        unet, vae, sched = p["unet"], p["vae"], p["scheduler"]
        size = int(self.size or unet.config.sample_size * p["vae_factor"])
        shape = (n, unet.config.in_channels, size // p["vae_factor"], size // p["vae_factor"])
        # noise drawn on the CPU generator: identical images for a seed on any device
        latents = torch.randn(shape, generator=generator, device=generator.device if generator is not None else "cpu")
        latents = latents.to(p["device"], p["dtype"]) * sched.init_noise_sigma
        guided = self.guidance_scale > 1.0
        context = torch.cat([torch.zeros_like(cond), cond]) if guided else cond
        sched.set_timesteps(self.steps, device=p["device"])
        for t in sched.timesteps:
            inp = torch.cat([latents] * 2) if guided else latents
            inp = sched.scale_model_input(inp, t)
            eps = unet(inp, t, encoder_hidden_states=context).sample
            if guided:
                e_u, e_c = eps.chunk(2)
                eps = e_u + self.guidance_scale * (e_c - e_u)
            latents = sched.step(eps, t, latents, eta=0.0).prev_sample
        scale = getattr(vae.config, "scaling_factor", 0.18215)
        out = vae.decode(latents.float() / scale).sample.float()
        out = (out / 2 + 0.5).clamp(0, 1)
        if self.keep_size and tuple(out.shape[-2:]) != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return out.to(images.device)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's image preprocessing on ``[B, 3, H, W]`` in [0, 1]: the shorter side resized to ``size``
    (bicubic, antialiased), then the centre ``size`` x ``size`` crop (as CLIPImageProcessor does; a
    non-square image is not squashed)."""
    H, W = images.shape[-2:]
    if H <= W:  # the longer side truncated, as CLIPImageProcessor and torchvision's Resize
        h, w = size, max(size, int(size * W / H))
    else:
        h, w = max(size, int(size * H / W)), size
    x = F.interpolate(images, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)
