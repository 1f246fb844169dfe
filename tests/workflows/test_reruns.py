"""Reruns into the same ``out=`` reuse only what their inputs still match, recompute the rest, and
say which; another workflow's folder is refused."""

import json
import sys
from pathlib import Path

import pytest

from fulcra.errors import ConfigError
from fulcra.runner import run

sys.path.insert(0, str(Path(__file__).parent))
from _slack_tiny import TINY, Notes  # noqa: E402


def _run(out, *extra):
    notes = Notes()
    results = run("slack-digits", [f"out={out}", *TINY, *extra], hooks=[notes])
    return results, notes.messages, json.loads((out / "policy.json").read_text())


def test_rerun_reuses_unchanged_stages_and_recomputes_changed_ones(tmp_path):
    out = tmp_path / "run"
    r1, msgs, pol1 = _run(out)
    assert not any(m.startswith("reusing") for m in msgs)
    r2, msgs, pol2 = _run(out)
    assert "reusing search (same inputs as the stored result)" in msgs
    assert pol2 == pol1 and r2["results"] == r1["results"]
    # the README's example: a changed search option recomputes the search and everything after it
    r3, msgs, pol3 = _run(out, "optimizer.rounds=2", "seed=1")
    line = next(m for m in msgs if m.startswith("recomputing search"))
    assert "optimizer.rounds 1 -> 2" in line and "seed 0 -> 1" in line
    assert any(m.startswith("recomputing eval/slack") for m in msgs)
    assert pol3 != pol1
    # an evaluation option: the search is reused, the evaluations are recomputed
    _, msgs, pol4 = _run(out, "optimizer.rounds=2", "seed=1", "eval_epochs=0.2")
    assert "reusing search (same inputs as the stored result)" in msgs and pol4 == pol3
    assert any(m.startswith("recomputing eval/slack: eval_epochs 0.1 -> 0.2") for m in msgs)


def test_another_workflows_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("workflow: distill\nout: x\n")
    with pytest.raises(ConfigError, match=r"holds a 'distill' run"):
        run("slack-digits", [f"out={out}", *TINY])
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # nothing written


@pytest.mark.parametrize("value", ["null", "123"])
def test_out_must_be_a_path(tmp_path, value):
    with pytest.raises(ConfigError, match=r"key 'out': expected a folder path"):
        run("slack-digits", [f"out={value}", *TINY])
