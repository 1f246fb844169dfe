"""The SLACK benchmark recipes carry the thesis' hyperparameters (Tables A.4, A.5, official scripts as
tie-breaker), resolve, and run end to end on fake data in the published layout with a tiny budget;
the search workflow evaluates a given (imported) policy with ``policy=``."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from fulcra.runner import prepare, run

# recipe -> (data, model, retrain, unrolled, N_t, lower lr, upper lr, lambda, search wd, eval epochs, eval batch, eval wd)
TABLE_A4_A5 = {
    "slack-cifar10": ("cifar10", "wrn_40_2", 1000, 400, 128, 0.4, 1.0, 0.02, 2e-4, 200, 128, 2e-4),
    "slack-cifar10-wrn28": ("cifar10", "wrn_28_10", 1000, 400, 128, 0.4, 1.0, 0.02, 5e-4, 200, 128, 5e-4),
    "slack-cifar100": ("cifar100", "wrn_40_2", 1000, 400, 128, 0.1, 1.0, 0.02, 5e-4, 200, 128, 5e-4),
    "slack-cifar100-wrn28": ("cifar100", "wrn_28_10", 1000, 400, 128, 0.1, 1.0, 0.02, 5e-4, 200, 128, 5e-4),
    "slack-imagenet100": ("imagenet100", "resnet18", 2000, 800, 256, 0.1, 0.5, 0.01, 1e-3, 270, 256, 1e-3),
    "slack-domainnet": ("domainnet", "resnet18", 800, 400, 128, 0.1, 1.0, 0.01, 1e-3, 200, 128, 1e-3),
    # official scripts/domainnet/search.sh, per domain (λ·α = 0.01 for every domain, Table A.4)
    "slack-domainnet-clipart": ("domainnet", "resnet18", 800, 400, 128, 0.1, 1.0, 0.01, 1e-3, 200, 128, 1e-3),
    "slack-domainnet-infograph": ("domainnet", "resnet18", 800, 400, 128, 0.1, 0.625, 0.016, 1e-3, 200, 128, 1e-3),
    "slack-domainnet-painting": ("domainnet", "resnet18", 1200, 400, 128, 0.1, 0.8, 0.0125, 1e-3, 200, 128, 1e-3),
    "slack-domainnet-quickdraw": ("domainnet", "resnet18", 1000, 400, 128, 0.1, 1.25, 0.008, 1e-3, 200, 128, 1e-3),
    "slack-domainnet-real": ("domainnet", "resnet18", 1000, 400, 128, 0.1, 0.8, 0.0125, 1e-3, 200, 128, 1e-3),
    "slack-domainnet-sketch": ("domainnet", "resnet18", 1200, 400, 128, 0.1, 0.8, 0.0125, 1e-3, 200, 128, 1e-3),
}


@pytest.mark.parametrize("recipe", sorted(TABLE_A4_A5))
def test_recipe_resolves_with_the_thesis_hyperparameters(recipe):
    data, model, retrain, unrolled, nt, lower, upper, lam, wd, epochs, batch, ewd = TABLE_A4_A5[recipe]
    workflow, cfg, _ = prepare(recipe)
    assert workflow == "search"
    assert cfg.data.name == data and cfg.model.name == model
    o = cfg.optimizer
    assert (o.name, o.rounds, o.retrain_steps, o.unrolled_steps, o.batch_size, o.b_aug) == (
        "slack",
        10,
        retrain,
        unrolled,
        nt,
        8,
    )
    assert (o.lower_lr, o.upper_lr, o.kl_weight, o.weight_decay) == pytest.approx((lower, upper, lam, wd))
    # §3.4.1: pre-training as the evaluation trains, on the search's half of the training set
    assert o.pretrain_epochs == epochs and o.pretrain_lr == pytest.approx(0.1)
    assert (cfg.eval_epochs, cfg.eval_batch_size, cfg.eval_lr, cfg.eval_weight_decay) == pytest.approx(
        (epochs, batch, 0.1, ewd)
    )
    assert cfg.eval_seeds == 4 and cfg.flip is True
    # the search space of the data's family
    assert o.space == {"cifar10": "cifar", "cifar100": "cifar"}.get(data, "imagenet" if data == "imagenet100" else data)
    if recipe.startswith("slack-domainnet-"):
        assert cfg.data.domain == recipe.split("-")[-1]


def test_warm_start_recipes_double_the_lower_and_halve_the_upper_lr():
    for recipe, base in (
        ("slack-cifar10-warm-start", "slack-cifar10"),
        ("slack-cifar100-warm-start", "slack-cifar100"),
    ):
        w, b = prepare(recipe)[1].optimizer, prepare(base)[1].optimizer
        assert w.cold_start is False and b.get("cold_start", True) is True
        assert w.lower_lr == pytest.approx(2 * b.lower_lr) and w.upper_lr == pytest.approx(0.5 * b.upper_lr)


def _fake_domainnet(root, domain="clipart", classes=3, per_class=6):
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        for i in range(per_class):
            p = root / domain / f"class_{c}" / f"{domain}_{c:03d}_{i:06d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            x = torch.randint(0, 60, (3, 20, 20), generator=g, dtype=torch.uint8)
            x[c] += 150  # a class-coloured image
            write_png(x, str(p))


TINY = [
    "model=small_cnn",
    "model.width=4",
    "data.size=16",
    "data.resize=18",
    "data.train_size=18",  # the recipes' R(256) + RandomCrop(224), scaled down
    "train_crop=16",
    "optimizer.pretrain_epochs=1",
    "optimizer.rounds=1",
    "optimizer.retrain_steps=2",
    "optimizer.unrolled_steps=2",
    "optimizer.batch_size=4",
    "optimizer.b_aug=2",
    "eval_seeds=1",
    "eval_epochs=1",
    "eval_batch_size=8",
]


def test_domainnet_recipe_runs_end_to_end_on_a_fake_domain(tmp_path):
    pytest.importorskip("torchvision")
    root = tmp_path / "domain_net"
    _fake_domainnet(root, "painting")
    out = tmp_path / "run"
    res = run("slack-domainnet-painting", [f"data.root={root}", *TINY, f"out={out}"], hooks=[])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {
        "slack",
        "uniform",
        "trivialaugment_ra_imagenet",
        "trivialaugment_wide_imagenet",
        "trivialaugment_ra_cifar",
        "trivialaugment_wide_cifar",
    }
    for r in results.values():
        assert r["n"] == 1 and 0 <= r["mean"] <= 1
    pol = json.loads((out / "policy.json").read_text())
    assert len(pol["ops"]) == 20 and "grayscale" in pol["ops"]  # the DomainNet space
    assert res["results"] == results
    # the CIFAR-style TrivialAugment baseline: the TA op, then RandomCrop (4 px of 32), then Cutout (16 of 32)
    ta = json.loads((out / "eval" / "trivialaugment_wide_cifar_policy.json").read_text())
    assert ta["ops"][-2:] == ["random_crop", "cutout"] and len(ta["probs"]) == 3
    assert ta["ranges"]["random_crop"] == [0.125, 0.125] and ta["ranges"]["cutout"] == [0.5, 0.5]
    assert ta["probs"][1][-2] == 1.0 and ta["probs"][2][-1] == 1.0 and sum(ta["probs"][0][:14]) == pytest.approx(1)


def test_evaluation_with_an_imported_official_policy(tmp_path):
    """``policy=`` an official checkpoint: no search, the imported policy is what trains."""
    g = torch.Generator().manual_seed(3)
    pi = torch.randn(3, 17, generator=g)
    ckpt = tmp_path / "c10-40x2-s0.ckpt"
    torch.save({"step": 4000, "outer_model": OrderedDict(pi=pi, mu=torch.full((17, 1), 0.5))}, ckpt)
    out = tmp_path / "run"
    cfg = {
        "workflow": "search",
        "data": {"name": "digits", "size": 12},
        "model": {"name": "small_cnn", "width": 4},
        "policy": str(ckpt),
        "baselines": [],
        "eval_seeds": 1,
        "eval_epochs": 0.3,
        "include_no_augmentation": False,
        "flip": True,
        "out": str(out),
    }
    res = run(cfg, [], hooks=[])
    assert set(res["results"]) == {"policy"}
    pol = json.loads((out / "policy.json").read_text())
    torch.testing.assert_close(torch.tensor(pol["probs"]).double(), torch.softmax(pi.double(), -1), rtol=0, atol=1e-7)
    assert not (out / "search" / "DONE").exists()  # nothing was searched
    # the same from the imported policy.json: the same policy, the same training, the same accuracy
    cfg2 = dict(cfg, policy=str(out / "policy.json"), out=str(tmp_path / "run2"))
    assert run(cfg2, [], hooks=[])["results"]["policy"]["values"] == res["results"]["policy"]["values"]


def test_a_missing_policy_file_is_one_line(tmp_path):
    from fulcra.errors import DataNotFoundError

    cfg = {"workflow": "search", "policy": str(tmp_path / "nope.json"), "out": str(tmp_path / "o")}
    with pytest.raises(DataNotFoundError, match="policy file not found"):
        run(cfg, [], hooks=[])
    assert not (tmp_path / "o").exists()
