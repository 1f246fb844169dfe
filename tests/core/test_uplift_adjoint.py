"""Adjoint uplift against an explicit rendering matrix."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

import fulcra
from fulcra.uplift import adjoint, resize_to_camera

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_plugin" / "src"))
from fulcra_example import MatrixScene  # noqa: E402


def explicit(scene, maps):
    """f = D^-1 W^T F with W stacked over views, built explicitly."""
    W = torch.cat(list(scene.matrices), 0)  # [V*H*W, N]
    F = torch.cat([m.permute(1, 2, 0).reshape(-1, m.shape[0]) for m in maps], 0)  # [V*H*W, D]
    den = W.sum(0)
    num = W.T @ F
    return torch.where(den[:, None] > 0, num / den.clamp_min(1e-12)[:, None], torch.zeros_like(num)), den


@pytest.mark.parametrize("dim,chunk", [(1, None), (5, None), (5, 2), (7, 3)])
def test_uplift_equals_explicit_matrix(dim, chunk):
    scene = MatrixScene(num_primitives=9, height=3, width=4, num_cameras=3)
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(dim, 3, 4, generator=g) for _ in scene.cameras]
    f, w = fulcra.uplift(scene, zip(scene.cameras, maps), dim_chunk=chunk)
    ref_f, ref_w = explicit(scene, maps)
    assert torch.allclose(w, ref_w, atol=1e-5)
    assert torch.allclose(f, ref_f, atol=1e-5)


def test_uplift_of_a_constant_map_is_that_constant_where_seen():
    scene = MatrixScene(num_primitives=6, num_cameras=2)
    maps = [torch.full((2, 3, 4), 0.7) for _ in scene.cameras]
    f, w = fulcra.uplift(scene, zip(scene.cameras, maps))
    seen = w > 0
    assert torch.allclose(f[seen], torch.full_like(f[seen], 0.7), atol=1e-5)
    assert torch.all(f[~seen] == 0)


def test_masks_and_low_resolution_maps_are_resized():
    scene = MatrixScene(num_primitives=6, height=4, width=6, num_cameras=1)
    cam = scene.cameras[0]
    low = torch.rand(3, 2, 3)
    up = resize_to_camera(low, cam)
    assert up.shape == (3, 4, 6)
    f, _ = fulcra.uplift(scene, [(cam, low)])
    ref, _ = explicit(scene, [up])
    assert torch.allclose(f, ref, atol=1e-5)
    f2, _ = fulcra.uplift(scene, [(cam, torch.rand(4, 6))])  # a mask [H, W]
    assert f2.shape == (6, 1)


def test_fused_adjoint_is_used_when_provided():
    scene = MatrixScene(num_primitives=4, num_cameras=1)
    calls = []

    def render_adjoint(images, camera):
        calls.append(camera.name)
        return scene.matrices[0].T @ images.reshape(-1, images.shape[-1])

    scene.render_adjoint = render_adjoint
    img = torch.rand(3, 4, 2)
    out = adjoint(scene, img, scene.cameras[0])
    del scene.render_adjoint
    assert calls == ["v0"] and torch.allclose(out, adjoint(scene, img, scene.cameras[0]), atol=1e-6)


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_plugin" / "src"))
    from fulcra_example import MatrixScene

    from fulcra.engine import dist

    dist.init_distributed("gloo")
    scene = MatrixScene(num_primitives=9, height=3, width=4, num_cameras=5)
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(3, 3, 4, generator=g) for _ in scene.cameras]
    computed = []

    def lazy(i):
        def load():
            computed.append(i)
            return maps[i]

        return load

    f, w = fulcra.uplift(scene, [(c, lazy(i)) for i, c in enumerate(scene.cameras)])
    torch.save({"f": f, "w": w, "computed": torch.tensor(computed)}, f"{out}/r{rank}.pt")
    dist.destroy()


def test_uplift_sharded_over_two_processes(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    scene = MatrixScene(num_primitives=9, height=3, width=4, num_cameras=5)
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(3, 3, 4, generator=g) for _ in scene.cameras]
    ref_f, ref_w = explicit(scene, maps)
    computed = []
    for r in (0, 1):
        got = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert torch.allclose(got["f"], ref_f, atol=1e-5) and torch.allclose(got["w"], ref_w, atol=1e-5)
        computed += got["computed"].tolist()
    assert sorted(computed) == list(range(5))  # every lazy view loaded exactly once across ranks


def test_channels_last_and_non_finite_maps_are_refused():
    """``fulcra.uplift(scene, [(cam, torch.rand(120, 160, 3))])`` used to return D = 120."""
    cam = fulcra.Camera(torch.eye(4), torch.eye(3), 160, 120, name="v0")
    with pytest.raises(ValueError, match=r"camera 'v0' is \[D=120, h=160, w=3\].*channels-last \[h, w, D\]"):
        resize_to_camera(torch.rand(120, 160, 3), cam)
    bad = torch.rand(4, 12, 16)
    bad[1, 2, 3] = float("nan")
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"camera 'v0' holds 2 non-finite values"):
        resize_to_camera(bad, cam)
    # a patch grid (aspect within rounding of the camera's) and a full-size map pass
    assert resize_to_camera(torch.rand(4, 8, 11), cam).shape == (4, 120, 160)
    assert resize_to_camera(torch.rand(120, 160), cam).shape == (1, 120, 160)
