"""Sliding-window inference (mmseg's slide mode) against direct computations."""

from __future__ import annotations

import pytest
import torch

from fulcra import create
from fulcra.errors import ConfigError
from fulcra_plugins.tasks.sliding import slide_inference, window_counts, window_grid


def test_window_grid_is_mmsegs():
    # 11 rows, crop 4, stride 3: rows = (11 - 4 + 3 - 1) // 3 + 1 = 4; the last is moved back to end on 11
    assert [w[:2] for w in window_grid(11, 4, 4, 3)] == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert window_counts(11, 1, (4, 1), (3, 1))[:, 0].tolist() == [1, 1, 1, 2, 1, 1, 2, 2, 2, 2, 1]
    # an image smaller than the crop: one window, the whole image
    assert window_grid(3, 5, 8, 4) == [(0, 3, 0, 5)]
    # the thesis's (560, 560) windows, stride 280, on a 560 x 1120 image: 1 x 3 windows
    assert len(window_grid(560, 1120, 560, 280)) == 3
    c = window_counts(37, 53, (16, 20), (8, 7))
    assert c.min() >= 1


def test_slide_equals_whole_for_a_translation_equivariant_model():
    """A pointwise model (1x1 conv) sees the same input under every window: the averaged windows
    are the whole-image logits."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 5, 1)
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        whole = net(x)
    for crop, stride, wb in (((16, 20), (8, 7), 3), (16, 16, 1), (64, 32, 4)):
        torch.testing.assert_close(slide_inference(net, x, crop, stride, wb), whole, atol=1e-6, rtol=1e-6)


def test_slide_averages_windows_as_a_direct_loop():
    """Each window predicts a constant (its own mean) at a coarser resolution: the result is, pixel
    by pixel, the mean over the covering windows, computed here by a slow loop."""

    def fwd(w):  # [n, 3, h, w] -> [n, 2, 2, 3]: resolution differs from the window's, values constant
        m = w.mean(dim=(1, 2, 3))
        return torch.stack([m, -2 * m], 1)[:, :, None, None].expand(-1, -1, 2, 3)

    x = torch.rand(1, 3, 23, 30)
    crop, stride = (10, 12), (6, 5)
    got = slide_inference(fwd, x, crop, stride, window_batch=2)
    want = torch.zeros(1, 2, 23, 30)
    for i in range(23):
        for j in range(30):
            vals = [x[0, :, y1:y2, x1:x2].mean() for y1, y2, x1, x2 in window_grid(23, 30, crop, stride)
                    if y1 <= i < y2 and x1 <= j < x2]  # fmt: skip
            want[0, 0, i, j] = sum(vals) / len(vals)
            want[0, 1, i, j] = -2 * sum(vals) / len(vals)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_task_predict_modes_and_errors():
    task = create("tasks", "semantic_segmentation", inference="slide", crop_size=8)
    assert task.per_image and task.stride == (4, 4)
    net = torch.nn.Conv2d(3, 4, 1)
    x = torch.rand(1, 3, 13, 9)
    with torch.no_grad():
        torch.testing.assert_close(task.predict(net, x), net(x), atol=1e-6, rtol=1e-6)
    whole = create("tasks", "semantic_segmentation")
    assert not whole.per_image
    with pytest.raises(ConfigError, match="inference"):
        create("tasks", "semantic_segmentation", inference="tiles")
    with pytest.raises(ConfigError, match="crop_size"):
        create("tasks", "semantic_segmentation", inference="slide", crop_size=[8, 0])


def test_distill_evaluate_uses_slide_one_image_at_a_time():
    """The distill workflow's evaluate goes through task.predict: images of different sizes work, and a
    model that is exact under windows scores as its whole-image self."""
    from fulcra_plugins.distill.training import evaluate

    class Pointwise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def prepare(self, x):
            return x

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    model = Pointwise()
    items = []
    for h, w in ((20, 31), (17, 12)):
        x = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        with torch.no_grad():
            y = model(x[None].float() / 255).argmax(1)[0]
        y[:2] = 255
        items.append((x, y))
    task = create("tasks", "semantic_segmentation", inference="slide", crop_size=8, stride=5)
    m = evaluate(model, items, task, torch.device("cpu"))
    assert m["pixel_accuracy"] > 0.999 and m["miou"] > 0.99
