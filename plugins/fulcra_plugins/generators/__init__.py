"""Synthetic image generators (thesis §4.3.2): ``imagemixer`` (diffusion conditioned on the CLIP image
embeddings of several images), ``mixup`` and ``cutmix`` (weight-free), plus the resumable, sharded
builder of a synthetic set, :func:`build_synthetic_set`."""

from .mixing import CutMix, Mixup
from .synthetic import build_synthetic_set, load_synthetic_set

__all__ = ["Mixup", "CutMix", "build_synthetic_set", "load_synthetic_set"]
