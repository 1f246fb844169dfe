"""The method's per-step augmentation (:class:`MethodAugment`): the policy, then a random horizontal
flip, then normalisation, then a sampled Cutout last with the training images' mean as fill, as
the official SLACK code applies it."""

import torch

from fulcra.policy import Policy
from fulcra_plugins.slack.common import MethodAugment, channel_mean, to_input


def _cutout_policy(ops=("cutout", "identity", "rotate")):
    logits = torch.tensor([[8.0] + [-8.0] * (len(ops) - 1)])  # ~always Cutout
    return Policy(list(ops), logits, torch.ones(len(ops)), Policy.uniform(list(ops), 1).ranges)


def test_cutout_last_fills_with_the_mean_after_flip_and_normalisation():
    torch.manual_seed(0)
    # a horizontal ramp: a flipped image differs from the original everywhere but the centre column
    ramp = torch.arange(16, dtype=torch.uint8).mul(15).view(1, 1, 1, 16).expand(64, 3, 16, 16).contiguous()
    pol = _cutout_policy()
    fill = torch.tensor([0.3, -0.2, 0.1])
    aug = MethodAugment(pol, pol.augmenter(), flip=True, cutout_last=True, fill=fill)
    g = torch.Generator().manual_seed(0)
    idx, mags = pol.sample(64, g)
    assert (idx == 0).all()
    out = aug(ramp, idx, mags, g)
    plain, flipped = to_input(ramp), to_input(ramp.flip(-1))
    cut = (out == fill.view(1, 3, 1, 1)).all(1)  # [B, H, W]
    assert cut.any(dim=(1, 2)).float().mean() > 0.8  # most magnitudes give a non-empty patch
    n_flipped = 0
    for b in range(64):
        keep = ~cut[b]
        same = torch.equal(out[b][:, keep], plain[b][:, keep])
        flip = torch.equal(out[b][:, keep], flipped[b][:, keep])
        assert same or flip  # outside the patch: the image, flipped or not, untouched by Cutout
        n_flipped += int(flip and not same)
        ys, xs = cut[b].nonzero(as_tuple=True)
        if ys.numel():  # the patch is one rectangle
            assert ys.numel() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert 16 < n_flipped < 48


def test_cutout_at_its_stage_is_black_and_the_plain_path_is_unchanged():
    pol = _cutout_policy()
    x = torch.full((32, 3, 16, 16), 200, dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    idx, mags = pol.sample(32, torch.Generator().manual_seed(1))
    out = MethodAugment(pol, pol.augmenter(), flip=False, cutout_last=False)(x, idx, mags, g1)
    assert torch.equal(out, to_input(pol.augmenter()(x, idx, mags.clamp(0, 1), g2)))
    assert (out == to_input(torch.zeros(1))).any()  # black patches


def test_no_identity_in_the_space_skips_the_withheld_stage_by_magnitude_zero():
    pol = _cutout_policy(("cutout", "rotate"))
    x = torch.full((16, 3, 8, 8), 90, dtype=torch.uint8)
    idx = torch.zeros(16, 1, dtype=torch.int64)
    mags = torch.zeros(16, 1)  # zero-size patches: Cutout withheld and cut empty -> the plain image
    out = MethodAugment(pol, pol.augmenter(), flip=False, cutout_last=True, fill=torch.zeros(3))(
        x, idx, mags, torch.Generator().manual_seed(0)
    )
    assert torch.equal(out, to_input(x))


def test_channel_mean_is_exact_for_uint8():
    x = torch.randint(0, 256, (50, 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    m = x.double().mean(dim=(0, 2, 3))
    assert torch.allclose(channel_mean(x).double(), (m - 127.5) / 64.0, atol=1e-6)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = channel_mean(x)
        torch.set_num_threads(2)
        assert torch.equal(one, channel_mean(x))
    finally:
        torch.set_num_threads(n)
