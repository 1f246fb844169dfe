"""Configuration: plugin parameters, component nodes, recipes and ``key=value`` overrides (OmegaConf).

A plugin declares its parameters through a ``Config`` dataclass class attribute (fields may carry
``metadata={"help": ...}``) or through the typed signature of its ``__init__``. A component in a
config is a node ``{name: <plugin>, <param>: <value>, ...}``, a bare plugin name, or a preset name
from ``registry.yaml``. Unknown or mistyped keys are a :class:`~fulcra.errors.ConfigError` naming the
key, the plugin and the valid keys. When an override changes a node's ``name``, the parameters it
inherited from the old plugin are dropped (they rarely mean anything to the new one).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import registry
from .errors import ConfigError, UnknownPluginError

__all__ = [
    "Param",
    "COMMON_KEYS",
    "plugin_params",
    "validate_params",
    "normalize_node",
    "create",
    "parse_overrides",
    "apply_overrides",
    "merge_nodes",
    "load_run_config",
    "resolve_run_config",
    "to_yaml",
]

#: keys every run config may carry, handled by the runner rather than the workflow
COMMON_KEYS = ("workflow", "out", "seed", "device", "hooks")

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One declared parameter of a plugin."""

    name: str
    annotation: Any
    default: Any
    required: bool
    help: str = ""
    kind: str | None = None  # for workflow fields holding a component: its plugin kind
    minimum: float | None = None  # field metadata "min" / "max" / "choices", checked on validation
    maximum: float | None = None
    choices: tuple | None = None

    def check(self, owner: str, value: Any) -> None:
        """Raise a one-line ConfigError when ``value`` is outside the declared range or choices."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{owner}: key {self.name!r} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{owner}: key {self.name!r} must be >= {self.minimum}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{owner}: key {self.name!r} must be <= {self.maximum}, got {value!r}")

    @property
    def type_name(self) -> str:
        a = self.annotation
        if a is Any or a is _EMPTY:
            return "any"
        return _type_text(a)


def _type_text(a: Any) -> str:
    """``int``, ``list | None``, ``Sequence[float] | None``: a type as a user would write it."""
    args = typing.get_args(a)
    if args and type(None) in args:  # Optional[X] and X | None
        return " | ".join(_type_text(x) for x in args if x is not type(None)) + " | None"
    if args:
        return str(a).replace("typing.", "").replace("collections.abc.", "")
    return getattr(a, "__name__", None) or str(a).replace("typing.", "")


def _field_default(f: dataclasses.Field) -> tuple[Any, bool]:
    if f.default is not dataclasses.MISSING:
        return f.default, False
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory(), False  # type: ignore[misc]
    return None, True


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: treat as Any
        return {}


@functools.cache
def _params_cached(obj: Any) -> tuple[tuple[Param, ...], bool]:
    cfg = getattr(obj, "Config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        hints = _hints(cfg)
        out = []
        for f in dataclasses.fields(cfg):
            default, required = _field_default(f)
            md = f.metadata
            out.append(
                Param(
                    f.name,
                    hints.get(f.name, Any),
                    default,
                    required,
                    md.get("help", ""),
                    md.get("kind"),
                    md.get("min"),
                    md.get("max"),
                    tuple(md["choices"]) if "choices" in md else None,
                )
            )
        return tuple(out), False
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return (), True
    hints = _hints(fn)
    helps = _docstring_args(obj)
    # typed-signature plugins declare ranges as a class attribute: param_limits = {"k": {"min": 1}}
    limits = getattr(obj, "param_limits", None) or {}
    out, var_kw = [], False
    params = list(sig.parameters.values())
    if inspect.isclass(obj) and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        out.append(
            Param(
                p.name,
                hints.get(p.name, Any),
                None if p.default is _EMPTY else p.default,
                p.default is _EMPTY,
                helps.get(p.name, ""),
                None,
                limits.get(p.name, {}).get("min"),
                limits.get(p.name, {}).get("max"),
                tuple(limits[p.name]["choices"]) if "choices" in limits.get(p.name, {}) else None,
            )
        )
    return tuple(out), var_kw


def _docstring_args(obj: Any) -> dict[str, str]:
    """Parameter help from a Google-style ``Args:`` section of the class or ``__init__`` docstring
    (``name: text`` or ``a, b: text``, continuation lines indented), for plugins that declare their
    parameters by a typed signature rather than a ``Config`` dataclass."""
    import re

    out: dict[str, str] = {}
    for doc in (inspect.getdoc(obj), inspect.getdoc(getattr(obj, "__init__", None)) if inspect.isclass(obj) else None):
        if not doc:
            continue
        lines = doc.splitlines()
        try:
            start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
        except StopIteration:
            continue
        indent, names = None, []
        for line in lines[start + 1 :]:
            if not line.strip():
                continue
            ind = len(line) - len(line.lstrip())
            if indent is None:
                indent = ind
            if ind < indent or (ind == indent and re.match(r"^\s*[A-Z][a-z]+:\s*$", line)):
                break
            m = re.match(r"^\s*([A-Za-z_][\w, ]*?)\s*(\([^)]*\))?:\s+(.*)$", line) if ind == indent else None
            if m:
                names = [n.strip() for n in m.group(1).split(",") if n.strip()]
                for n in names:
                    out.setdefault(n, m.group(3).strip())
            elif names:
                for n in names:
                    out[n] = (out[n] + " " + line.strip()).strip()
    return out


def plugin_params(obj: Any) -> list[Param]:
    """The parameters a plugin class (or factory) declares, in order."""
    return list(_params_cached(obj)[0])


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, Path)):
        return True
    if isinstance(value, (list, tuple, ListConfig)):
        return all(_plain(v) for v in value)
    if isinstance(value, (dict, DictConfig)):
        return all(_plain(v) for v in value.values())
    return False


@functools.cache
def _field_schema(name: str, annotation: Any) -> Any:
    """A one-field structured config used to check and coerce a value, or None if OmegaConf can't type it."""
    try:
        dc = dataclasses.make_dataclass("P", [(name, annotation, dataclasses.field(default=None))])
        return OmegaConf.structured(dc)
    except Exception:
        try:
            dc = dataclasses.make_dataclass("P", [(name, typing.Optional[annotation], dataclasses.field(default=None))])
            return OmegaConf.structured(dc)
        except Exception:
            return None


