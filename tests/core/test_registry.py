"""Registry: discovery, lazy import, and every error message."""

from __future__ import annotations

import sys

import pytest

import fulcra
from fulcra import registry
from fulcra.errors import DuplicatePluginError, MissingDependencyError, PluginLoadError, UnknownPluginError
from fulcra.testing import fake_distribution

OP_SOURCE = '''
import torch
from fulcra.interfaces import BaseAugmentationOp

class Flip(BaseAugmentationOp):
    """Horizontal flip (a third-party op)."""
    value_range = (0.0, 1.0)
    def __init__(self, strength: float = 1.0):
        super().__init__()
        self.strength = strength
    def apply(self, images, value):
        return images.flip(-1)
'''


def test_bundled_hooks_are_discovered_without_import():
    specs = {(s.kind, s.name): s for s in registry.plugin_specs("hooks")}
    assert ("hooks", "progress") in specs and specs[("hooks", "progress")].distribution == "fulcra"


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownPluginError) as exc:
        fulcra.load_plugin("hooks", "jsnol")
    assert "'jsonl'" in str(exc.value) and "did you mean" in str(exc.value)


def test_unknown_kind_is_named():
    with pytest.raises(UnknownPluginError, match="unknown plugin kind 'scnes'.*scenes"):
        registry.resolve_kind("scnes")


def test_singular_kind_is_accepted():
    assert registry.resolve_kind("scene") == "scenes"
    assert registry.resolve_kind("fulcra.refiners") == "refiners"


def test_missing_dependency_names_the_extra(tmp_path):
    mods = {"needs_dep/__init__.py": "import not_a_real_module_xyz\nclass Op: pass\n"}
    with fake_distribution(tmp_path, "needs-dep", {"fulcra.augmentations": {"needy": "needs_dep:Op"}}, mods):
        with pytest.raises(MissingDependencyError) as exc:
            fulcra.load_plugin("augmentations", "needy")
    assert "not_a_real_module_xyz" in str(exc.value) and "pip install" in str(exc.value)


def test_catalogued_but_uninstalled_plugin_names_its_extra(monkeypatch):
    cat = registry.catalogue()
    monkeypatch.setitem(
        cat["plugins"],
        "scenes",
        {
            **(cat["plugins"].get("scenes") or {}),
            "fancy": {"entry_point": "fancy:Scene", "extra": "fancy3d", "summary": ""},
        },
    )
    with pytest.raises(MissingDependencyError, match=r"pip install 'fulcra\[fancy3d\]'"):
        fulcra.load_plugin("scenes", "fancy")
    rows = {r["name"]: r for r in registry.status("scenes")}
    assert rows["fancy"]["available"] is False and "fancy3d" in rows["fancy"]["reason"]


def test_two_distributions_claiming_one_name_are_both_named(tmp_path):
    with fake_distribution(
        tmp_path / "a", "dist-alpha", {"fulcra.augmentations": {"flip": "dup_a:Flip"}}, {"dup_a.py": OP_SOURCE}
    ):
        with fake_distribution(
            tmp_path / "b", "dist-beta", {"fulcra.augmentations": {"flip": "dup_b:Flip"}}, {"dup_b.py": OP_SOURCE}
        ):
            with pytest.raises(DuplicatePluginError) as exc:
                fulcra.load_plugin("augmentations", "flip")
    assert "dist-alpha" in str(exc.value) and "dist-beta" in str(exc.value)


def test_import_failure_shows_the_original_exception(tmp_path):
    mods = {"broken_plugin.py": "raise RuntimeError('boom at import')\n"}
    with fake_distribution(tmp_path, "broken", {"fulcra.refiners": {"broken": "broken_plugin:R"}}, mods):
        with pytest.raises(PluginLoadError) as exc:
            fulcra.load_plugin("refiners", "broken")
    assert "RuntimeError: boom at import" in str(exc.value)
    assert isinstance(exc.value.__cause__, RuntimeError)
    assert "from broken" in str(exc.value)


def test_plugin_missing_required_members_is_rejected(tmp_path):
    mods = {"notascene.py": "class S:\n    pass\n"}
    with fake_distribution(tmp_path, "bad-scene", {"fulcra.scenes": {"bad": "notascene:S"}}, mods):
        with pytest.raises(PluginLoadError, match="lacks render"):
            fulcra.load_plugin("scenes", "bad")


def test_module_attr_reference(tmp_path):
    (tmp_path / "local_ops.py").write_text(OP_SOURCE)
    sys.path.insert(0, str(tmp_path))
    try:
        op = fulcra.create("augmentations", "local_ops:Flip", strength=0.5)
        assert op.strength == 0.5
        with pytest.raises(PluginLoadError, match="no attribute 'Nope'"):
            fulcra.load_plugin("augmentations", "local_ops:Nope")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("local_ops", None)


def test_lazy_import_only_on_use(tmp_path):
    mods = {"lazy_mod.py": OP_SOURCE}
    with fake_distribution(tmp_path, "lazy", {"fulcra.augmentations": {"lazyflip": "lazy_mod:Flip"}}, mods):
        assert any(s.name == "lazyflip" for s in registry.plugin_specs("augmentations"))
        assert "lazy_mod" not in sys.modules
        fulcra.load_plugin("augmentations", "lazyflip")
        assert "lazy_mod" in sys.modules


def test_import_fulcra_pulls_no_heavy_dependency():
    import subprocess

    code = (
        "import sys, fulcra; fulcra.plugin_specs(); heavy = [m for m in ('timm','open_clip','diffusers','gsplat',"
        "'segment_anything','sam2','scipy','sklearn','skimage','matplotlib','fulcra_plugins') if m in sys.modules];"
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
