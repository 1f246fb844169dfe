"""Official SLACK checkpoints (written here in the official format) import as fulcra policies:
probabilities equal softmax(pi) op by op under the documented name mapping; bad files are refused
with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

import fulcra
from fulcra.errors import FormatError
from fulcra.policy import default_ranges
from fulcra_plugins.slack.common import SEARCH_SPACES
from fulcra_plugins.slack.official import NAME_MAP, OFFICIAL_OPS, OFFICIAL_RANGES, PolicyCommand, from_official

# transcribed from the official code (core/augmentations_torch.py): AugmentationsOptUMirror and its
# ImageNet / DomainNet subclasses, as the lists those classes' default_augment_list() build
TRANSCRIBED = {
    "cifar": "ShearX ShearY TranslateX TranslateY Rotate AutoContrast Invert Equalize Solarize Posterize "
    "ContrastMirror ColorMirror BrightnessMirror SharpnessMirror Cutout RandomCrop Identity",
    "imagenet": "ShearX ShearY TranslateX TranslateY Rotate AutoContrast Invert Equalize Solarize Posterize "
    "ContrastMirror ColorMirror BrightnessMirror SharpnessMirror HueMirror Cutout RandResizeCrop Identity",
    "domainnet": "ShearX ShearY TranslateX TranslateY Rotate AutoContrast Invert Equalize Grayscale Solarize "
    "Posterize ContrastMirror ColorMirror BrightnessMirror SharpnessMirror HueMirror Cutout RandResizeCrop "
    "RandomCrop Identity",
}


def _write_official(path, n_ops: int, seed: int = 0, mu_shape: str = "column", prefix: str = ""):
    """A checkpoint as the official ``Trainer.save_model`` writes it: step, time, the augmentation
    model's state dict (``pi`` [3, N] logits, ``mu`` [N, 1]) and the outer optimizer's state."""
    g = torch.Generator().manual_seed(seed)
    pi = torch.nn.Parameter(torch.randn(3, n_ops, generator=g) * 2)
    mu = torch.nn.Parameter(0.1 + 0.9 * torch.rand(n_ops, 1, generator=g))
    opt = torch.optim.SGD([pi, mu], lr=0.01, momentum=0.9)
    (pi.sum() + mu.sum()).backward()
    opt.step()
    state = OrderedDict([(prefix + "pi", pi.detach().clone()), (prefix + "mu", mu.detach().clone())])
    if mu_shape == "flat":
        state[prefix + "mu"] = state[prefix + "mu"].reshape(-1)
    ckpt = {"step": 4000, "time": 1234.5, "outer_model": state, "outer_optimizer": opt.state_dict()}
    torch.save(ckpt, path)
    return state[prefix + "pi"], state[prefix + "mu"].reshape(-1)


def test_official_tables_match_the_transcription_and_fulcra_spaces():
    for fam, names in TRANSCRIBED.items():
        assert OFFICIAL_OPS[fam] == names.split(), fam
        # the official order mapped to fulcra's names is fulcra's search space of that family
        assert [NAME_MAP[o] for o in OFFICIAL_OPS[fam]] == SEARCH_SPACES[fam], fam
    assert {len(v) for v in OFFICIAL_OPS.values()} == {17, 18, 20}
    # each op's fulcra range (Table A.2) is the one the table documents beside the official range
    for official, (_, _, fulcra_range) in OFFICIAL_RANGES.items():
        assert default_ranges([NAME_MAP[official]])[NAME_MAP[official]] == fulcra_range, official


@pytest.mark.parametrize("family,n", [("cifar", 17), ("imagenet", 18), ("domainnet", 20)])
def test_import_equals_softmax_pi_op_by_op(tmp_path, family, n):
    ckpt = tmp_path / f"{family}.ckpt"
    pi, mu = _write_official(ckpt, n, seed=n)
    policy = from_official(ckpt)
    assert policy.num_stages == 3 and policy.num_ops == n
    ref = torch.softmax(pi.double(), -1)
    probs = policy.probs().double()
    for j, official in enumerate(OFFICIAL_OPS[family]):
        k = policy.ops.index(NAME_MAP[official])
        assert k == j
        torch.testing.assert_close(probs[:, k], ref[:, j], rtol=0, atol=1e-7)
        assert policy.mu[k].item() == pytest.approx(min(mu[j].item(), 1.0), abs=1e-7)
    assert policy.ranges == default_ranges(policy.ops)
    # the file round trip keeps the same probabilities
    out = tmp_path / "policy.json"
    policy.save(out)
    d = json.loads(out.read_text())
    assert d["ops"] == [NAME_MAP[o] for o in OFFICIAL_OPS[family]]
    torch.testing.assert_close(torch.tensor(d["probs"], dtype=torch.float64), ref, rtol=0, atol=1e-7)
    assert set(d) >= {"ops", "probs", "mu", "ranges"}
    again = fulcra.Policy.load(out)
    torch.testing.assert_close(again.probs().double(), ref, rtol=0, atol=1e-6)


def test_core_policy_from_official_reaches_the_plugin(tmp_path):
    ckpt = tmp_path / "s0.ckpt"
    pi, _ = _write_official(ckpt, 18, prefix="module.")  # a wrapped module's keys
    policy = fulcra.Policy.from_official(ckpt)
    assert policy.ops == SEARCH_SPACES["imagenet"]
    torch.testing.assert_close(policy.probs().double(), torch.softmax(pi.double(), -1), rtol=0, atol=1e-7)
    with pytest.raises(FormatError, match="cifar family has 17"):
        fulcra.Policy.from_official(ckpt, family="cifar")


def test_flat_mu_and_missing_mu(tmp_path):
    a = tmp_path / "flat.ckpt"
    _, mu = _write_official(a, 20, mu_shape="flat")
    torch.testing.assert_close(from_official(a).mu, mu.clamp(max=1.0))
    b = tmp_path / "nomu.ckpt"
    torch.save({"outer_model": {"pi": torch.zeros(3, 17)}}, b)
    pol = from_official(b)
    assert torch.all(pol.mu == 0.75)
    torch.testing.assert_close(pol.probs(), torch.full((3, 17), 1 / 17))


@pytest.mark.parametrize(
    "content,match",
    [
        ({"outer_model": {"pi": torch.zeros(3, 19), "mu": torch.ones(19, 1)}}, r"shape \(3, 19\).*matches no official"),
        ({"outer_model": {"pi": torch.zeros(17), "mu": torch.ones(17, 1)}}, "matches no official"),
        ({"outer_model": {"pi": torch.zeros(3, 17), "mu": torch.ones(18, 1)}}, r"'mu' has shape \(18, 1\)"),
        ({"outer_model": {"mu": torch.ones(17, 1)}}, "no tensor 'pi'"),
        ([1, 2, 3], "expected a dict"),
        ({"outer_model": {"pi": torch.full((3, 17), float("nan")), "mu": torch.ones(17, 1)}}, "non-finite"),
    ],
)
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, content, match):
    path = tmp_path / "bad.ckpt"
    torch.save(content, path)
    with pytest.raises(FormatError, match=match) as e:
        from_official(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.ckpt"
    torch.save({"outer_model": {"pi": torch.zeros(3, 17)}, "x": Evil()}, path)
    with pytest.raises(FormatError, match="weights_only=True"):
        from_official(path)


def test_the_cli_command(tmp_path):
    ckpt = tmp_path / "c10-40x2-s0.ckpt"
    pi, _ = _write_official(ckpt, 17)
    out = tmp_path / "p" / "policy.json"
    res = subprocess.run(
        [sys.executable, "-m", "fulcra", "policy", "import", str(ckpt), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "cifar family" in res.stdout
    d = json.loads(out.read_text())
    torch.testing.assert_close(torch.tensor(d["probs"]).double(), torch.softmax(pi.double(), -1), rtol=0, atol=1e-7)
    assert PolicyCommand.help


def test_the_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    from fulcra.cli import main

    bad = tmp_path / "bad.ckpt"
    torch.save({"outer_model": {"pi": torch.zeros(3, 5)}}, bad)
    assert main(["policy", "import", str(bad), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "matches no official SLACK family" in err
    assert not (tmp_path / "p.json").exists()


def test_command_conformance():
    from fulcra.testing import check_plugin

    check_plugin("commands", "policy")