def _coerce(owner: str, p: Param, value: Any) -> Any:
    if p.annotation in (Any, _EMPTY) or not _plain(value) or p.kind is not None:
        return _to_python(value)
    schema = _field_schema(p.name, p.annotation)
    if schema is None:
        return _to_python(value)
    cfg = copy.deepcopy(schema)
    try:
        cfg[p.name] = _to_python(value)
        return OmegaConf.to_container(cfg, resolve=True)[p.name]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{owner}: key {p.name!r} expects {p.type_name}, got {value!r}") from exc


def _to_python(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _check_subkeys(owner: str, prefix: str, dc: Any, value: Mapping) -> None:
    """Sub-keys of a dataclass-typed key (``prune.keep``, ``scene.ply``): an unknown one is the usual
    one-line error with close matches, before OmegaConf's own message would be."""
    hints = _hints(dc)
    fields = {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(dc)}
    for sub, v in value.items():
        if sub not in fields:
            raise _unknown_key_error(owner, f"{prefix}.{sub}", [f"{prefix}.{n}" for n in fields])
        if isinstance(v, Mapping) and dataclasses.is_dataclass(fields[sub]):
            _check_subkeys(owner, f"{prefix}.{sub}", fields[sub], v)


def _unknown_key_error(owner: str, key: str, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{owner}: unknown key {key!r}{hint} (valid keys: {', '.join(valid) or 'none'})")


def validate_params(owner: str, obj: Any, params: Mapping[str, Any]) -> dict:
    """Check ``params`` against what ``obj`` declares; return them coerced to the declared types.

    Args:
        owner: how errors name the plugin, e.g. ``"augmentations plugin 'rotate'"``.
    Raises:
        ConfigError: an unknown key (with close matches and the valid keys), a missing required key,
            or a value of the wrong type.
    """
    declared, var_kw = _params_cached(obj)
    by_name = {p.name: p for p in declared}
    out = {}
    for key, value in params.items():
        p = by_name.get(key)
        if p is None:
            if not var_kw:
                raise _unknown_key_error(owner, key, by_name)
            out[key] = _to_python(value)
            continue
        out[key] = _coerce(owner, p, value)
        p.check(owner, out[key])
    missing = [p.name for p in declared if p.required and p.name not in out]
    if missing:
        raise ConfigError(f"{owner}: missing required key {missing[0]!r} (declared: {', '.join(by_name)})")
    return out


def normalize_node(kind: str, node: Any) -> dict:
    """Turn a component given as a name, a preset name, or a mapping into ``{name: ..., **params}``."""
    kind = registry.resolve_kind(kind)
    if node is None:
        raise ConfigError(f"no {kind} plugin given")
    if isinstance(node, str):
        node = {"name": node}
    node = dict(_to_python(node))
    preset_name = node.pop("preset", None)
    name = node.get("name")
    if preset_name is None and isinstance(name, str):
        if registry.preset(kind, name) is not None and name not in registry.discover()[kind]:
            preset_name = node.pop("name")
    if preset_name is not None:
        base = registry.preset(kind, preset_name)
        if base is None:
            known = sorted(registry.catalogue()["presets"].get(kind) or {})
            close = difflib.get_close_matches(preset_name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {kind} preset {preset_name!r}{hint}")
        node = merge_nodes(copy.deepcopy(dict(base)), node)
    if "name" not in node:
        raise ConfigError(f"{kind} component {node!r} has no 'name'")
    return node


def create(kind: str, node: Any = None, /, **params: Any) -> Any:
    """Build a plugin instance: ``create("augmentations", "rotate")``,
    ``create("students", {"name": "resnet18", "num_classes": 10})`` or ``create(kind, name, **params)``.

    Workflows are built from their validated DictConfig (``cls(config)``); every other kind as
    ``cls(**params)``.
    """
    kind = registry.resolve_kind(kind)
    node = normalize_node(kind, node)
    node.update(params)
    name = node.pop("name")
    cls = registry.load_plugin(kind, name)
    owner = f"{kind} plugin {name!r}"
    if kind == "workflows":
        return cls(_workflow_config(cls, name, node))
    return cls(**validate_params(owner, cls, node))


# ---------------------------------------------------------------------------------------------
# run configs: recipe or YAML file + overrides -> validated workflow config


def _split_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, _, text = item.partition("=")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 on the command line (surrogate escapes)
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(
            f"key {key.strip()!r}: the value {shown!r} is not valid UTF-8 (rename the file or "
            "folder, or run with a UTF-8 locale)"
        ) from None
    path = key.strip().split(".")
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {item!r} has an empty key")
    try:  # OmegaConf's grammar for the value: numbers, booleans, null, [lists], {maps}, strings
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)["v"]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse the value of override {item!r}: {str(exc).splitlines()[0]}") from exc
    return path, value


def apply_overrides(raw: Mapping[str, Any], items: Iterable[str]) -> dict:
    """Apply ``key=value`` overrides in order, each with :func:`merge_nodes` semantics.

    Order matters and is kept: ``data=imagefolder data.root=~/pets`` first replaces the ``data``
    component (dropping the old plugin's parameters), then sets a parameter of the new one; a
    component given by name (``teacher=dinov2_vitl14``) gains parameters from later dotted keys.
    """
    out = copy.deepcopy(dict(raw))
    for item in items:
        path, value = _split_override(item)
        node = out
        for key in path[:-1]:
            cur = node.get(key)
            if isinstance(cur, str):  # a component given by name (or preset) gets parameters
                cur = {"name": cur}
            elif not isinstance(cur, Mapping):
                cur = {}
            node[key] = dict(cur)
            node = node[key]
        last = path[-1]
        node[last] = merge_nodes(node[last], value) if last in node else value
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """``["a.b=1", "model=resnet18"]`` -> nested dict; values parsed as YAML scalars/lists."""
    return apply_overrides({}, items)


def merge_nodes(base: Any, override: Any) -> Any:
    """Recursive merge where a component whose ``name`` changes is replaced, not merged."""
    if isinstance(base, Mapping) and isinstance(override, str) and "name" in base:
        return {"name": override}
    if not isinstance(base, Mapping) or not isinstance(override, Mapping):
        return copy.deepcopy(override)
    if "name" in base and "name" in override and override["name"] != base["name"]:
        return copy.deepcopy(dict(override))
    out = dict(base)
    for k, v in override.items():
        out[k] = merge_nodes(out[k], v) if k in out else copy.deepcopy(v)
    return out


def load_run_config(source: str | Mapping | None, overrides: Iterable[str] = ()) -> dict:
    """A recipe name from ``registry.yaml``, a workflow name, or a YAML file path, merged with
    ``key=value`` overrides.

    Returns a plain dict (unvalidated). A recipe may ``extends:`` another recipe.
    """
    if source is None:
        raw: dict = {}
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        recipes = registry.catalogue()["recipes"]
        path = Path(source).expanduser()
        if source in recipes:
            raw = _recipe(source)
        elif path.suffix in (".yaml", ".yml", ".json") or path.is_file():
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} does not exist")
            try:
                loaded = OmegaConf.load(path)  # yaml safe loading
            except Exception as exc:
                raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
            raw = OmegaConf.to_container(loaded, resolve=False) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: the top level must be a mapping")
            if "extends" in raw:
                raw = merge_nodes(_recipe(raw.pop("extends")), raw)
        elif source in registry.discover()["workflows"]:  # a bare workflow with its defaults
            raw = {"workflow": source}
        else:
            close = difflib.get_close_matches(
                source, list(recipes) + list(registry.discover()["workflows"]), n=3, cutoff=0.5
            )
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{source!r} is neither a recipe, a workflow nor a config file{hint} "
                f"(recipes: {', '.join(sorted(recipes)) or 'none'}; workflows: {', '.join(sorted(registry.discover()['workflows'])) or 'none'})"
            )
    return apply_overrides(raw, overrides)


