"""The one on-disk per-view feature cache of the extractors (used by every workflow through
:class:`~fulcra.interfaces.CachingExtractor`): tensors keyed by image content and the settings that
determine them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FeatureCache", "image_hash", "params_key", "jsonable"]

log = logging.getLogger("fulcra_plugins.extractors")


def image_hash(image: torch.Tensor) -> str:
    """SHA-256 of one image's content (``[3, H, W]``), independent of device and memory layout.

    Float images are hashed through their float32 bytes, so the same pixels give the same key.
    """
    t = image.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16] + str(list(v.shape))
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return v


class FeatureCache:
    """Per-view tensors on disk, keyed by image content + the parameters that determine the output.

    Files are ``<dir>/<stage>/<params-key>/<image-hash>.pt`` written atomically (temp file then
    ``os.replace``) and read with ``torch.load(weights_only=True)``; a corrupt file is recomputed.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(os.path.expanduser(str(directory)))

    def path(self, stage: str, params: dict, key: str) -> Path:
        return self.dir / stage / params_key(params) / f"{key}.pt"

    def load(self, stage: str, params: dict, key: str) -> Any | None:
        p = self.path(stage, params, key)
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # truncated by a kill before os.replace was impossible, but be safe
            log.warning("unreadable cache file %s; recomputing", p)
            return None

    def save(self, stage: str, params: dict, key: str, value: Any) -> None:
        p = self.path(stage, params, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = p.parent / "params.json"
        if not meta.exists():  # human-readable record of what the key stands for
            meta.write_text(json.dumps(params, sort_keys=True, default=str, indent=1))
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(value, tmp)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
