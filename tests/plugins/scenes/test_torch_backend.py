"""The ``torch`` rasteriser against an independent per-pixel reference, its adjoint against autograd."""

import math

import pytest
import torch

from fulcra.camera import Camera
from fulcra_plugins.scenes.gaussians import Gaussians, rgb_to_sh
from fulcra_plugins.scenes.torch_backend import TorchScene


def reference_render(g: Gaussians, cam: Camera, feats: torch.Tensor) -> torch.Tensor:
    """Brute force in float64: every pixel against every Gaussian, sequential front-to-back blending.

    Written from the 3DGS/gsplat "classic" definition, sharing no code with the backend.
    """
    d = torch.float64
    V, K = cam.viewmat.to(d), cam.K.to(d)
    W, H = cam.width, cam.height
    means = g.means.to(d)
    pc = (V[:3, :3] @ means.T).T + V[:3, 3]
    q = g.quats.to(d)
    q = q / q.norm(dim=1, keepdim=True)
    out = torch.zeros(H, W, feats.shape[1], dtype=d)
    T = torch.ones(H, W, dtype=d)
    done = torch.zeros(H, W, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=d) + 0.5, torch.arange(W, dtype=d) + 0.5, indexing="ij")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for i in torch.argsort(pc[:, 2]).tolist():
        x, y, z = pc[i]
        if z <= 0.01:
            continue
        w_, a, b, c = q[i]
        R = torch.tensor(
            [
                [1 - 2 * (b * b + c * c), 2 * (a * b - w_ * c), 2 * (a * c + w_ * b)],
                [2 * (a * b + w_ * c), 1 - 2 * (a * a + c * c), 2 * (b * c - w_ * a)],
                [2 * (a * c - w_ * b), 2 * (b * c + w_ * a), 1 - 2 * (a * a + b * b)],
            ],
            dtype=d,
        )
        S = torch.diag(g.scales[i].to(d))
        cov = V[:3, :3] @ (R @ S @ S @ R.T) @ V[:3, :3].T
        limx, limy = 1.3 * 0.5 * W / fx, 1.3 * 0.5 * H / fy
        tx = z * min(max(x / z, -cx / fx - 0.3 * 0.5 * W / fx), (W - cx) / fx + 0.3 * 0.5 * W / fx)
        ty = z * min(max(y / z, -cy / fy - 0.3 * 0.5 * H / fy), (H - cy) / fy + 0.3 * 0.5 * H / fy)
        del limx, limy
        J = torch.tensor([[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]], dtype=d)
        cov2 = J @ cov @ J.T + 0.3 * torch.eye(2, dtype=d)
        if torch.det(cov2) <= 0:
            continue
        inv = torch.linalg.inv(cov2)
        mx, my = fx * x / z + cx, fy * y / z + cy
        dx, dy = xs - mx, ys - my
        sigma = 0.5 * (inv[0, 0] * dx * dx + inv[1, 1] * dy * dy) + inv[0, 1] * dx * dy
        alpha = torch.clamp(g.opacities[i].to(d) * torch.exp(-sigma), max=0.999)
        use = (~done) & (sigma >= 0) & (alpha >= 1 / 255)
        next_T = T * (1 - alpha)
        finish = use & (next_T <= 1e-4)
        done |= finish
        use &= ~finish
        out += torch.where(use, alpha * T, 0.0)[..., None] * feats[i].to(d)
        T = torch.where(use, next_T, T)
    return out.float()


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)):
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    f = target - eye
    f = f / f.norm()
    r = torch.linalg.cross(f, up)
    r = r / r.norm()
    u = torch.linalg.cross(f, r)
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = torch.stack([r, u, f])
    V[:3, 3] = -V[:3, :3] @ eye
    return V.float()


def random_gaussians(n, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 2 * spread,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.rand(n, 3, generator=g) * 0.15 + 0.01,
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        sh0=rgb_to_sh(torch.rand(n, 3, generator=g)),
    )


def make_camera(W=37, H=29, eye=(0.3, -0.4, -3.0), f=40.0, name="c"):
    K = torch.tensor([[f, 0, W / 2 + 0.7], [0, f * 1.1, H / 2 - 0.4], [0, 0, 1]])
    return Camera(look_at(eye), K, W, H, name)


@pytest.mark.parametrize("seed,tile", [(0, 8), (1, 16), (2, 3)])
def test_matches_per_pixel_reference(seed, tile):
    g = random_gaussians(60, seed)
    cam = make_camera()
    feats = torch.randn(60, 5, generator=torch.Generator().manual_seed(seed + 10))
    ref = reference_render(g, cam, feats)
    # small chunks and blocks so several tile batches and depth chunks are exercised
    scene = TorchScene.from_gaussians(g, device="cpu", tile_size=tile, chunk=4, max_elements=8 * tile * tile * 4)
    out = scene.render(feats, cam)
    assert out.shape == (29, 37, 5)
    assert ref.abs().max() > 0.1  # the scene is visible
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
    # default settings give the same image
    torch.testing.assert_close(TorchScene.from_gaussians(g, device="cpu").render(feats, cam), ref, atol=2e-4, rtol=1e-4)


