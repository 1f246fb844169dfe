"""Architecture rules that hold by construction, checked on the source: the core imports no plugin,
and no bundled plugin package imports another one's private modules or names (``_x``), so each can
be replaced by a third party's distribution without touching the others."""

import ast
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli backport
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "framework" / "fulcra"
PLUGINS = ROOT / "plugins" / "fulcra_plugins"


def _imports(path: Path, package: list[str]):
    """``(absolute module, imported names)`` for every import in ``path`` (relative ones resolved
    against ``package``, the module's package as a list of parts)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]


def _package_of(path: Path, root: Path, top: str) -> list[str]:
    rel = path.relative_to(root).with_suffix("")
    parts = [top, *rel.parts]
    return parts[:-1] if parts[-1] != "__init__" else parts[:-1]


def test_the_core_imports_no_plugin():
    bad = []
    for path in CORE.rglob("*.py"):
        for mod, _ in _imports(path, _package_of(path, CORE, "fulcra")):
            if mod == "fulcra_plugins" or mod.startswith("fulcra_plugins."):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    # the lazy `fulcra.load_scene` alias is a string in a table, not an import
    assert not bad, "\n".join(bad)


def _plugin_modules() -> set[str]:
    """The modules that entry points name: each defines a plugin that a third party may replace."""
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    return {v.split(":")[0] for group in eps.values() for v in group.values() if v.startswith("fulcra_plugins.")}


def _is_submodule(mod: str, name: str) -> bool:
    base = PLUGINS.joinpath(*mod.split(".")[1:])
    return (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_plugin_imports_another_plugins_private_names():
    """Private names (``_x``) stay inside their plugin: another package may not import them at all,
    and within a package, a module may not take private names from a *plugin* module (one an entry
    point names, e.g. ``extractors.dinov2``); shared private helper modules of a package
    (``augment._kernels``) are for that package's own modules."""
    plugin_modules = _plugin_modules()
    bad = []
    for path in PLUGINS.rglob("*.py"):
        pkg = _package_of(path, PLUGINS, "fulcra_plugins")
        this = ".".join(pkg + ([] if path.stem == "__init__" else [path.stem]))
        own = pkg[1] if len(pkg) > 1 else path.stem  # the plugin package this file belongs to
        for mod, names in _imports(path, pkg):
            parts = mod.split(".")
            if parts[0] != "fulcra_plugins" or len(parts) < 2 or mod == this:
                continue
            private_names = [n for n in names if _private(n)]
            if parts[1] != own:
                if any(_private(p) for p in parts[1:]) or private_names:
                    bad.append(f"{path.relative_to(ROOT)}: from {mod} import {', '.join(names) or '*'}")
            elif mod in plugin_modules:
                taken = [n for n in private_names if not _is_submodule(mod, n)]  # a package's own `_x` modules are fine
                if taken:
                    bad.append(f"{path.relative_to(ROOT)}: private {', '.join(taken)} of plugin module {mod}")
    assert not bad, "\n".join(bad)
