"""Config: parameter validation, presets, recipes, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fulcra import config, registry
from fulcra.errors import ConfigError


class Widget:
    """A plugin declaring its parameters by signature."""

    def __init__(self, size: int = 3, rate: float = 0.1, mode: str = "a", tags: list = None):
        self.size, self.rate, self.mode = size, rate, mode


class Boxed:
    @dataclass
    class Config:
        depth: int = field(default=2, metadata={"help": "number of blocks"})
        width: float = 1.0

    def __init__(self, depth: int = 2, width: float = 1.0):
        self.depth, self.width = depth, width


def test_unknown_key_names_key_plugin_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        config.validate_params("students plugin 'widget'", Widget, {"szie": 4})
    msg = str(exc.value)
    assert "'szie'" in msg and "students plugin 'widget'" in msg and "did you mean 'size'" in msg
    assert "valid keys: mode, rate, size, tags" in msg


def test_mistyped_value_is_an_error_and_strings_are_coerced():
    with pytest.raises(ConfigError, match="'size' expects int"):
        config.validate_params("w", Widget, {"size": "big"})
    assert config.validate_params("w", Widget, {"size": "7", "rate": 1})["size"] == 7


def test_dataclass_config_params_and_help():
    params = {p.name: p for p in config.plugin_params(Boxed)}
    assert params["depth"].help == "number of blocks" and params["depth"].default == 2
    with pytest.raises(ConfigError, match="'dpeth'"):
        config.validate_params("b", Boxed, {"dpeth": 1})


def test_overrides_parse_nested_and_typed():
    assert config.parse_overrides(["a.b=3", "c=x", "d=[1,2]"]) == {"a": {"b": 3}, "c": "x", "d": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_overrides(["novalue"])


def test_renaming_a_component_drops_inherited_params():
    base = {"model": {"name": "wrn_40_2", "depth": 40}, "lr": 0.1}
    assert config.merge_nodes(base, {"model": "resnet18"})["model"] == {"name": "resnet18"}
    assert config.merge_nodes(base, {"model": {"depth": 28}})["model"] == {"name": "wrn_40_2", "depth": 28}
    assert config.merge_nodes(base, {"model": {"name": "x", "k": 1}})["model"] == {"name": "x", "k": 1}


def test_presets_expand_and_are_overridable(monkeypatch):
    cat = registry.catalogue()
    monkeypatch.setitem(cat["presets"], "hooks", {"quiet_jsonl": {"name": "jsonl", "filename": "quiet.jsonl"}})
    node = config.normalize_node("hooks", "quiet_jsonl")
    assert node == {"name": "jsonl", "filename": "quiet.jsonl"}
    node = config.normalize_node("hooks", {"preset": "quiet_jsonl", "filename": "x.jsonl"})
    assert node["filename"] == "x.jsonl"
    with pytest.raises(ConfigError, match="unknown hooks preset 'quiet_jsnl'.*quiet_jsonl"):
        config.normalize_node("hooks", {"preset": "quiet_jsnl"})


def test_recipes_extend_and_override(monkeypatch):
    cat = registry.catalogue()
    monkeypatch.setitem(
        cat,
        "recipes",
        {"base": {"workflow": "w", "lr": 0.1, "model": {"name": "m", "d": 1}}, "child": {"extends": "base", "lr": 0.2}},
    )
    raw = config.load_run_config("child", ["model.d=5", "epochs=3"])
    assert raw == {"workflow": "w", "lr": 0.2, "model": {"name": "m", "d": 5}, "epochs": 3}
    with pytest.raises(ConfigError, match="did you mean child"):
        config.load_run_config("chlid")


def test_yaml_config_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("workflow: w\nlr: 0.5\n")
    assert config.load_run_config(str(p), ["lr=0.25"]) == {"workflow": "w", "lr": 0.25}
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.load_run_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_run_config(str(tmp_path / "missing.yaml"))


def test_a_bare_workflow_name_runs_with_its_defaults(tmp_path):
    from fulcra.testing import fake_distribution

    mods = {
        "wf_mod.py": "class W:\n    def __init__(self, config):\n        self.config = config\n    def run(self, ctx):\n        return {}\n"
    }
    with fake_distribution(tmp_path, "wf-dist", {"fulcra.workflows": {"my_wf": "wf_mod:W"}}, mods):
        assert config.load_run_config("my_wf", ["seed=3"]) == {"workflow": "my_wf", "seed": 3}
        with pytest.raises(ConfigError, match="did you mean.*my_wf"):
            config.load_run_config("my_wff")


def test_overrides_apply_in_order_to_components():
    base = {"workflow": "w", "data": {"name": "digits", "size": 16}, "teacher": {"name": "probed", "head": "linear"}}
    out = config.load_run_config(base, ["data=imagefolder", "data.root=/pets", "teacher.head=mlp"])
    assert out["data"] == {"name": "imagefolder", "root": "/pets"}
    assert out["teacher"] == {"name": "probed", "head": "mlp"}
    out = config.load_run_config({"workflow": "w"}, ["teacher=dinov2_vitl14", "teacher.weights=/w.pth"])
    assert out["teacher"] == {"name": "dinov2_vitl14", "weights": "/w.pth"}


def test_declared_ranges_and_choices_are_enforced():
    class Ranged:
        @dataclass
        class Config:
            seeds: int = field(default=3, metadata={"min": 1})
            mode: str = field(default="a", metadata={"choices": ["a", "b"]})

        def __init__(self, seeds: int = 3, mode: str = "a"):
            pass

    assert config.validate_params("r", Ranged, {"seeds": 2, "mode": "b"}) == {"seeds": 2, "mode": "b"}
    with pytest.raises(ConfigError, match="'seeds' must be >= 1, got 0"):
        config.validate_params("r", Ranged, {"seeds": 0})
    with pytest.raises(ConfigError, match="'mode' must be one of 'a', 'b', got 'c'"):
        config.validate_params("r", Ranged, {"mode": "c"})
