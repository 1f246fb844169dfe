"""timm ViTs as backbones: the generic ``timm`` backbone (any ViT-like timm architecture, ``arch=``)
and the wrapper the bundled DINOv2 / EVA-02 variants share.

Tokens come from timm's ``forward_intermediates`` with ``dynamic_img_size=True``, so any input size
that is a multiple of the patch size works (position embeddings are resampled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulcra.errors import ConfigError, MissingDependencyError
from fulcra.weights import find_weights, load_state_dict_file

try:  # imported here so that `fulcra plugins` shows a missing timm with its extra
    import timm
except ImportError as exc:
    raise MissingDependencyError(
        "timm backbones (DINOv2, EVA-02, timm) need timm: pip install 'fulcra[timm]'", extra="timm"
    ) from exc

from .base import BaseBackbone, load_strict, strip_wrapper
from .specs import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TimmBackbone", "build_timm_model", "GENERIC_TINY"]

#: what ``tiny=True`` overrides in a generic timm ViT (a few seconds to build and run on a CPU)
GENERIC_TINY = {"embed_dim": 48, "depth": 2, "num_heads": 2}


def build_timm_model(arch: str, name: str, tiny: dict | None = None, path: Path | None = None) -> nn.Module:
    """``timm.create_model(arch)`` without pretrained download, optionally shrunk, loading ``path``.

    Official checkpoints (DINOv2's ``*_pretrain.pth``, EVA's) go through the model module's
    ``checkpoint_filter_fn``, which renames keys to timm's and resamples position embeddings.

    Raises:
        ConfigError: unknown or non-ViT architecture. FormatError: the file does not fit.
    """
    if not timm.is_model(arch.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise ConfigError(
            f"backbone '{name}': unknown timm architecture {arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    kw: dict[str, Any] = {"pretrained": False, "num_classes": 0, "dynamic_img_size": True, **(tiny or {})}
    try:
        model = timm.create_model(arch, **kw)
    except TypeError as exc:  # an architecture without patch tokens rejects dynamic_img_size / tiny keys
        raise ConfigError(
            f"backbone '{name}': timm architecture {arch!r} is not a ViT-like token encoder ({exc})"
        ) from exc
    if not (hasattr(model, "forward_intermediates") and hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise ConfigError(
            f"backbone '{name}': timm architecture {arch!r} has no patch tokens (needs patch_embed, blocks, forward_intermediates)"
        )
    if path is not None:
        sd = strip_wrapper(load_state_dict_file(path))
        module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
        if hasattr(module, "checkpoint_filter_fn"):
            sd = module.checkpoint_filter_fn(sd, model)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        load_strict(model, sd, path, name)
    return model


class TimmBackbone(BaseBackbone):
    """Any ViT-like timm architecture as a backbone (``fulcra.backbones`` plugin ``timm``).

    ``cls`` tokens are the final-normed CLS token of each of the last blocks (DINOv2's
    ``get_intermediate_layers(norm=True)``), or the mean patch token for architectures without one.

    Args:
        arch: a timm model name, with or without its pretrained tag (``vit_small_patch16_224``,
            ``vit_base_patch16_siglip_224.webli``, ``eva02_small_patch14_224.mim_in22k``).
        weights: a local file for it (timm or official layout, ``.safetensors`` or ``.pth``); ``None``
            looks for ``<arch>.safetensors`` / ``<arch>.pth`` in ``$FULCRA_WEIGHTS_DIR`` and
            ``~/.cache/fulcra/weights``, then the Hugging Face cache of ``timm/<arch>``.
        tiny: 2 blocks of width 48 (:data:`GENERIC_TINY`), random; loads ``weights`` if given.
        pretrained: ``False``: random weights, no file looked for.
        device: where to put it.
    """

    conformance_params = {"arch": "vit_small_patch16_224", "tiny": True}

    def __init__(
        self, arch: str, weights: str | None = None, tiny: bool = False, pretrained: bool = True, device: str = "cpu"
    ):
        super().__init__()
        name = f"timm:{arch}"
        path = type(self).locate_weights(weights, arch=arch) if weights or (pretrained and not tiny) else None
        model = build_timm_model(arch, name, GENERIC_TINY if tiny else None, path)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self._wrap(
            name,
            model,
            int(model.patch_embed.patch_size[0]),
            tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)),
        )
        self.arch = arch
        self.to(device).eval()

    @classmethod
    def locate_weights(cls, weights: str | None = None, arch: str = "", **_: Any) -> Path:
        base = arch.split(".")[0]
        files = tuple(dict.fromkeys((f"{arch}.safetensors", f"{arch}.pth", f"{base}.safetensors", f"{base}.pth")))
        return find_weights(
            f"backbone 'timm' (arch={arch})",
            weights,
            files=files,
            url=f"https://huggingface.co/timm/{arch}",
            hf_repo=f"timm/{arch}" if "." in arch else None,
        )

    @classmethod
    def from_model(
        cls, name: str, model: nn.Module, patch_size: int, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD
    ) -> TimmBackbone:
        """Wrap an already built timm ViT (benchmarks, custom loading) without looking for weights."""
        self = cls.__new__(cls)
        BaseBackbone.__init__(self)
        self._wrap(name, model, patch_size, mean, std)
        return self

    def _wrap(self, name: str, model: nn.Module, patch_size: int, mean: tuple, std: tuple) -> None:
        self.name, self.model = name, model
        self.embed_dim = int(model.embed_dim)
        self.patch_size = int(patch_size)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.depth = len(model.blocks)
        self.mean, self.std = tuple(mean), tuple(std)

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]:
        self._check_n_last(n_last)
        # norm=True applies the final LayerNorm to each intermediate, as DINOv2's
        # get_intermediate_layers(norm=True) does for its linear-probe protocol.
        prefix = self.num_prefix_tokens > 0
        inter = self.model.forward_intermediates(
            images, indices=n_last, return_prefix_tokens=prefix, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        if not prefix:  # no CLS token (SigLIP, ...): the global embedding is the mean patch token
            return {"cls": [patch.mean(dim=(2, 3)) for patch in inter], "patch": inter[-1]}
        return {"cls": [tokens[:, 0] for _, tokens in inter], "patch": inter[-1][0]}
