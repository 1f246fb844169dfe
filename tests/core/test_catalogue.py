"""registry.yaml and pyproject.toml agree, and every bundled plugin passes its kind's conformance."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli backport
    import tomli as tomllib

from fulcra import create, registry
from fulcra.errors import DataNotFoundError, DeviceUnavailableError, MissingDependencyError, WeightsNotFoundError
from fulcra.interfaces import KINDS
from fulcra.testing import CONFORMANCE

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CATALOGUE = registry.catalogue()


def _pyproject_plugins() -> dict:
    eps = PYPROJECT["project"].get("entry-points", {})
    return {
        (g[len("fulcra.") :], n): v for g, table in eps.items() if g.startswith("fulcra.") for n, v in table.items()
    }


def _catalogue_plugins() -> dict:
    return {
        (k, n): meta["entry_point"] for k, table in CATALOGUE["plugins"].items() for n, meta in (table or {}).items()
    }


def test_catalogue_and_entry_points_agree():
    py, cat = _pyproject_plugins(), _catalogue_plugins()
    assert set(py) == set(cat), (
        f"only in pyproject: {sorted(set(py) - set(cat))}; only in registry.yaml: {sorted(set(cat) - set(py))}"
    )
    for key in py:
        assert py[key] == cat[key], f"{key}: pyproject says {py[key]}, registry.yaml says {cat[key]}"


def test_every_group_is_a_known_kind():
    for group in PYPROJECT["project"].get("entry-points", {}):
        if group.startswith("fulcra."):
            assert group[len("fulcra.") :] in KINDS, group


def test_catalogue_entries_are_complete():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for (kind, name), _ in _catalogue_plugins().items():
        meta = CATALOGUE["plugins"][kind][name]
        assert meta.get("summary"), f"{kind}/{name} has no summary"
        assert meta.get("extra") in extras | {None}, f"{kind}/{name}: unknown extra {meta.get('extra')!r}"


def test_recipes_name_installed_workflows():
    for name, recipe in CATALOGUE["recipes"].items():
        assert recipe.get("workflow") in registry.discover()["workflows"], (
            f"recipe {name}: no workflow {recipe.get('workflow')!r}"
        )


@pytest.mark.parametrize("kind,name", sorted(k for k in _catalogue_plugins() if k[0] in CONFORMANCE))
def test_bundled_plugin_conformance(kind, name):
    """Built with its ``conformance_params`` class attribute (tiny settings) or its defaults; plugins
    that need weights or data that are not here are skipped with the reason."""
    try:
        plugin = registry.load_plugin(kind, name)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    params = getattr(plugin, "conformance_params", None) or {}
    params = dict(params() if callable(params) else params)  # a callable may write a tiny input file first
    try:
        obj = create(kind, name, **params)
    except (WeightsNotFoundError, DataNotFoundError, MissingDependencyError, DeviceUnavailableError) as exc:
        # weights, data or a device (CUDA) not here
        pytest.skip(f"{kind}/{name} cannot be built here: {str(exc).splitlines()[0]} (set conformance_params)")
    try:
        CONFORMANCE[kind](obj)
    except (WeightsNotFoundError, MissingDependencyError, FileNotFoundError) as exc:  # lazy weight loading
        pytest.skip(f"{kind}/{name} cannot run here: {str(exc).splitlines()[0]}")
