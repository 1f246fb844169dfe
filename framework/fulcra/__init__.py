"""fulcra: SLACK augmentation search, task-specific distillation and LUDVIG 3D uplifting as one
plugin framework.

The top level is light: it imports torch, numpy, pluggy and omegaconf only; everything else (and
every plugin) is imported on first use.

>>> import fulcra
>>> fulcra.available("augmentations")            # plugins that import here
>>> op = fulcra.create("augmentations", "rotate")
>>> features, weights = fulcra.uplift(scene, views)
"""

from __future__ import annotations

import importlib
from typing import Any

from .camera import Camera
from .config import create
from .errors import (
    ConfigError,
    DuplicatePluginError,
    FormatError,
    FulcraError,
    MissingDependencyError,
    PluginLoadError,
    UnknownPluginError,
    WeightsNotFoundError,
)
from .registry import available, load_plugin, plugin_specs, status
from .uplift import uplift

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Camera",
    "create",
    "available",
    "load_plugin",
    "plugin_specs",
    "status",
    "uplift",
    "run",
    "Policy",
    "load_scene",
    "FulcraError",
    "ConfigError",
    "DuplicatePluginError",
    "FormatError",
    "MissingDependencyError",
    "PluginLoadError",
    "UnknownPluginError",
    "WeightsNotFoundError",
]

# names resolved lazily: (module, attribute)
_LAZY = {
    "run": ("fulcra.runner", "run"),
    "Policy": ("fulcra.policy", "Policy"),
    "load_scene": ("fulcra_plugins.scenes", "load_scene"),
    "testing": ("fulcra.testing", None),
    "engine": ("fulcra.engine", None),
    "hooks": ("fulcra.hooks", None),
    "viewer": ("fulcra.viewer", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fulcra' has no attribute {name!r}")
