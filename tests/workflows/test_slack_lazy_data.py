"""SLACK on an image-file dataset: read into memory once, or decoded batch by batch as drawn
(``data_in_memory``): the same policy and the same evaluation, bit for bit."""

import json
import sys
from pathlib import Path

import pytest
import torch

from fulcra.errors import ConfigError
from fulcra.runner import run

sys.path.insert(0, str(Path(__file__).parent))
from _digits_folder import write_digits_folder  # noqa: E402
from _slack_tiny import TINY as _TINY  # noqa: E402
from _slack_tiny import Notes  # noqa: E402

TINY = [a for a in _TINY if not a.startswith(("data.", "eval_epochs="))] + ["eval_epochs=0.2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pytest.importorskip("torchvision")
    return write_digits_folder(tmp_path_factory.mktemp("digits_png"))


def _run(out, folder, mode, notes=None, workers="auto"):
    data = [f"data={{name: imagefolder, root: '{folder}', size: 10, val_fraction: 0.2}}"]
    args = [f"out={out}", *data, *TINY, f"data_in_memory={mode}", f"data_workers={workers}"]
    res = run("slack-digits", args, hooks=[notes or Notes()])
    return res, json.loads((out / "policy.json").read_text())


def test_lazy_and_in_memory_data_give_the_same_run(tmp_path, folder):
    from fulcra_plugins.slack import common

    n_eager, n_lazy = Notes(), Notes()
    eager, p_eager = _run(tmp_path / "eager", folder, "true", n_eager)
    lazy, p_lazy = _run(tmp_path / "lazy", folder, "false", n_lazy, workers=2)
    assert any("decoded as drawn" in m and "2 decoding workers" in m for m in n_lazy.messages)
    # every batch of the search came from the two workers, in the order the search drew them
    assert any(m.startswith("search: ") and "by 2 workers, 0 drawn off the plan" in m for m in n_lazy.messages)
    assert not any("decoded as drawn" in m for m in n_eager.messages)
    assert p_lazy == p_eager
    dump = lambda r, out: json.dumps(r, sort_keys=True, default=str).replace(str(out), "OUT")  # noqa: E731
    assert dump(lazy, tmp_path / "lazy") == dump(eager, tmp_path / "eager")
    assert eager["results"]["slack"]["n"] == 1  # an evaluation ran
    # auto reads this small set into memory; a budget of 0 bytes keeps it a view, with the same result
    from fulcra_plugins.data import ImageFolder

    train = ImageFolder(root=str(folder), size=10, val_fraction=0.2).splits()["train"]
    x_auto, y_auto = common.as_tensors(train, "auto")
    assert isinstance(x_auto, torch.Tensor)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "IN_MEMORY_BYTES", 0)
        x_view, y_view = common.as_tensors(train, "auto")
    assert not isinstance(x_view, torch.Tensor) and torch.equal(y_view, y_auto)
    assert torch.equal(x_view[torch.arange(len(x_view))], x_auto)
    assert torch.equal(common.channel_mean(x_view), common.channel_mean(x_auto))

    class NoLabels(torch.utils.data.Dataset):  # targets only through the items
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return train[i]

    for mode in (True, False):
        x, y = common.as_tensors(NoLabels(), mode)
        assert torch.equal(y, y_auto) and torch.equal(x[torch.arange(len(x))], x_auto)
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(common.take(x_view, idx)[:], x_auto[idx])
    assert torch.equal(common.center_crops(x_view, 6)[:], common.center_crops(x_auto, 6))


def test_data_in_memory_must_be_auto_true_or_false(tmp_path, folder):
    with pytest.raises(ConfigError, match="data_in_memory must be auto, true or false"):
        _run(tmp_path / "x", folder, "sometimes")
    with pytest.raises(ConfigError, match="'slack': data_workers must be auto or a non-negative integer"):
        _run(tmp_path / "x", folder, "false", workers="-2")
