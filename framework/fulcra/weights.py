"""Local pretrained weights: where they are looked for, how they are read, how they are identified.

Shared by every plugin that loads weights (backbones, SAM, generators, a third party's): one place
says which folders are searched and what a missing file's error tells the user. Nothing here ever
downloads; files are read with safetensors or ``torch.load(weights_only=True)`` only.

Search order for a file known by name (when the user passes no ``weights=PATH``):

1. ``$FULCRA_WEIGHTS_DIR`` (when set), 2. ``~/.cache/fulcra/weights``, 3. torch hub's
``checkpoints/`` folder (``torch_hub=True``), 4. the Hugging Face hub cache of ``hf_repo``
(looked up only, never fetched; needs ``huggingface_hub``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import FormatError, WeightsNotFoundError

__all__ = ["weights_dirs", "find_weights", "hf_cached", "load_state_dict_file", "file_identity"]


def weights_dirs(torch_hub: bool = False) -> list[Path]:
    """The folders searched for a weight file given by name only, in order (see module doc)."""
    dirs = []
    if os.environ.get("FULCRA_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["FULCRA_WEIGHTS_DIR"]).expanduser())
    dirs.append(Path("~/.cache/fulcra/weights").expanduser())
    if torch_hub:
        try:
            dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
        except Exception:  # noqa: BLE001 - torch hub dir resolution is best effort
            pass
    return dirs


def hf_cached(repo: str | None, files: Sequence[str] = ()) -> Path | None:
    """A file of Hugging Face repo ``repo`` already in the local hub cache, else ``None``.

    Looks for ``files`` then the usual names (``model.safetensors``, ``open_clip_model.safetensors``,
    ``open_clip_pytorch_model.bin``, ``pytorch_model.bin``). Never fetches anything."""
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for f in (
        *files,
        "model.safetensors",
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "pytorch_model.bin",
    ):
        hit = try_to_load_from_cache(repo, f)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def find_weights(
    owner: str,
    weights: str | os.PathLike | None = None,
    *,
    files: Sequence[str] = (),
    url: str = "",
    hf_repo: str | None = None,
    torch_hub: bool = False,
) -> Path:
    """The local weight file for ``owner``: ``weights`` if given, else the first of ``files`` found.

    Args:
        owner: how the message names what needs the file, e.g. ``"backbone 'dinov2_vitg14_reg'"``.
        weights: a path the user gave (``~`` expanded); it must exist.
        files: accepted file names, the official one first (looked for in :func:`weights_dirs`).
        url: where the user can download the official file by hand (printed, never fetched).
        hf_repo: a Hugging Face repo id whose cached snapshot may already hold the file.
        torch_hub: also search torch hub's ``checkpoints/`` folder.

    Returns:
        An existing file.

    Raises:
        WeightsNotFoundError: one line naming the file, the URL and the folder to put it in.
    """
    get = f"get {files[0]} from {url}" if files and url else (f"get it from {url}" if url else "")
    if weights is not None and str(weights) != "":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"{owner}: weights file {p} does not exist" + (f" ({get})" if get else ""))
        return p
    dirs = weights_dirs(torch_hub)
    for d in dirs:
        for f in files:
            if (d / f).is_file():
                return d / f
    hit = hf_cached(hf_repo, files)
    if hit is not None:
        return hit
    if not files:
        raise WeightsNotFoundError(
            f"{owner}: no weights given; pass weights=PATH"
            + (f" ({get})" if get else "")
            + "; fulcra never downloads weights"
        )
    raise WeightsNotFoundError(
        f"{owner}: no weights found: download {files[0]}"
        + (f" from {url}" if url else "")
        + f" and put it at {dirs[0] / files[0]} (or pass weights=PATH); fulcra never downloads weights"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely from ``.safetensors`` or a ``torch.save`` file (weights only).

    Unwraps the usual containers (``{"model": ...}``, ``{"state_dict": ...}``, ``{"teacher": ...}``)
    and strips ``module.`` / ``backbone.`` / ``_orig_mod.`` prefixes left by DDP, training frameworks
    and ``torch.compile``.

    Raises:
        WeightsNotFoundError: the file does not exist.
        FormatError: the file is not a readable state dict (e.g. a TorchScript archive or a pickle
            that would run code).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a malformed file for the user
        raise FormatError(
            f"{p}: not a state dict readable safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    for key in ("model", "state_dict", "teacher", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FormatError(f"{p}: expected a mapping of parameter names to tensors")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def file_identity(path: Any) -> str | None:
    """A cheap identity of a weight file for cache keys: ``abspath:size:mtime`` (``None`` for no file;
    the path itself when it cannot be read, so a later, different file changes the key)."""
    if not path:
        return None
    p = os.path.expanduser(str(path))
    try:
        st = os.stat(p)
    except OSError:
        return str(p)
    return f"{os.path.abspath(p)}:{st.st_size}:{int(st.st_mtime)}"
