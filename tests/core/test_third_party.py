"""A third-party plugin distribution (tests/example_plugin) plugs in without touching the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fulcra
from fulcra.testing import check_plugin


def test_listed_with_its_distribution(example):
    rows = {(r["kind"], r["name"]): r for r in fulcra.status()}
    row = rows[("augmentations", "checker_invert")]
    assert row["distribution"] == "fulcra-example" and row["available"]
    assert rows[("workflows", "toy_train")]["available"]


def test_conformance_of_third_party_op_and_scene(example):
    check_plugin("augmentations", "checker_invert")
    check_plugin("scenes", "matrix_scene")


def test_used_in_a_workflow_from_a_config(example, tmp_path):
    from fulcra.runner import run

    cfg = tmp_path / "toy.yaml"
    cfg.write_text("workflow: toy_train\naugmentation: {name: checker_invert}\nepochs: 2\n")
    from fulcra_example import CountingHook

    CountingHook.steps = 0
    results = run(str(cfg), [f"out={tmp_path / 'run'}", "magnitude=0.25"], hooks=["counter", "jsonl"])
    assert results["op"] == "checker_invert" and 0.0 <= results["accuracy"] <= 1.0
    assert CountingHook.steps == 8  # 64 samples / 16 per batch * 2 epochs
    events = [json.loads(l)["event"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("step") == 8 and "checkpoint" in events


def test_cli_lists_it_and_rejects_a_misspelt_key(example, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "fulcra", "plugins", "--json", "--kind", "augmentations"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    names = {r["name"]: r for r in json.loads(out.stdout)}
    assert names["checker_invert"]["distribution"] == "fulcra-example"
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("workflow: toy_train\nmagnitdue: 0.3\n")
    res = subprocess.run(
        [sys.executable, "-m", "fulcra", "run", str(cfg), f"out={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "'magnitdue'" in lines[0] and "toy_train" in lines[0] and "did you mean 'magnitude'" in lines[0]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fulcra",
            "run",
            str(cfg).replace("toy", "toy"),
            "augmentation=checker_invret",
            "magnitdue=0.2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_component_param_typo_is_caught_before_running(example, tmp_path):
    from fulcra.errors import ConfigError
    from fulcra.runner import prepare

    with pytest.raises(ConfigError, match=r"augmentations plugin 'checker_invert'.*'value_rnage'.*value_range"):
        prepare({"workflow": "toy_train", "augmentation": {"name": "checker_invert", "value_rnage": [1, 2]}})


def test_third_party_command_runs_from_the_cli(example):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-m", "fulcra", "hello", "world", "--times", "2"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["hello world", "hello world"]
    top = subprocess.run([sys.executable, "-m", "fulcra", "--help"], capture_output=True, text=True, env=env)
    assert "hello" in top.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "fulcra", "hello", "world", "--times", "0"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "fulcra: error: hello: --times must be >= 1, got 0"
    ]
    check_plugin("commands", "hello")