def test_saturation_and_culling():
    """Dense opaque Gaussians saturate pixels (termination); some lie behind the camera or off-screen."""
    g = random_gaussians(80, 3, spread=0.8)
    g.opacities[:] = 0.995
    g.scales[:] *= 2.5
    g.means[:5, 2] = -4.0  # behind the camera (the camera sits at z = -3 looking at +z)
    cam = make_camera(eye=(0.0, 0.0, -3.0))
    feats = torch.randn(80, 3)
    ref = reference_render(g, cam, feats)
    out = TorchScene.from_gaussians(g, device="cpu", chunk=3).render(feats, cam)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-4)
    alpha = TorchScene.from_gaussians(g, device="cpu").render_alpha(cam)
    assert (alpha > 0.999).float().mean() > 0.2 and alpha.max() <= 1.0  # saturated pixels exist


def test_adjoint_matches_autograd_and_linearity():
    g = random_gaussians(50, 4)
    cam = make_camera()
    scene = TorchScene.from_gaussians(g, device="cpu", chunk=8)
    F = torch.randn(29, 37, 6)
    f = torch.zeros(50, 6, requires_grad=True)
    (auto,) = torch.autograd.grad(scene.render(f, cam), f, grad_outputs=F)
    fused = scene.render_adjoint(F, cam)
    torch.testing.assert_close(fused, auto)
    # <W f, F> == <f, W^T F>
    h = torch.randn(50, 6)
    lhs = (scene.render(h, cam) * F).sum()
    rhs = (h * fused).sum()
    assert math.isclose(lhs.item(), rhs.item(), rel_tol=1e-4)


def test_channel_chunking_is_exact():
    g = random_gaussians(40, 5)
    cam = make_camera()
    feats = torch.randn(40, 11)
    a = TorchScene.from_gaussians(g, device="cpu", max_channels=3).render(feats, cam)
    b = TorchScene.from_gaussians(g, device="cpu").render(feats, cam)
    torch.testing.assert_close(a, b)


def test_rejects_bad_feature_shape():
    scene = TorchScene.from_gaussians(random_gaussians(10), device="cpu")
    with pytest.raises(ValueError, match="features must be"):
        scene.render(torch.zeros(9, 3), make_camera())


def test_adjoint_with_weights_is_the_adjoint_of_features_and_of_ones():
    """Wᵀ 1 beside Wᵀ F in one pass: what a ones channel gives, with the tiles' padding beyond a
    29 × 37 image (not a multiple of the tile) weighing nothing."""
    g = random_gaussians(60, 7)
    cam = make_camera()
    scene = TorchScene.from_gaussians(g, device="cpu", chunk=8, max_channels=4)
    F = torch.randn(29, 37, 6)
    num, w = scene.render_adjoint_with_weights(F, cam)
    ref = scene.render_adjoint(torch.cat([F, torch.ones(29, 37, 1)], -1), cam)
    torch.testing.assert_close(num, ref[:, :6])
    torch.testing.assert_close(w, ref[:, 6])
    f = torch.zeros(60, 1, requires_grad=True)
    (auto,) = torch.autograd.grad(scene.render(f, cam), f, grad_outputs=torch.ones(29, 37, 1))
    torch.testing.assert_close(w, auto[:, 0])
    assert float(w.max()) > 0.1  # the scene is seen


def test_uplift_takes_the_weights_from_the_scene_when_it_offers_them():
    from fulcra.interfaces import AdjointScene, WeightedAdjointScene
    from fulcra.uplift import uplift

    class AdjointOnly:  # the same scene without render_adjoint_with_weights: the ones channel path
        def __init__(self, s):
            self.s, self.num_primitives, self.positions, self.device = s, s.num_primitives, s.positions, s.device

        def render(self, f, cam):
            return self.s.render(f, cam)

        def render_adjoint(self, images, cam):
            return self.s.render_adjoint(images, cam)

    g = random_gaussians(60, 8)
    cams = [make_camera(), make_camera(eye=(0.5, -0.2, -3.2), name="d")]
    scene = TorchScene.from_gaussians(g, device="cpu", chunk=8)
    plain = AdjointOnly(scene)
    assert isinstance(scene, WeightedAdjointScene) and not isinstance(plain, WeightedAdjointScene)
    assert isinstance(plain, AdjointScene)
    views = [(c, torch.rand(5, 29, 37, generator=torch.Generator().manual_seed(i))) for i, c in enumerate(cams)]
    for chunk in (None, 2):
        a = uplift(scene, views, dim_chunk=chunk)
        b = uplift(plain, views, dim_chunk=chunk)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)
