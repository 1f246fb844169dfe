"""``fulcra convert FORMAT ...``: turn released checkpoints into the folders fulcra's plugins load.

One sub-command per converter, so later ones are added beside ``imagemixer``::

    fulcra convert imagemixer image-mixer-pruned.ckpt --clip ~/ckpt/clip-vit-large-patch14 --out ~/ckpt/image-mixer-diffusers

Heavy imports (torch, diffusers, transformers) happen inside ``run``: ``fulcra --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["ConvertCommand"]


def _imagemixer(args: argparse.Namespace) -> int:
    from fulcra_plugins.generators.imagemixer_convert import convert_imagemixer

    out = convert_imagemixer(
        args.ckpt, args.clip, args.out, config=args.config, extract_ema=not args.no_ema, overwrite=args.overwrite
    )
    print(f"wrote {out} (unet/, vae/, scheduler/, image_encoder/, feature_extractor/): use generator.model={out}")
    return 0


class ConvertCommand:
    """``fulcra convert imagemixer CKPT --clip DIR --out DIR [--config YAML]``."""

    help = "convert released checkpoints to the folders fulcra loads (imagemixer)"

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
        p = sub.add_parser(
            "imagemixer",
            help="ImageMixer's original LDM checkpoint + a local CLIP ViT-L/14 folder -> diffusers folder",
            description=(
                "Convert the UNet and autoencoder of Pinkney's ImageMixer checkpoint (original latent-diffusion "
                "key layout) with diffusers' key-mapping helpers, take the image encoder from a local Hugging Face "
                "CLIP ViT-L/14 folder, write the DDIM scheduler config: the folder generators.imagemixer loads."
            ),
        )
        p.add_argument("ckpt", help="image-mixer-pruned.ckpt (torch.load weights_only) or a .safetensors of it")
        p.add_argument("--clip", required=True, help="local CLIP ViT-L/14 folder (openai/clip-vit-large-patch14)")
        p.add_argument("--out", required=True, help="output folder (diffusers layout)")
        p.add_argument(
            "--config", default=None, help="the checkpoint's image-mixer-config.yaml (default: its released values)"
        )
        p.add_argument("--no-ema", action="store_true", help="take the non-EMA UNet weights when both are present")
        p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
        p.set_defaults(convert_fn=_imagemixer)

    def run(self, args: Any) -> int:
        return int(args.convert_fn(args))
