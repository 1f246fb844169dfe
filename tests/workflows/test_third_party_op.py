"""A third party's transform in a SLACK search space, end to end: ``slack-digits`` with the example
distribution's ops in ``optimizer.ops`` (one written against the bare ``AugmentationOp`` protocol,
one on ``BaseAugmentationOp``) gets their ranges, learns their μ and writes them to policy.json."""

import json

import torch

from fulcra.policy import Policy, default_ranges


def _run(tmp_path, ops):
    from fulcra.runner import run

    return run(
        "slack-digits",
        [
            f"out={tmp_path / 'run'}",
            f"optimizer.ops=[{','.join(ops)}]",
            "data.size=12",
            "model.width=4",
            "optimizer.pretrain_steps=6",
            "optimizer.rounds=1",
            "optimizer.retrain_steps=3",
            "optimizer.unrolled_steps=4",
            "optimizer.batch_size=8",
            "optimizer.b_aug=2",
            "optimizer.upper_lr=50",
            "baselines=[]",
            "eval_seeds=1",
            "eval_epochs=0.2",
        ],
    )


def test_third_party_ops_in_a_slack_search(example, tmp_path):
    ops = ["identity", "rotate", "stripe_swap", "checker_invert"]
    results = _run(tmp_path, ops)
    assert "slack" in json.dumps(results)
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["ops"] == ops
    # each op's own value_range, from its plugin through the registry
    assert policy["ranges"]["stripe_swap"] == [1.0, 6.0] and policy["ranges"]["checker_invert"] == [1.0, 8.0]
    assert policy["ranges"]["identity"] is None
    mu = dict(zip(ops, policy["mu"]))
    assert mu["stripe_swap"] != 0.75 and mu["checker_invert"] != 0.75  # learned, not left at the initial value
    # the saved policy applies the protocol-only op through the bundled applier
    pol = Policy.load(tmp_path / "run" / "policy.json")
    x = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8)
    out = pol.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_default_ranges_come_from_the_plugins(example):
    assert default_ranges(["rotate", "stripe_swap", "invert"]) == {
        "rotate": [0.0, 90.0],
        "stripe_swap": [1.0, 6.0],
        "invert": None,
    }


def test_protocol_only_op_through_the_composite_matches_its_own_call(example):
    """The applier calls a protocol-only op once per stage on exactly the images that drew it."""
    import fulcra
    from fulcra.registry import load_plugin

    op = fulcra.create("augmentations", "stripe_swap")
    comp = load_plugin("appliers", "composite")([fulcra.create("augmentations", "identity"), op])
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    idx = torch.tensor([[1], [0], [1], [0], [0], [1]])
    mags = torch.linspace(0, 1, 6).view(6, 1)
    out = comp(x, idx, mags, torch.Generator().manual_seed(0))
    for i in range(6):
        want = op(x[i : i + 1], mags[i]) if idx[i, 0] == 1 else x[i : i + 1]
        assert torch.equal(out[i], want[0]), i