def _recipe(name: str, _seen: tuple = ()) -> dict:
    recipes = registry.catalogue()["recipes"]
    if name not in recipes:
        raise ConfigError(f"unknown recipe {name!r} (recipes: {', '.join(sorted(recipes))})")
    if name in _seen:
        raise ConfigError(f"recipe {name!r} extends itself")
    raw = copy.deepcopy(dict(recipes[name]))
    raw.pop("description", None)  # for `fulcra recipes`, not a workflow key
    parent = raw.pop("extends", None)
    return merge_nodes(_recipe(parent, _seen + (name,)), raw) if parent else raw


def _workflow_config(cls: Any, name: str, raw: Mapping[str, Any]) -> DictConfig:
    owner = f"workflows plugin {name!r}"
    declared = plugin_params(cls)
    by_name = {p.name: p for p in declared}
    cfg_cls = getattr(cls, "Config", None)
    values: dict = {}
    if cfg_cls is not None and dataclasses.is_dataclass(cfg_cls):
        values = OmegaConf.to_container(OmegaConf.structured(cfg_cls), resolve=False)  # defaults
    for key, value in raw.items():
        if key not in by_name:
            raise _unknown_key_error(owner, key, [*by_name, *(k for k in COMMON_KEYS if k != "workflow")])
        p = by_name[key]
        if isinstance(value, Mapping) and dataclasses.is_dataclass(p.annotation):
            _check_subkeys(owner, key, p.annotation, value)
        if p.kind is not None:
            default = values.get(key)
            merged = merge_nodes(default, value) if isinstance(default, Mapping) else value
            values[key] = _validate_component(p.kind, merged, f"{owner}, key {key!r}")
        elif isinstance(values.get(key), Mapping) and isinstance(value, Mapping):
            values[key] = merge_nodes(values[key], value)
        else:
            values[key] = value
            p.check(owner, value)
    for p in declared:  # validate component defaults too
        if p.kind is not None and p.name not in raw and values.get(p.name) is not None:
            values[p.name] = _validate_component(p.kind, values[p.name], f"{owner}, key {p.name!r}")
    if cfg_cls is not None and dataclasses.is_dataclass(cfg_cls):
        components = {k: values.pop(k) for k in list(values) if k in by_name and by_name[k].kind is not None}
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(cfg_cls), values)
            for k, v in components.items():  # replace, never merge: a renamed component drops old params
                cfg[k] = v
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"{owner}: bad value for key {key!r}: {str(exc).splitlines()[0]}") from exc
    else:
        validate_params(
            owner, cls, {k: v for k, v in values.items() if by_name.get(k) is None or by_name[k].kind is None}
        )
        cfg = OmegaConf.create(values)
    OmegaConf.set_struct(cfg, True)
    return cfg


def _validate_component(kind: str, node: Any, where: str) -> dict:
    try:
        node = normalize_node(kind, node)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    params = {k: v for k, v in node.items() if k != "name"}
    try:
        cls = registry.load_plugin(kind, node["name"])
    except UnknownPluginError as exc:
        raise UnknownPluginError(f"{where}: {exc}") from exc
    if registry.resolve_kind(kind) == "workflows":
        _workflow_config(cls, node["name"], params)
        return node
    checked = validate_params(f"{where} ({kind} plugin {node['name']!r})", cls, params)
    return {"name": node["name"], **checked}


def resolve_run_config(raw: Mapping[str, Any]) -> tuple[str, DictConfig, dict]:
    """Split a run config into (workflow name, validated workflow config, common keys)."""
    raw = dict(raw)
    if "workflow" not in raw:
        raise ConfigError("the config names no 'workflow' (e.g. workflow: search)")
    common = {k: raw.pop(k) for k in COMMON_KEYS if k in raw}
    name = common["workflow"]
    cls = registry.load_plugin("workflows", name)
    return name, _workflow_config(cls, name, raw), common


def to_yaml(cfg: Any) -> str:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_yaml(cfg, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(cfg))
