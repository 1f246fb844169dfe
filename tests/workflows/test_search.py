"""End to end: the ``search`` workflow writes its contract files, and a search interrupted mid-round
resumes to the very same final policy."""

import json

import pytest
import torch

from fulcra.interfaces import RunContext
from fulcra_plugins.data import Digits
from fulcra_plugins.slack import Slack
from fulcra_plugins.slack.models import SmallCNN


class _Hooks:
    """Records events; raises on the ``stop_at``-th checkpoint to emulate a kill mid-round."""

    def __init__(self, stop_at=None):
        self.stop_at, self.checkpoints = stop_at, 0

    def step(self, **kw):
        pass

    def evaluate(self, **kw):
        pass

    def checkpoint(self, **kw):
        self.checkpoints += 1
        if self.stop_at is not None and self.checkpoints == self.stop_at:
            raise KeyboardInterrupt("injected kill")


def _slack():
    return Slack(
        space="cifar",
        pretrain_steps=6,
        rounds=2,
        retrain_steps=3,
        unrolled_steps=4,
        batch_size=8,
        b_aug=2,
        upper_lr=50.0,
        checkpoint_every=2,
    )


def _data():
    s = Digits(size=12, seed=0).splits()
    return s["train"], s["val"]


def _factory():
    return SmallCNN(num_classes=10, width=4)


def test_search_killed_mid_round_resumes_to_same_policy(tmp_path):
    train, val = _data()
    full = _slack().search(
        train, val, _factory, RunContext(out=tmp_path / "a", device=torch.device("cpu"), hooks=_Hooks())
    )
    # kill during round 1 (the 2nd checkpoint falls inside the pre-training, later ones in the rounds)
    ctx = RunContext(out=tmp_path / "b", device=torch.device("cpu"), hooks=_Hooks(stop_at=6))
    with pytest.raises(KeyboardInterrupt):
        _slack().search(train, val, _factory, ctx)
    state = torch.load(tmp_path / "b" / "search" / "state_rank0.pt", weights_only=True)["state"]
    assert state["phase"] == "rounds" and 0 < state["j"] < 7
    resumed = _slack().search(
        train, val, _factory, RunContext(out=tmp_path / "b", device=torch.device("cpu"), hooks=_Hooks())
    )
    assert torch.equal(resumed.logits, full.logits) and torch.equal(resumed.mu, full.mu)
    assert not torch.equal(full.logits, torch.zeros_like(full.logits))  # the policy did move


def test_search_from_a_view_decoded_ahead_resumes_to_the_same_policy(tmp_path):
    """Images seen through a DatasetImages view with a decoding worker: the search takes every
    draw from its plan (also after the resume), and ends with the in-memory run's policy."""
    from fulcra.engine import DatasetImages
    from fulcra_plugins.data.digits import TensorImageDataset

    train, val = _data()
    full = _slack().search(
        train, val, _factory, RunContext(out=tmp_path / "a", device=torch.device("cpu"), hooks=_Hooks())
    )

    def lazy(split):
        return TensorImageDataset(DatasetImages(split, batch_size=5, workers=1), split.labels)

    ctx = RunContext(out=tmp_path / "b", device=torch.device("cpu"), hooks=_Hooks(stop_at=6))
    with pytest.raises(KeyboardInterrupt):
        _slack().search(lazy(train), lazy(val), _factory, ctx)
    searcher = _slack()
    resumed = searcher.search(
        lazy(train), lazy(val), _factory, RunContext(out=tmp_path / "b", device=torch.device("cpu"), hooks=_Hooks())
    )
    assert searcher.prefetched["workers"] == 1 and searcher.prefetched["misses"] == 0
    assert searcher.prefetched["hits"] > 0
    assert torch.equal(resumed.logits, full.logits) and torch.equal(resumed.mu, full.mu)


def test_search_is_deterministic_for_a_seed(tmp_path):
    train, val = _data()
    a = _slack().search(
        train, val, _factory, RunContext(out=tmp_path / "a", device=torch.device("cpu"), hooks=_Hooks())
    )
    b = _slack().search(
        train, val, _factory, RunContext(out=tmp_path / "b", device=torch.device("cpu"), hooks=_Hooks())
    )
    assert torch.equal(a.logits, b.logits)


