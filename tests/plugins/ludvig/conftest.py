"""A tiny in-memory synthetic scene (ground + 4 objects) with per-Gaussian labels and label masks."""

import pytest
import torch

from fulcra_plugins.scenes.synthetic import build_cameras, build_gaussians
from fulcra_plugins.scenes.torch_backend import TorchScene


@pytest.fixture(scope="module")
def tiny_scene():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    gauss, labels = build_gaussians(seed=3, density=0.2)
    scene = TorchScene.from_gaussians(gauss, device="cpu")
    cams = build_cameras(width=64, height=48, n_ring=4, n_forward=0)
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    gt = {}
    for c in cams:
        lab = scene.render(onehot, c)
        gt[c.name] = torch.where(lab.sum(-1) > 0.5, lab.argmax(-1), torch.full(lab.shape[:2], 255))
    torch.set_num_threads(n)
    return scene, cams, labels, gt
