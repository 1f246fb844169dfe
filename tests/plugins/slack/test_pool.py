"""``fulcra pool``: the 4 search splits x 4 evaluation runs protocol of Tables 3.1-3.3."""

from __future__ import annotations

import json

import pytest

from fulcra.cli import main
from fulcra.engine import mean_ci
from fulcra_plugins.slack.pool import pool_results


def _run_dir(tmp_path, name, per_method):
    d = tmp_path / name
    d.mkdir()
    res = {m: {**mean_ci(v), "seeds": list(range(len(v)))} for m, v in per_method.items()}
    (d / "results.json").write_text(json.dumps(res))
    return d


def test_pools_every_evaluation_of_every_split(tmp_path, capsys):
    runs = [
        _run_dir(tmp_path, f"s{i}", {"slack": [0.90 + 0.01 * i + 0.001 * j for j in range(4)], "uniform": [0.88] * 4})
        for i in range(4)
    ]
    pooled = pool_results(runs)
    slack = [0.90 + 0.01 * i + 0.001 * j for i in range(4) for j in range(4)]
    assert pooled["slack"]["n"] == 16 and pooled["slack"]["runs"] == 4
    assert pooled["slack"]["mean"] == pytest.approx(sum(slack) / 16)
    assert pooled["slack"]["ci95"] == pytest.approx(mean_ci(slack)["ci95"])
    assert main(["pool", *map(str, runs), "--out", str(tmp_path / "table.md")]) == 0
    out = capsys.readouterr().out
    assert "| slack | 91.65 ± 0.62 " in out and "| 4 | 16 |" in out
    assert (tmp_path / "table.md").read_text() == out
    assert json.loads((tmp_path / "table.json").read_text())["uniform"]["n"] == 16


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    good = _run_dir(tmp_path, "good", {"slack": [0.9, 0.91]})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{not json")
    for args, words in [
        ([str(tmp_path / "missing")], ["results.json: not found"]),
        ([str(tmp_path / "junk")], ["not valid JSON"]),
        ([str(good), str(good)], ["given twice"]),
    ]:
        assert main(["pool", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(w in err[0] for w in words), err
