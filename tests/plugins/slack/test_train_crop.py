"""Table A.3's SLACK pre-processing on ImageNet-100 / DomainNet: R(256) + RandomCrop(224) for training,
R(256) + CenterCrop(224) for validation and test (``data.train_size`` + the workflow's ``train_crop``)."""

from __future__ import annotations

import torch

from fulcra_plugins.slack.common import center_crops, random_crops


def test_random_crops_are_uniform_windows_and_batch_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.int64).view(2, 3, 10, 12).repeat(40, 1, 1, 1)
    out = random_crops(x, 6, g)
    assert out.shape == (80, 3, 6, 6)
    # every crop is a window of its own image: its top-left pixel tells where it was cut
    tops, lefts = set(), set()
    for i in range(80):
        v = int(out[i, 0, 0, 0]) - int(x[i, 0, 0, 0])
        y, xx = divmod(v, 12)
        assert torch.equal(out[i], x[i, :, y : y + 6, xx : xx + 6])
        tops.add(y)
        lefts.add(xx)
    assert tops == set(range(5)) and lefts == set(range(7))  # every position reachable
    # the same draws give each image the same crop whatever the batch
    a = random_crops(x[:10], 6, torch.Generator().manual_seed(3))
    b = random_crops(x[:10], 6, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_center_crops_match_torchvision():
    import torchvision.transforms.v2.functional as F

    x = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    assert torch.equal(center_crops(x, 224), F.center_crop(x, [224, 224]))
    y = torch.randint(0, 256, (2, 3, 9, 13), dtype=torch.uint8)
    assert torch.equal(center_crops(y, 6), F.center_crop(y, [6, 6]))


def test_loaders_train_size_and_search_workflow_train_crop(tmp_path):
    import json

    from torchvision.io import write_png

    from fulcra.runner import run

    root = tmp_path / "domainnet"
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (root / "painting" / c).mkdir(parents=True)
        for i in range(12):
            img = torch.randint(0, 256, (3, 14, 18), dtype=torch.uint8, generator=g)
            write_png(img, str(root / "painting" / c / f"{c}{i}.png"))
    import fulcra

    data = fulcra.create("datasets", {"name": "domainnet", "root": str(root), "domain": "painting", "size": 8,
                                      "resize": 10, "train_size": 10, "val_fraction": 0.25})  # fmt: skip
    sp = data.splits()
    assert sp["train"][0][0].shape == (3, 10, 10) and sp["val"][0][0].shape == (3, 8, 8)
    assert sp["test"][0][0].shape == (3, 8, 8)
    out = tmp_path / "run"
    res = run(
        "slack-domainnet-painting",
        [
            f"data.root={root}", "data.size=8", "data.resize=10", "data.train_size=10", "train_crop=8",
            "model=small_cnn", "optimizer.pretrain_epochs=1", "optimizer.rounds=1", "optimizer.retrain_steps=2",
            "optimizer.unrolled_steps=2", "optimizer.batch_size=4", "optimizer.b_aug=2", "eval_epochs=1",
            "eval_seeds=1", "eval_batch_size=8", f"out={out}",
        ],
        hooks=[],
    )  # fmt: skip
    assert "slack" in json.loads((out / "results.json").read_text()) and res["results"]


def test_evaluation_training_takes_the_official_sgd_and_warm_up(monkeypatch):
    """The official configs/train/*.yaml: plain SGD (no Nesterov), 5 warm-up epochs on ImageNet-100."""
    import fulcra_plugins.slack.common as C
    from fulcra.runner import prepare

    seen = {}

    class FakeTrainer:
        def __init__(self, model, data, loss, **kw):
            seen.update(kw)

        def fit(self):
            return None

    monkeypatch.setattr(C, "Trainer", FakeTrainer)
    x, y = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    C.train_with_policy(torch.nn.Linear(1, 1), x, y, None, steps=10, batch_size=2, lr=0.1, weight_decay=0.0,
                        nesterov=False, warmup_steps=3)  # fmt: skip
    assert seen["nesterov"] is False and seen["warmup_steps"] == 3
    cfg = prepare("slack-imagenet100", [])[1]
    assert cfg.eval_nesterov is False and cfg.eval_warmup_epochs == 5 and cfg.train_crop == 224
    assert prepare("slack-cifar100", [])[1].eval_nesterov is False
    assert prepare("slack-digits", [])[1].eval_nesterov is True  # its table was measured so
