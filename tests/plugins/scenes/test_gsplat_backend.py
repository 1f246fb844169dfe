"""The ``gsplat`` backend against the ``torch`` backend on the same scene and cameras (CUDA only)."""

import pytest
import torch

import fulcra

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
gsplat = pytest.importorskip("gsplat")

from fulcra_plugins.scenes.gsplat_backend import GsplatScene  # noqa: E402
from fulcra_plugins.scenes.synthetic import build_cameras, build_gaussians  # noqa: E402
from fulcra_plugins.scenes.torch_backend import TorchScene  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    g, _ = build_gaussians(seed=0, density=1.0)
    cams = build_cameras(160, 120, n_ring=6, n_forward=2)
    return TorchScene.from_gaussians(g, device="cuda"), GsplatScene.from_gaussians(g, device="cuda"), cams


def _agree(a, b):
    diff = (a - b).abs()
    scale = b.abs().max().clamp_min(1e-6)
    # float rounding and the transmittance cut-off may flip a handful of pixels; the bulk must agree
    assert diff.mean() / scale < 2e-3, float(diff.mean() / scale)
    assert (diff > 0.05 * scale).float().mean() < 5e-3


@pytest.mark.parametrize("dim", [3, 40])
def test_render_agrees_with_torch_backend(scenes, dim):
    ts, gs, cams = scenes
    feats = torch.rand(ts.num_primitives, dim, device="cuda", generator=torch.Generator("cuda").manual_seed(dim))
    for cam in cams[::3]:
        a, b = gs.render(feats, cam), ts.render(feats, cam)
        assert a.shape == b.shape == (cam.height, cam.width, dim)
        _agree(a, b)
    _agree(gs.render_rgb(cams[0]), ts.render_rgb(cams[0]))


def test_uplift_agrees_with_torch_backend(scenes):
    ts, gs, cams = scenes
    maps = [
        (c, torch.rand(8, 30, 40, device="cuda", generator=torch.Generator("cuda").manual_seed(i)))
        for i, c in enumerate(cams)
    ]
    f_g, w_g = fulcra.uplift(gs, maps)
    f_t, w_t = fulcra.uplift(ts, maps)
    seen = w_t > 1e-2 * w_t.max()
    rel_w = ((w_g - w_t).abs()[seen] / w_t[seen]).median()
    assert rel_w < 1e-2, float(rel_w)
    err = (f_g[seen] - f_t[seen]).abs().mean()
    assert err < 1e-2, float(err)
    # the fused torch adjoint equals autograd on the GPU too
    F = torch.rand(cams[0].height, cams[0].width, 5, device="cuda")
    f = torch.zeros(ts.num_primitives, 5, device="cuda", requires_grad=True)
    (auto,) = torch.autograd.grad(ts.render(f, cams[0]), f, grad_outputs=F)
    torch.testing.assert_close(ts.render_adjoint(F, cams[0]), auto, atol=1e-4, rtol=1e-4)