def test_search_workflow_outputs(tmp_path):
    from fulcra.runner import run

    out = tmp_path / "run"
    cfg = {
        "workflow": "search",
        "data": {"name": "digits", "size": 12},
        "model": {"name": "small_cnn", "width": 4},
        "optimizer": {
            "name": "slack",
            "pretrain_steps": 4,
            "rounds": 1,
            "retrain_steps": 2,
            "unrolled_steps": 2,
            "batch_size": 8,
            "b_aug": 2,
        },
        "baselines": ["uniform", {"name": "trivialaugment", "variant": "ra"}],
        "eval_seeds": 2,
        "eval_epochs": 0.2,
        "include_no_augmentation": False,
        "out": str(out),
    }
    res = run(cfg, [], hooks=[])
    pol = json.loads((out / "policy.json").read_text())
    assert set(pol) >= {"ops", "probs", "mu", "ranges"} and len(pol["probs"]) == 3
    assert (out / "policy.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"slack", "uniform", "trivialaugment_ra"}
    for r in results.values():
        assert len(r["values"]) == 2 and 0 <= r["mean"] <= 1 and r["ci95"] >= 0
    assert res["results"] == results
    # run again: everything is found on disk, nothing is recomputed, same answer
    again = run(cfg, [], hooks=[])
    assert again["results"] == results


class _KillAtStep:
    def __init__(self, at):
        self.at = at

    def step(self, step, metrics, total=None, stage=None):
        if step == self.at:
            raise KeyboardInterrupt("injected kill")

    def checkpoint(self, **kw):
        pass


def test_policy_evaluation_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    """The evaluation training runs on engine.Trainer: killed after its first epoch's checkpoint, it
    resumes from it and ends with the weights of an uninterrupted run."""
    from fulcra.policy import Policy
    from fulcra_plugins.slack.common import train_with_policy

    s = Digits(size=12, seed=0).splits()["train"]
    X, Y = s.images[:40], s.labels[:40]
    pol = Policy.uniform(["identity", "rotate", "invert"], 2)
    kw = dict(steps=12, batch_size=8, lr=0.05, weight_decay=5e-4, seed=3, flip=True)  # 5 steps per epoch

    def fresh():
        torch.manual_seed(0)
        return SmallCNN(num_classes=10, width=4)

    full = train_with_policy(fresh(), X, Y, pol, **kw)
    ckpt = tmp_path / "seed3.pt"
    with pytest.raises(KeyboardInterrupt):
        train_with_policy(fresh(), X, Y, pol, ckpt_path=ckpt, hooks=_KillAtStep(8), **kw)
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    resumed = train_with_policy(fresh(), X, Y, pol, ckpt_path=ckpt, **kw)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_layerwise_is_never_silently_replaced(tmp_path):
    """A model with BatchNorm and a module the layerwise path cannot handle (LayerNorm) is refused
    with a one-line error asking for formulation=double_backward (its joint-batch statistics are not
    the method's per-group ones); asked for, it runs. A model without batch statistics falls back,
    said in one line, since both formulations are then the same quantity (issue 15)."""
    from fulcra.errors import ConfigError

    class Said(_Hooks):
        def __init__(self):
            super().__init__()
            self.messages = []

        def message(self, msg):
            self.messages.append(msg)

    def with_bn():  # LayerNorm is parametrised and not Conv2d/Linear/BatchNorm2d
        return torch.nn.Sequential(SmallCNN(num_classes=10, width=4), torch.nn.LayerNorm(10))

    def without_bn():
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.GroupNorm(2, 4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 10),
        )

    train, val = _data()
    kw = dict(space="cifar", pretrain_steps=2, rounds=1, retrain_steps=1, unrolled_steps=1, batch_size=8, b_aug=2)
    ctx = lambda name, hooks: RunContext(out=tmp_path / name, device=torch.device("cpu"), hooks=hooks)  # noqa: E731
    with pytest.raises(ConfigError, match="formulation=double_backward"):
        Slack(**kw).search(train, val, with_bn, ctx("bn", Said()))
    asked = Said()
    Slack(**kw, formulation="double_backward").search(train, val, with_bn, ctx("asked", asked))
    assert not any("double_backward" in m for m in asked.messages)
    said = Said()
    Slack(**kw).search(train, val, without_bn, ctx("gn", said))
    assert any("formulation=double_backward" in m and "Sequential" in m for m in said.messages)
    plain = Said()
    Slack(**kw).search(train, val, _factory, ctx("plain", plain))
    assert not any("double_backward" in m for m in plain.messages)
