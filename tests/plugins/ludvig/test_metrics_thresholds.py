import numpy as np
import pytest
import torch

from fulcra_plugins.ludvig import iou, localisation_hit, results_table
from fulcra_plugins.ludvig.reference import best_threshold
from fulcra_plugins.ludvig.tasks import MultiviewSegmentation, OpenVocabLocalisation
from fulcra_plugins.ludvig.thresholds import mean_filter, otsu


def test_iou_and_hits():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(torch.zeros(3), torch.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        iou(a, b[:2])
    assert localisation_hit((5, 5), boxes=[[0, 0, 2, 2], [4, 4, 6, 6]])
    assert not localisation_hit((3, 3), boxes=[[0, 0, 2, 2]])
    m = torch.zeros(10, 10, dtype=torch.bool)
    m[7, 2] = True
    assert localisation_hit((2, 7), mask=m)


def test_results_table_has_mean_row():
    t = results_table({"a": {"x": 0.5, "y": 1.0}, "b": {"x": 0.7}})
    lines = t.splitlines()
    assert lines[0] == "| scene | x | y |"
    assert lines[-1] == "| mean | 60.0 | 100.0 |"
    assert "| b | 70.0 | - |" in t


def test_mean_filter_matches_loop():
    x = torch.rand(7, 9, 2)
    valid, zeros = torch.zeros_like(x), torch.zeros_like(x)
    for i in range(7):
        for j in range(9):
            win = x[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3].reshape(-1, 2)
            valid[i, j] = win.mean(0)
            zeros[i, j] = win.sum(0) / 25  # zero padding, as F.conv2d(padding="same") in the official code
    torch.testing.assert_close(mean_filter(x, 5, padding="valid"), valid)
    torch.testing.assert_close(mean_filter(x, 5), zeros)
    k = torch.ones(1, 1, 5, 5) / 25
    conv = torch.nn.functional.conv2d(x[..., 0][None, None], k, padding="same")[0, 0]
    torch.testing.assert_close(mean_filter(x[..., 0], 5), conv)


def test_otsu_and_best_threshold():
    v = np.r_[np.random.default_rng(0).normal(0.2, 0.03, 500), np.random.default_rng(1).normal(0.8, 0.03, 300)]
    t = otsu(v)
    assert v[:500].max() <= t < v[500:].min()
    s = torch.linspace(0, 1, 100).reshape(10, 10)
    t, best = best_threshold(s, s > 0.62)
    assert best == 1.0 and 0.6 <= t <= 0.63


def test_task_plugins_metrics_and_losses():
    seg = MultiviewSegmentation()
    out = torch.zeros(2, 4, 4)
    out[:, :2] = 0.9
    tgt = out > 0.5
    m = seg.metric(out, tgt)
    assert m["iou"] == 1.0 and m["n"] == 2
    assert seg.reduce([m, {"iou": 0.0, "n": 2}])["iou"] == 0.5
    assert seg.loss(out.clamp(0.01, 0.99), tgt) > 0
    loc = OpenVocabLocalisation()
    rel = torch.zeros(2, 20, 20)
    rel[0, 3:6, 3:6] = 1
    rel[1, 12:16, 12:16] = 1
    tgt = torch.zeros(2, 20, 20, dtype=torch.bool)
    tgt[0, 2:8, 2:8] = True
    tgt[1, 0:5, 0:5] = True
    assert loc.metric(rel, tgt)["accuracy"] == 0.5
    assert torch.isfinite(loc.loss(rel, tgt))
