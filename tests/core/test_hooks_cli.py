"""Hooks (pluggy) and the CLI's contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fulcra.errors import ConfigError
from fulcra.hooks import hookimpl, make_hook_relay


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def fulcra_step(self, workflow, step, metrics, total, stage):
        self.events.append(("step", workflow, step, dict(metrics)))

    @hookimpl
    def fulcra_run_end(self, workflow, results, out, error):
        self.events.append(("end", error))


def test_relay_calls_registered_hooks(tmp_path):
    rec = Recorder()
    relay = make_hook_relay([rec, "jsonl"], workflow="w", out=tmp_path)
    relay.step(step=1, metrics={"loss": 0.5})
    relay.end(results={"acc": 1.0}, out=tmp_path)
    assert rec.events == [("step", "w", 1, {"loss": 0.5}), ("end", None)]
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "step" and lines[0]["loss"] == 0.5 and lines[1]["results"] == {"acc": 1.0}


def test_disabled_relay_reports_nothing(tmp_path):
    rec = Recorder()
    make_hook_relay([rec], workflow="w", out=tmp_path, enabled=False).step(step=1, metrics={})
    assert rec.events == []


def test_misspelt_hook_is_an_error():
    class Typo:
        def fulcra_stepp(self, workflow, step, metrics, total, stage):  # no such hookspec
            pass

    with pytest.raises(ConfigError, match="fulcra_stepp"):
        make_hook_relay([Typo()])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fulcra", *args], capture_output=True, text=True)


def test_plugins_json_lists_every_kind():
    res = _cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {"hooks"} <= {r["kind"] for r in rows}
    for r in rows:
        assert set(r) >= {"kind", "name", "distribution", "available", "reason"}
        assert r["available"] or r["reason"]


def test_plugins_show_prints_parameters():
    res = _cli("plugins", "show", "hooks", "jsonl")
    assert res.returncode == 0 and "filename: str = 'metrics.jsonl'" in res.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("run", "no-such-recipe"), "neither a recipe, a workflow nor a config file"),
        (("plugins", "show", "hooks", "jsnol"), "did you mean 'jsonl'"),
        (("plugins", "show", "scnes", "torch"), "unknown plugin kind 'scnes'"),
        (("config", "show", "missing.yaml"), "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, needle):
    res = _cli(*args)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["run", "uplift-synthetic", "prune.kep=0.5"], r"unknown key 'prune\.kep'; did you mean 'prune\.keep'\?"),
        (["run", "uplift-synthetic", "outt=x"], r"unknown key 'outt'; did you mean 'out'\?.*out, pca"),
        (["run", "segment-synthetic", "extractor.patch_size=0"], r"'rgb'\): key 'patch_size' must be >= 1, got 0"),
        (["run", "slack-digits", "optimizer.ranges.shear_xx=[0,1]"], r"'ranges\.shear_xx' names no op .*'shear_x'"),
        (["run", "slack-digits", "optimizer.ranges.rotate=[0]"], r"'ranges\.rotate' must be \[v0, v1\], got \[0\]"),
        (
            ["run", "slack-digits", "optimizer.ops=[rotate,rotat]"],
            r"unknown augmentations plugin 'rotat'; did you mean 'rotate'",
        ),
        (["demo", "--only", "slak"], r"demo --only: unknown stage 'slak'; did you mean 'slack'\?"),
        (["run", "uplift", "scene.ply=/tmp/\udcff.ply"], r"key 'scene\.ply': the value .* is not valid UTF-8"),
    ],
)
def test_config_mistakes_are_one_line_before_anything_is_written(args, match, tmp_path, capsys):
    import re

    from fulcra.cli import main

    out = tmp_path / "out"
    rc = main([*args, f"out={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self").exists(), reason="needs /proc")
def test_an_out_folder_that_cannot_be_created_is_one_line(capsys):
    from fulcra.cli import main

    assert main(["run", "slack-digits", "out=/proc/fulcra-cannot-be-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key 'out': cannot create /proc/fulcra-cannot-be-here" in err[0]


def test_demo_report_rounds_numbers_and_embeds_images(tmp_path):
    from fulcra.cli import _report_items

    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "policy.png").write_bytes(b"\\x89PNG")
    lines = _report_items(
        {"accuracy": 0.912345678912, "values": [0.123456789], "plot": str(tmp_path / "stage" / "policy.png")}, tmp_path
    )
    assert "- `accuracy`: 0.9123" in lines and "- `values`: [0.1235]" in lines
    assert "![plot](stage/policy.png)" in lines


def test_demo_report_takes_long_sentences_that_are_not_paths(tmp_path):
    from fulcra.cli import _report_items

    note = "what this budget can show " * 20  # longer than a file name may be: Path.is_dir raises there
    lines = _report_items({"note": note, "nul": "a\x00b"}, tmp_path)
    assert any(line.startswith("- `note`:") for line in lines) and not any(line.startswith("![") for line in lines)
