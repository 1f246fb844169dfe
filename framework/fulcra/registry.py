"""Plugin discovery and construction.

Plugins are found through entry points (one group per kind, see :data:`fulcra.interfaces.KINDS`),
listed from package metadata without importing them, and imported only when used. The catalogue
``registry.yaml`` names every bundled plugin, so a plugin whose extra is not installed can still be
listed with its install hint. A config may also name a plugin as ``module:attr``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
from dataclasses import dataclass
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Mapping

from .errors import DuplicatePluginError, MissingDependencyError, PluginLoadError, UnknownPluginError
from .interfaces import KINDS

__all__ = [
    "PluginSpec",
    "kinds",
    "catalogue",
    "discover",
    "plugin_specs",
    "load_plugin",
    "available",
    "unavailable",
    "status",
    "check_kind",
    "resolve_kind",
    "clear_cache",
]


@dataclass(frozen=True)
class PluginSpec:
    """One plugin as known from metadata or the catalogue, before import."""

    kind: str
    name: str
    value: str  # "module:attr"
    distribution: str | None  # providing distribution, None for catalogue-only entries
    extra: str | None = None
    summary: str = ""
    installed: bool = True  # False: only in the catalogue (its distribution is not installed)

    @property
    def module(self) -> str:
        return self.value.split(":", 1)[0]


def kinds() -> list[str]:
    return list(KINDS)


def resolve_kind(kind: str) -> str:
    """Accept ``augmentations``, ``fulcra.augmentations`` or a singular like ``augmentation``."""
    if kind in KINDS:
        return kind
    k = kind[len("fulcra.") :] if kind.startswith("fulcra.") else kind
    for cand in (k, k + "s", k + "es"):
        if cand in KINDS:
            return cand
    close = difflib.get_close_matches(kind, list(KINDS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownPluginError(f"unknown plugin kind {kind!r}{hint} (kinds: {', '.join(KINDS)})")


def _catalogue_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for cand in (here / "registry.yaml", here.parent.parent / "registry.yaml"):
        if cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=1)
def catalogue() -> dict:
    """The parsed ``registry.yaml`` (plugins, presets, recipes); empty sections when absent."""
    import yaml  # omegaconf depends on PyYAML

    path = os.environ.get("FULCRA_REGISTRY") or _catalogue_path()
    if not path:
        return {"plugins": {}, "presets": {}, "recipes": {}}
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    for key in ("plugins", "presets", "recipes"):
        data[key] = data.get(key) or {}
    data["_path"] = str(path)
    return data


@functools.lru_cache(maxsize=1)
def discover() -> dict[str, dict[str, list[PluginSpec]]]:
    """All entry points of all kinds, grouped by kind then name (lists: duplicates kept)."""
    found: dict[str, dict[str, list[PluginSpec]]] = {k: {} for k in KINDS}
    cat = catalogue()["plugins"]
    seen: set[tuple[str, str, str]] = set()
    for dist in _md.distributions():
        dist_name = dist.metadata["Name"] if dist.metadata else None
        for ep in dist.entry_points:
            if not ep.group.startswith("fulcra."):
                continue
            kind = ep.group[len("fulcra.") :]
            if kind not in found:
                continue
            key = (kind, ep.name, dist_name or "")
            if key in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add(key)
            meta = (cat.get(kind) or {}).get(ep.name) or {}
            found[kind].setdefault(ep.name, []).append(
                PluginSpec(kind, ep.name, ep.value, dist_name, meta.get("extra"), meta.get("summary", ""))
            )
    return found


def clear_cache() -> None:
    """Forget discovered entry points and the catalogue (after installing a plugin at run time)."""
    discover.cache_clear()
    catalogue.cache_clear()
    _load_value.cache_clear()


def plugin_specs(kind: str | None = None) -> list[PluginSpec]:
    """Every plugin known, installed or only catalogued, optionally of one kind."""
    kinds_ = [resolve_kind(kind)] if kind else list(KINDS)
    out: list[PluginSpec] = []
    cat = catalogue()["plugins"]
    found = discover()
    for k in kinds_:
        names = set(found[k]) | set(cat.get(k) or {})
        for name in sorted(names):
            if name in found[k]:
                out.extend(found[k][name])
            else:
                meta = cat[k][name]
                out.append(
                    PluginSpec(
                        k,
                        name,
                        meta.get("entry_point", ""),
                        None,
                        meta.get("extra"),
                        meta.get("summary", ""),
                        installed=False,
                    )
                )
    return out


def _extra_hint(extra: str | None) -> str:
    return f"pip install 'fulcra[{extra}]'" if extra else "pip install fulcra"


@functools.cache
def _load_value(value: str, kind: str, name: str, dist: str | None, extra: str | None) -> Any:
    module_name, _, attr = value.partition(":")
    where = f"{kind} plugin {name!r} ({value}" + (f", from {dist})" if dist else ")")
    try:
        obj = importlib.import_module(module_name)
    except MissingDependencyError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        # the plugin's own module missing is a broken plugin; a third-party module missing is a dependency
        if missing and not module_name.startswith(missing) and missing.split(".")[0] != module_name.split(".")[0]:
            raise MissingDependencyError(
                f"{where} needs the missing module {missing!r}: {_extra_hint(extra)}", extra=extra
            ) from exc
        raise PluginLoadError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise PluginLoadError(f"{where} failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise PluginLoadError(f"{where}: module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def check_kind(kind: str, name: str, obj: Any) -> None:
    """Verify that a loaded plugin provides the members its kind requires."""
    _, _, required = KINDS[kind]
    missing = [m for m in required if not hasattr(obj, m)]
    if missing:
        raise PluginLoadError(
            f"{kind} plugin {name!r} ({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}) "
            f"lacks {', '.join(missing)} required of {kind}"
        )


def load_plugin(kind: str, name: str) -> Any:
    """Import and return the class (or factory) of a plugin.

    ``name`` is an entry-point name or a ``module:attr`` reference.

    Raises:
        UnknownPluginError: no such plugin; lists close matches, including uninstalled ones.
        MissingDependencyError: the plugin's optional dependency is missing; names the extra.
        DuplicatePluginError: two distributions claim ``kind``/``name``; names both.
        PluginLoadError: the plugin failed to import (the original exception is chained and shown).
    """
    kind = resolve_kind(kind)
    if ":" in name:
        obj = _load_value(name, kind, name, None, None)
        check_kind(kind, name, obj)
        return obj
    found = discover()[kind].get(name)
    if not found:
        cat = catalogue()["plugins"].get(kind) or {}
        if name in cat:
            extra = cat[name].get("extra")
            raise MissingDependencyError(f"{kind} plugin {name!r} is not installed: {_extra_hint(extra)}", extra=extra)
        known = sorted(set(discover()[kind]) | set(cat))
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        others = [
            f"{k}/{name}"
            for k in KINDS
            if k != kind and (name in discover()[k] or name in (catalogue()["plugins"].get(k) or {}))
        ]
        msg = f"unknown {kind} plugin {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        if others:
            msg += f" ({name!r} exists as {', '.join(others)})"
        msg += f" — see `fulcra plugins --kind {kind}`"
        raise UnknownPluginError(msg)
    if len(found) > 1:
        raise DuplicatePluginError(
            f"{kind} plugin {name!r} is claimed by several distributions: "
            + ", ".join(f"{s.distribution} ({s.value})" for s in found)
            + "; uninstall one of them"
        )
    spec = found[0]
    obj = _load_value(spec.value, kind, name, spec.distribution, spec.extra)
    check_kind(kind, name, obj)
    return obj


def status(kind: str | None = None) -> list[dict]:
    """For each plugin: kind, name, distribution, entry point, extra, available, reason. Imports
    each plugin's module to find out (use :func:`plugin_specs` for a listing without imports)."""
    rows = []
    for spec in plugin_specs(kind):
        row = {
            "kind": spec.kind,
            "name": spec.name,
            "distribution": spec.distribution,
            "entry_point": spec.value,
            "extra": spec.extra,
            "summary": spec.summary,
            "available": False,
            "reason": None,
        }
        if not spec.installed:
            row["reason"] = f"not installed: {_extra_hint(spec.extra)}"
        else:
            try:
                load_plugin(spec.kind, spec.name)
                row["available"] = True
            except Exception as exc:  # report, never crash a listing
                row["reason"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rows.append(row)
    return rows


def available(kind: str) -> list[str]:
    """Names of the plugins of ``kind`` that import cleanly here."""
    return [r["name"] for r in status(kind) if r["available"]]


def unavailable(kind: str | None = None) -> dict[str, str]:
    """``"kind/name" -> reason`` for plugins that are listed but cannot be used."""
    return {f"{r['kind']}/{r['name']}": r["reason"] for r in status(kind) if not r["available"]}


def describe(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc


def preset(kind: str, name: str) -> Mapping[str, Any] | None:
    return (catalogue()["presets"].get(resolve_kind(kind)) or {}).get(name)
