"""``fulcra.viewer.serve(...)``: the interactive viewer from Python.

The viewer is a plugin (kind ``commands``, name ``view``; the bundled one is
``fulcra_plugins.viewer``). This module imports no plugin: it loads the ``view`` command through the
registry and calls its optional ``serve`` member, so a third-party ``view`` command that offers
``serve`` is used the same way. See ``docs/viewer.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve"]


def serve(*args: Any, **kwargs: Any) -> Any:
    """Start the viewer: ``serve(["scene.ply=...", ...], port=8080, block=True)``; returns the server
    (``url``, ``state``, ``stop()``). Arguments as the ``view`` command's ``serve`` documents them."""
    from .errors import PluginLoadError
    from .registry import load_plugin

    cls = load_plugin("commands", "view")
    fn = getattr(cls, "serve", None)
    if not callable(fn):
        raise PluginLoadError(
            f"the installed 'view' command ({cls.__module__}.{cls.__qualname__}) has no serve(); "
            "run it as `fulcra view KEY=VALUE ...`"
        )
    return fn(*args, **kwargs)
