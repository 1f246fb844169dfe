"""Building a backbone from a reference, for the plugins that consume one (teachers, students, dense
extractors) whatever distribution provides it.

A backbone reference is what a config puts under ``backbone:``:

- a name, resolved through the registry (``dinov2_vitg14_reg``, ``clip_vitb16``, a third party's
  ``my_vit``, a preset of ``presets.backbones``, or ``module:attr``), or
- a node ``{name: ..., <own keys>}`` for backbones with keys of their own, e.g.
  ``{name: timm, arch: vit_small_patch16_224}``; on a command line
  ``teacher.backbone={name:timm,arch:vit_small_patch16_224}``.

The standard keys (:data:`fulcra.interfaces.BACKBONE_KEYS`: ``weights``, ``tiny``, ``pretrained``,
``device``) belong to the consumer (``teacher.weights=...``), not to the node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, MissingDependencyError, UnknownPluginError
from .interfaces import BACKBONE_KEYS, Backbone

__all__ = ["backbone_node", "backbone_key", "check_backbone_ref", "create_backbone", "locate_backbone_weights"]


def backbone_node(ref: Any, owner: str = "backbone") -> dict:
    """``ref`` (a name or a node) as a node ``{name: ..., **own_keys}``.

    Raises:
        ConfigError: ``ref`` is neither, has no name, or carries a standard key.
    """
    if isinstance(ref, str):
        if not ref:
            raise ConfigError(f"{owner}: empty backbone name")
        return {"name": ref}
    if isinstance(ref, Mapping):
        node = dict(ref)
        if not isinstance(node.get("name"), str):
            raise ConfigError(f"{owner}: backbone node {node!r} has no 'name'")
        clash = [k for k in BACKBONE_KEYS if k in node]
        if clash:
            raise ConfigError(
                f"{owner}: key {clash[0]!r} goes beside 'backbone', not inside it (e.g. teacher.{clash[0]}=...)"
            )
        return node
    raise ConfigError(f"{owner}: backbone must be a name or a {{name: ..., ...}} node, got {type(ref).__name__}")


def backbone_key(ref: Any) -> str:
    """A stable string for ``ref`` (cache keys, logs): the name itself, or the node as sorted JSON."""
    node = backbone_node(ref)
    if len(node) == 1:
        return node["name"]
    return json.dumps(node, sort_keys=True, default=str)


def create_backbone(
    ref: Any,
    *,
    weights: str | os.PathLike | None = None,
    tiny: bool = False,
    pretrained: bool = True,
    device: Any = "cpu",
    owner: str = "backbone",
) -> Backbone:
    """Build the backbone ``ref`` names through the registry (what ``fulcra.create("backbones", ...)``
    does, with errors prefixed by ``owner``, e.g. ``"teachers plugin 'probed'"``).

    Standard keys are passed only when they differ from their defaults (see
    :class:`fulcra.interfaces.Backbone`), so a backbone that does not declare, say, ``pretrained``
    still works where nobody asks for it, and fails with the registry's unknown-key error where
    somebody does.

    Raises:
        UnknownPluginError: no such backbone (with close matches). MissingDependencyError: its extra
        is not installed. ConfigError, WeightsNotFoundError, FormatError: from the plugin.
    """
    from .config import validate_params

    name, cls, own = _resolve(ref, owner)
    std: dict[str, Any] = {}
    if weights is not None and str(weights) != "":
        std["weights"] = str(weights)
    if tiny:
        std["tiny"] = True
    if not pretrained:
        std["pretrained"] = False
    if str(device) != "cpu":
        std["device"] = str(device)
    try:
        params = validate_params(f"backbones plugin {name!r}", cls, {**own, **std})
    except ConfigError as exc:  # e.g. pretrained=False asked of a backbone that does not declare it
        raise ConfigError(_prefix(owner, exc)) from exc
    return cls(**params)


def check_backbone_ref(ref: Any, owner: str = "backbone") -> tuple[Any, dict]:
    """Resolve ``ref`` without building anything: the plugin class and its validated own keys.

    Lets a workflow reject a misspelt backbone name or key before any work (the registry's
    close-match errors).

    Raises:
        UnknownPluginError, MissingDependencyError, ConfigError: as :func:`create_backbone` would.
    """
    _, cls, own = _resolve(ref, owner)
    return cls, own


def _resolve(ref: Any, owner: str) -> tuple[str, Any, dict]:
    """(name, class, validated own keys); registry and key errors say which backbone reference."""
    from .config import normalize_node, validate_params
    from .registry import load_plugin

    try:
        node = normalize_node("backbones", backbone_node(ref, owner))
        name = node.pop("name")
        cls = load_plugin("backbones", name)
        return name, cls, validate_params(f"backbones plugin {name!r}", cls, node)
    except MissingDependencyError as exc:
        raise MissingDependencyError(_prefix(owner, exc), extra=exc.extra) from exc
    except (UnknownPluginError, ConfigError) as exc:
        raise type(exc)(_prefix(owner, exc)) from exc


def _prefix(owner: str, exc: Exception) -> str:
    msg = str(exc)
    return msg if msg.startswith(f"{owner}:") else f"{owner}: {msg}"


def locate_backbone_weights(ref: Any, weights: str | os.PathLike | None = None, owner: str = "backbone") -> Path | None:
    """Find the weight file the backbone would load, without building it (fail-fast checks).

    Uses the plugin's optional ``locate_weights(weights=None, **own_keys)`` classmethod; for a
    plugin without one, only checks that a given ``weights`` file exists (``None`` when none given).

    Raises:
        WeightsNotFoundError: the file is missing (the message names it and where to put it).
        UnknownPluginError, ConfigError: see :func:`check_backbone_ref`.
    """
    from .weights import find_weights

    cls, own = check_backbone_ref(ref, owner)
    locate = getattr(cls, "locate_weights", None)
    if callable(locate):
        return locate(weights=str(weights) if weights else None, **own)
    if weights:
        return find_weights(f"{owner} {backbone_key(ref)!r}", weights)
    return None
