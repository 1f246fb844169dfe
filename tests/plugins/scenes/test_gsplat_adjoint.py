"""The fused gsplat uplift kernel (``scenes._adjoint_triton``) against slow references.

On CPU the very Triton kernel runs in Triton's interpreter. The interpreter must be chosen before
triton is first imported (``TRITON_INTERPRET=1``) and would then also interpret every other Triton
kernel of the process, so this module runs itself in a child pytest with that variable set
(``test_kernel_under_the_interpreter``); in the child the ``interp`` tests run. On CUDA (``-m gpu``)
the compiled kernel is compared with autograd through gsplat's rasteriser.

Inputs in gsplat's layout (projected means, conics, opacities, ``isect_offsets``,
``flatten_ids``) come from gsplat's pure-torch reference functions when gsplat is installed, and
from a layout built here from the ``torch`` backend's projection otherwise (and both are run when
both can be).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from fulcra.camera import Camera
from fulcra_plugins.scenes.gaussians import Gaussians, rgb_to_sh
from fulcra_plugins.scenes.torch_backend import TorchScene, project_gaussians

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytest.importorskip("triton")

try:
    from gsplat.cuda._torch_impl import _fully_fused_projection, _isect_offset_encode, _isect_tiles
except Exception:  # noqa: BLE001 - gsplat absent (or broken): the layout is built here instead
    _fully_fused_projection = None

interp = pytest.mark.skipif(
    not INTERPRET, reason="runs in the TRITON_INTERPRET=1 child of test_kernel_under_the_interpreter"
)
# gsplat's own reference layout when it is installed, else the one built here (checked against
# each other by test_layouts_agree where both exist)
LAYOUT = "gsplat" if _fully_fused_projection is not None else "fulcra"


def test_kernel_under_the_interpreter():
    if INTERPRET:
        pytest.skip("this is the interpreter child")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out, out[-3000:]


# ----------------------------------------------------------------------------------- scenes
def make_scene(seed: int, n: int = 300) -> Gaussians:
    """A few hundred overlapping Gaussians in front of the camera, many nearly opaque (so that
    pixels reach the transmittance stop), a few behind it or off screen."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.7, 0.5, 0.4]) + torch.tensor([0.0, 0.0, 3.0])
    means[:5, 2] = -1.0  # behind the camera: culled
    means[5:8, 0] = 40.0  # far off screen: culled
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    scales = torch.rand(n, 3, generator=g) * 0.15 + 0.02
    opac = torch.where(
        torch.rand(n, generator=g) < 0.6, 0.97 + 0.03 * torch.rand(n, generator=g), torch.rand(n, generator=g)
    )
    opac = opac.clamp(0.002, 0.9999)
    return Gaussians(means, q, scales, opac, rgb_to_sh(torch.rand(n, 3, generator=g)))


def make_camera(width: int = 32, height: int = 24, shift: float = 0.0) -> Camera:
    K = torch.tensor([[30.0, 0, width / 2], [0, 30.0, height / 2], [0, 0, 1.0]])
    V = torch.eye(4)
    V[0, 3] = shift
    return Camera(V, K, width, height, f"cam{shift}")


# --------------------------------------------------------------------- gsplat's input layout
def layout_gsplat(g: Gaussians, cam: Camera, ts: int) -> dict:
    """gsplat 1.5's pure-torch projection and intersections (unpacked, one image)."""
    radii, m2d, depths, conics, _ = _fully_fused_projection(
        g.means, g.covariances(), cam.viewmat[None], cam.K[None], cam.width, cam.height, eps2d=0.3
    )
    tw, th = math.ceil(cam.width / ts), math.ceil(cam.height / ts)
    _, isect_ids, flat = _isect_tiles(m2d, radii, depths, ts, tw, th)
    offsets = _isect_offset_encode(isect_ids, 1, tw, th)
    valid = (radii > 0).all(-1)[0]
    return dict(
        means2d=m2d,
        conics=conics,
        opacities=g.opacities[None],
        offsets=offsets,
        flat=flat,
        valid=valid,
        depths=depths[0],
    )


def layout_fulcra(g: Gaussians, cam: Camera, ts: int) -> dict:
    """The same layout built from the ``torch`` backend's projection: gsplat's 3-sigma boxes
    (``ceil(3.33 sqrt(cov))``), tiles it overlaps, pairs sorted by (tile, depth)."""
    p = project_gaussians(g, cam, tile_size=ts)
    n = len(g.opacities)
    m2d, conics, opac = p.means2d[:n], p.conics[:n], g.opacities
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    cov_xx, cov_yy = c / det, a / det  # the conic's inverse: the dilated 2D covariance
    rx, ry = torch.ceil(3.33 * cov_xx.sqrt()), torch.ceil(3.33 * cov_yy.sqrt())
    valid = p.opacities[:n] > 0
    valid &= (m2d[:, 0] + rx > 0) & (m2d[:, 0] - rx < cam.width) & (m2d[:, 1] + ry > 0) & (m2d[:, 1] - ry < cam.height)
    depth = (g.means @ cam.viewmat[:3, :3].T + cam.viewmat[:3, 3])[:, 2]
    tw, th = math.ceil(cam.width / ts), math.ceil(cam.height / ts)
    x0 = torch.floor((m2d[:, 0] - rx) / ts).clamp(0, tw).long()
    x1 = torch.ceil((m2d[:, 0] + rx) / ts).clamp(0, tw).long()
    y0 = torch.floor((m2d[:, 1] - ry) / ts).clamp(0, th).long()
    y1 = torch.ceil((m2d[:, 1] + ry) / ts).clamp(0, th).long()
    pairs = [
        (y * tw + x, float(depth[i]), i)
        for i in torch.nonzero(valid)[:, 0].tolist()
        for y in range(y0[i], y1[i])
        for x in range(x0[i], x1[i])
    ]
    pairs.sort()
    flat = torch.tensor([i for _, _, i in pairs], dtype=torch.int32)
    counts = torch.bincount(torch.tensor([t for t, _, _ in pairs], dtype=torch.long), minlength=tw * th)
    offsets = (torch.cumsum(counts, 0) - counts).to(torch.int32).reshape(1, th, tw)
    return dict(
        means2d=m2d[None],
        conics=conics[None],
        opacities=opac[None],
        offsets=offsets,
        flat=flat,
        valid=valid,
        depths=depth,
    )


def build_layout(kind: str, g: Gaussians, cam: Camera, ts: int) -> dict:
    return (layout_gsplat if kind == "gsplat" else layout_fulcra)(g, cam, ts)


# ------------------------------------------------------------------------- slow reference
def reference_adjoint(lay: dict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """gsplat's compositing written out in float64: every valid Gaussian in depth order (no tiles),
    all pixels at once, sequential transmittance, 1/255 skip, 0.999 clamp, exclusive stop at 1e-4.

    Returns ``(Σ w F [N, D], Σ w [N], number of pixels that reached the stop)``.
    """
    d = torch.float64
    H, W, D = images.shape
    m2d, conics, opac = lay["means2d"][0].to(d), lay["conics"][0].to(d), lay["opacities"][0].to(d)
    F = images.reshape(-1, D).to(d)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=d) + 0.5, torch.arange(W, dtype=d) + 0.5, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    T = torch.ones(H * W, dtype=d)
    done = torch.zeros(H * W, dtype=torch.bool)
    n = m2d.shape[0]
    num = torch.zeros(n, D, dtype=d)
    den = torch.zeros(n, dtype=d)
    ids = torch.nonzero(lay["valid"])[:, 0]
    for i in ids[torch.argsort(lay["depths"][ids], stable=True)].tolist():
        dx, dy = m2d[i, 0] - xs, m2d[i, 1] - ys
        a, b, c = conics[i]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opac[i] * torch.exp(-sigma), max=0.999)
        live = ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
        next_T = T * (1 - alpha)
        stop = live & (next_T <= 1e-4)
        done |= stop
        live &= ~stop
        w = torch.where(live, alpha * T, torch.zeros_like(T))
        num[i] = w @ F
        den[i] = w.sum()
        T = torch.where(live, next_T, T)
    return num.float(), den.float(), int(done.sum())


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 2e-5) -> float:
    scale = float(want.abs().max().clamp_min(1e-6))
    err = float((got - want).abs().max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} x {scale:.3g}"
    return err / scale


# ------------------------------------------------------------------ CPU: the interpreted kernel
@pytest.mark.skipif(INTERPRET, reason="runs in the parent process")
@pytest.mark.skipif(_fully_fused_projection is None, reason="needs gsplat's pure-torch reference functions")
def test_layouts_agree():
    """The layout built from the torch backend lists, per tile, the same Gaussians in the same
    depth order as gsplat's reference ``_isect_tiles`` (wherever a Gaussian can be visible)."""
    g, cam = make_scene(5), make_camera()
    a, b = layout_gsplat(g, cam, 8), layout_fulcra(g, cam, 8)
    # gsplat's boxes are conservative (and keep Gaussians under 1/255 opacity); the torch backend
    # drops every Gaussian whose alpha reaches 1/255 at no pixel centre: a subset, and what it
    # drops has no weight anywhere
    v = b["valid"]
    assert not (v & ~a["valid"]).any()
    keep_a = v
    extra = a["valid"] & ~v
    assert not reference_adjoint(a, torch.ones(cam.height, cam.width, 1))[1][extra].any()
    torch.testing.assert_close(a["means2d"][0, v], b["means2d"][0, v], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(a["conics"][0, v], b["conics"][0, v], rtol=1e-4, atol=1e-6)
    fa, fb = a["flat"].long(), b["flat"].long()
    oa, ob = a["offsets"].flatten().tolist() + [len(fa)], b["offsets"].flatten().tolist() + [len(fb)]
    for t in range(len(oa) - 1):
        la = [i for i in fa[oa[t] : oa[t + 1]].tolist() if keep_a[i]]
        assert la == fb[ob[t] : ob[t + 1]].tolist(), f"tile {t}"


@interp
@pytest.mark.parametrize(("dim", "block", "block_k"), [(1, 64, 32), (3, 64, 16), (40, 64, 32), (40, 16, 64)])
def test_kernel_matches_per_pixel_reference_and_torch_backend(dim, block, block_k):
    from fulcra_plugins.scenes import _adjoint_triton as A

    assert A.interpreted()
    g, cam = make_scene(dim), make_camera()
    lay = build_layout(LAYOUT, g, cam, 16)
    F = torch.rand(cam.height, cam.width, dim, generator=torch.Generator().manual_seed(dim)) - 0.3
    num, den = A.adjoint_from_projection(
        len(g.opacities),
        lay["means2d"],
        lay["conics"],
        lay["opacities"],
        F,
        16,
        lay["offsets"],
        lay["flat"],
        max_channel_block=block,
        block_k=block_k,
    )
    ref_num, ref_den, stopped = reference_adjoint(lay, F)
    assert stopped > 0, "the scene must saturate some pixels"
    assert int((ref_den > 0).sum()) > 100
    _close(num, ref_num, "Σ w F vs per-pixel reference", rel=5e-6)
    _close(den, ref_den, "Σ w vs per-pixel reference", rel=5e-6)
    # the torch backend's fused adjoint (its own projection and tiling) on the same scene
    ts = TorchScene.from_gaussians(g, device="cpu")
    tb = ts.render_adjoint(torch.cat([F, torch.ones_like(F[..., :1])], -1), cam)
    _close(num, tb[:, :dim], "Σ w F vs torch backend", rel=2e-5)
    _close(den, tb[:, dim], "Σ w vs torch backend", rel=2e-5)


@interp
def test_small_tiles_packed_rows_and_two_images():
    """8-px tiles (12 per image, partial ones at the border) for two images in one launch, and
    gsplat's packed layout (rows: the visible Gaussians only) mapped back to Gaussians."""
    from fulcra_plugins.scenes import _adjoint_triton as A

    g = make_scene(7)
    cams = [make_camera(), make_camera(shift=0.25)]
    n, dim = len(g.opacities), 5
    Fs = [torch.rand(24, 32, dim, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    lays = [build_layout("fulcra", g, c, 8) for c in cams]
    refs = [reference_adjoint(lay, F) for lay, F in zip(lays, Fs)]
    # two images in one launch: rows [2 * N], offsets [2, TH, TW] into one flatten_ids
    flat = torch.cat([lays[0]["flat"], lays[1]["flat"] + n])
    offsets = torch.cat([lays[0]["offsets"], lays[1]["offsets"] + lays[0]["flat"].numel()])
    num2, den2 = A.rasterize_adjoint(
        torch.cat([lay["means2d"] for lay in lays]),
        torch.cat([lay["conics"] for lay in lays]),
        torch.cat([lay["opacities"] for lay in lays]),
        torch.stack(Fs),
        8,
        offsets,
        flat,
    )
    for i in range(2):
        _close(num2[i * n : (i + 1) * n], refs[i][0], f"image {i} of 2")
        _close(den2[i * n : (i + 1) * n], refs[i][1], f"image {i} of 2, weights")
    # packed, 16-px tiles: flatten_ids index the packed rows
    lay = build_layout("fulcra", g, cams[0], 16)
    gid = torch.nonzero(lay["valid"])[:, 0]
    row_of = torch.full((n,), -1, dtype=torch.long)
    row_of[gid] = torch.arange(len(gid))
    num_p, den_p = A.adjoint_from_projection(
        n,
        lay["means2d"][0, gid],
        lay["conics"][0, gid],
        lay["opacities"][0, gid],
        Fs[0],
        16,
        lay["offsets"],
        row_of[lay["flat"].long()].to(torch.int32),
        gaussian_ids=gid.to(torch.int32),
    )
    _close(num_p, refs[0][0], "packed rows")
    _close(den_p, refs[0][1], "packed rows, weights")
    assert not num_p[~lay["valid"]].any()


@interp
def test_bad_inputs_name_the_argument():
    from fulcra_plugins.scenes import _adjoint_triton as A

    g, cam = make_scene(1, n=40), make_camera()
    lay = build_layout("fulcra", g, cam, 16)
    args = (lay["means2d"], lay["conics"], lay["opacities"])
    with pytest.raises(ValueError, match="images must be"):
        A.rasterize_adjoint(*args, torch.zeros(24, 32, 3), 16, lay["offsets"], lay["flat"])
    with pytest.raises(ValueError, match="do not cover"):
        A.rasterize_adjoint(*args, torch.zeros(1, 24, 32, 3), 8, lay["offsets"], lay["flat"])
    with pytest.raises(ValueError, match="conics"):
        A.rasterize_adjoint(
            lay["means2d"],
            lay["conics"][:, :5],
            lay["opacities"],
            torch.zeros(1, 24, 32, 3),
            16,
            lay["offsets"],
            lay["flat"],
        )
    with pytest.raises(ValueError, match="16, 32 or 64"):
        A.channel_block(3, 8)
    # an empty intersection list is a zero adjoint, not an error
    num, den = A.rasterize_adjoint(
        *args, torch.ones(1, 24, 32, 2), 16, torch.zeros_like(lay["offsets"]), lay["flat"][:0]
    )
    assert not num.any() and not den.any()


class _CpuGsplat:
    """gsplat 1.5.3's projection and intersection API (``fully_fused_projection``, ``isect_tiles``,
    ``isect_offset_encode``; argument names, packed and unpacked return layouts) on CPU, through
    its pure-torch reference functions: so the plumbing of ``GsplatScene.render_adjoint`` runs here."""

    __version__ = "1.5.3"

    def fully_fused_projection(
        self,
        means,
        covars,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        eps2d=0.3,
        near_plane=0.01,
        far_plane=1e10,
        radius_clip=0.0,
        packed=False,
        sparse_grad=False,
        calc_compensations=False,
        camera_model="pinhole",
        opacities=None,
    ):
        from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

        assert covars is None and radius_clip == 0.0 and not calc_compensations and opacities is not None
        cov, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
        radii, m2d, depths, conics, comp = _fully_fused_projection(
            means, cov, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane
        )
        if not packed:
            return radii, m2d, depths, conics, comp
        gid = torch.nonzero((radii[0] > 0).all(-1))[:, 0].to(torch.int32)
        zeros = torch.zeros_like(gid)
        return zeros, zeros, gid, radii[0, gid], m2d[0, gid], depths[0, gid], conics[0, gid], None

    def isect_tiles(
        self,
        means2d,
        radii,
        depths,
        tile_size,
        tile_width,
        tile_height,
        sort=True,
        segmented=False,
        packed=False,
        n_images=None,
        image_ids=None,
        gaussian_ids=None,
    ):
        if not packed:
            return _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
        assert n_images == 1 and image_ids is not None and not image_ids.any()
        # the unpacked intersections of the packed rows, renumbered to rows
        tpg, ids, flat = _isect_tiles(means2d[None], radii[None], depths[None], tile_size, tile_width, tile_height)
        return tpg[0], ids, flat

    def isect_offset_encode(self, isect_ids, n_images, tile_width, tile_height):
        return _isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


@interp
@pytest.mark.skipif(_fully_fused_projection is None, reason="needs gsplat's pure-torch reference functions")
@pytest.mark.parametrize("packed", [False, True])
def test_gsplat_scene_render_adjoint_plumbing_on_cpu(packed):
    """``GsplatScene``'s fused path (projection arguments, tuple layouts, packed rows mapped back)
    with gsplat's CUDA entry points replaced by their CPU references, against the torch backend."""
    from fulcra_plugins.scenes import _adjoint_triton as A
    from fulcra_plugins.scenes.gsplat_backend import GsplatScene

    g, cam = make_scene(11), make_camera(shift=0.1)
    scene = object.__new__(GsplatScene)  # the constructor insists on CUDA
    scene.device, scene.gaussians, scene._gs, scene.packed = torch.device("cpu"), g, _CpuGsplat(), packed
    F = torch.rand(cam.height, cam.width, 6, generator=torch.Generator().manual_seed(3))
    got = scene._fused(A, F, cam)
    want = TorchScene.from_gaussians(g, device="cpu").render_adjoint(F, cam)
    assert got.shape == (len(g.opacities), 6)
    _close(got, want, f"GsplatScene._fused(packed={packed}) vs torch backend", rel=1e-4)
    # the weight sums of the same pass (render_adjoint_with_weights: no ones channel)
    num, w = scene._fused(A, F, cam, with_weights=True)
    want_num, want_w = TorchScene.from_gaussians(g, device="cpu").render_adjoint_with_weights(F, cam)
    assert torch.equal(num, got) and w.shape == (len(g.opacities),)
    _close(w, want_w, f"GsplatScene._fused(packed={packed}) weight sums vs torch backend", rel=1e-4)


@pytest.mark.skipif(INTERPRET, reason="runs in the parent process (compiled Triton)")
@pytest.mark.parametrize(("block_c", "dot_precision"), [(16, "ieee"), (64, "ieee"), (64, "tf32x3")])
def test_kernel_compiles_for_hopper_without_a_gpu(block_c, dot_precision):
    """The interpreter runs Python, not Triton's compiler: compile the kernel ahead of time for
    sm_90 (PTX and cubin through the wheel's ptxas; no GPU needed) so that what only the compiler
    rejects (non-constexpr globals, loop-carried types, dot shapes) fails here too."""
    import triton

    from fulcra_plugins.scenes import _adjoint_triton as A

    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 3):
        pytest.skip(f"compile_ahead uses Triton >= 3.3's ASTSource, this is {triton.__version__}")
    try:
        k = A.compile_ahead(90, block_c=block_c, dot_precision=dot_precision)
    except RuntimeError as exc:  # a wheel without the NVIDIA backend's ptxas
        if "ptxas" in str(exc).lower():
            pytest.skip(f"no ptxas: {exc}")
        raise
    assert k.asm["cubin"] and ".entry _adjoint_kernel" in k.asm["ptx"]
    assert ("mma" in k.asm["ptx"]) == (dot_precision == "tf32x3")  # ieee: no tensor cores, no TF32


def test_gsplat_scene_picks_its_path():
    """Compiled Triton (this process unless it is the interpreter child): the fused path; the
    interpreter, ``fused_adjoint=False`` or a gsplat without the 1.5 API: autograd, the reason
    warned once (and not at all for an explicit ``fused_adjoint=False``)."""
    import warnings

    from fulcra_plugins.scenes import _adjoint_triton as A
    from fulcra_plugins.scenes import gsplat_backend as gb

    def scene(gs, fused=True):
        s = object.__new__(gb.GsplatScene)  # the constructor insists on CUDA
        s._gs, s.fused_adjoint, s._fused_off = gs, fused, "" if fused else "fused_adjoint=False"
        return s

    assert A.interpreted() == INTERPRET
    gb._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = scene(_CpuGsplat())._fused_kernel()
        assert scene(_CpuGsplat(), fused=False)._fused_kernel() is None

        class Old(_CpuGsplat):  # gsplat 1.4's isect_tiles: no image_ids
            def isect_tiles(self, means2d, radii, depths, tile_size, tile_width, tile_height, sort=True):
                raise AssertionError

        old = scene(Old())
        assert old._fused_kernel() is None and old._fused_kernel() is None
    if INTERPRET:
        assert got is None
    else:
        assert got is A
    texts = [str(w.message) for w in caught]
    # each reason said once, whatever the number of scenes and calls (under the interpreter that
    # is the reason for every scene, checked before the gsplat version)
    assert sum("predates the 1.5 API" in t for t in texts) == (0 if INTERPRET else 1), texts
    assert sum("TRITON_INTERPRET" in t for t in texts) == (1 if INTERPRET else 0), texts
    assert not any("fused_adjoint=False" in t for t in texts)
    gb._warned.clear()


@pytest.mark.skipif(INTERPRET, reason="runs in the parent process")
def test_cpu_stand_in_has_gsplats_signatures():
    """:class:`_CpuGsplat` takes exactly the parameters of the installed gsplat's CUDA wrappers, so
    the CPU tests of ``GsplatScene``'s fused path call what the GPU will call."""
    import inspect

    gsplat = pytest.importorskip("gsplat")
    for name in ("fully_fused_projection", "isect_tiles", "isect_offset_encode"):
        want = list(inspect.signature(getattr(gsplat, name)).parameters)
        got = list(inspect.signature(getattr(_CpuGsplat(), name)).parameters)
        assert got == want, f"{name}: stand-in {got} vs gsplat {gsplat.__version__} {want}"


def _cpu_gsplat_scene(g: Gaussians, packed: bool = False, fused: bool = True):
    """A ``GsplatScene`` on CPU (its constructor insists on CUDA): gsplat's projection and
    intersections from :class:`_CpuGsplat`, ``render`` from the torch backend (for the autograd path)."""
    from fulcra_plugins.scenes.gsplat_backend import GsplatScene

    s = object.__new__(GsplatScene)
    s.device, s.gaussians, s.source, s._gs = torch.device("cpu"), g, None, _CpuGsplat()
    s.channel_chunk, s.packed, s.fused_adjoint = 64, packed, fused
    s.adjoint_path, s._fused_off, s._fused_tried = "", "" if fused else "fused_adjoint=False", False
    s.render = TorchScene.from_gaussians(g, device="cpu").render
    return s


@interp
@pytest.mark.skipif(_fully_fused_projection is None, reason="needs gsplat's pure-torch reference functions")
def test_render_adjoint_end_to_end_on_cpu(monkeypatch):
    """``render_adjoint`` and ``fulcra.uplift`` through the fused path (the interpreter standing in
    for the compiled kernel), against the torch backend."""
    import fulcra
    from fulcra_plugins.scenes import _adjoint_triton as A

    monkeypatch.setattr(A, "interpreted", lambda: False)
    g, cams = make_scene(13), [make_camera(), make_camera(shift=0.2)]
    scene = _cpu_gsplat_scene(g)
    ref = TorchScene.from_gaussians(g, device="cpu")
    F = torch.rand(24, 32, 4, generator=torch.Generator().manual_seed(0))
    _close(scene.render_adjoint(F, cams[0]), ref.render_adjoint(F, cams[0]), "render_adjoint", rel=1e-4)
    assert scene.adjoint_path == "fused"
    maps = [(c, torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(i))) for i, c in enumerate(cams)]
    (f_a, w_a), (f_b, w_b) = fulcra.uplift(scene, maps), fulcra.uplift(ref, maps)
    _close(w_a, w_b, "uplift weights", rel=1e-4)
    seen = w_b > 1e-3 * w_b.max()
    _close(f_a[seen], f_b[seen], "uplift features", rel=1e-4)
    with pytest.raises(ValueError, match="images must be"):
        scene.render_adjoint(F[:-1], cams[0])


@pytest.mark.skipif(INTERPRET, reason="runs in the parent process (compiled Triton)")
@pytest.mark.skipif(_fully_fused_projection is None, reason="needs gsplat's pure-torch reference functions")
def test_render_adjoint_falls_back_when_the_kernel_fails_on_first_use():
    """Compiled Triton cannot launch on CPU tensors here: the first call falls back to autograd,
    says why once, and later calls go straight to autograd."""
    from fulcra_plugins.scenes import gsplat_backend as gb

    g, cam = make_scene(13), make_camera()
    scene = _cpu_gsplat_scene(g)
    F = torch.rand(24, 32, 4, generator=torch.Generator().manual_seed(0))
    gb._warned.clear()
    with pytest.warns(RuntimeWarning, match="failed on first use"):
        got = scene.render_adjoint(F, cam)
    assert scene.adjoint_path == "autograd"
    _close(got, TorchScene.from_gaussians(g, device="cpu").render_adjoint(F, cam), "autograd fallback", rel=1e-5)
    assert "failed on first use" in scene._fused_off
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene.render_adjoint(F, cam)
    assert scene.adjoint_path == "autograd" and not caught, [str(w.message) for w in caught]
    gb._warned.clear()


# ------------------------------------------------------------------------ GPU: compiled kernel
@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs CUDA and compiled Triton")
@pytest.mark.parametrize("packed", [False, True])
def test_gsplat_fused_adjoint_matches_autograd_on_cuda(packed):
    pytest.importorskip("gsplat")
    import fulcra
    from fulcra.testing import check_adjoint_scene
    from fulcra_plugins.scenes import _adjoint_triton as A
    from fulcra_plugins.scenes.gsplat_backend import GsplatScene
    from fulcra_plugins.scenes.synthetic import build_cameras, build_gaussians

    g, _ = build_gaussians(seed=0, density=1.0)
    cams = build_cameras(160, 120, n_ring=4, n_forward=1)
    fused = GsplatScene.from_gaussians(g, device="cuda", packed=packed)
    auto = GsplatScene.from_gaussians(g, device="cuda", packed=packed, fused_adjoint=False)
    gen = torch.Generator("cuda").manual_seed(0)
    for dim in (1, 41, 70):
        for cam in cams[::2]:
            F = torch.rand(cam.height, cam.width, dim, device="cuda", generator=gen)
            a = fused.render_adjoint(F, cam)
            assert fused.adjoint_path == "fused", fused._fused_off
            b = auto.render_adjoint(F, cam)
            assert auto.adjoint_path == "autograd"
            scale = float(b.abs().max())
            err = float((a - b).abs().max())
            assert err <= 1e-4 * scale, (dim, err, scale)
            # the weight sums of the same pass against autograd of a ones channel
            num, w = fused.render_adjoint_with_weights(F, cam)
            ones = auto.render_adjoint(torch.ones_like(F[..., :1]), cam)[:, 0]
            top = float(ones.abs().max())
            assert float((num - b).abs().max()) <= 1e-4 * scale and float((w - ones).abs().max()) <= 1e-4 * top
            n2, w2 = auto.render_adjoint_with_weights(F, cam)  # the autograd path appends the channel
            assert float((n2 - b).abs().max()) <= 1e-5 * scale and float((w2 - ones).abs().max()) <= 1e-5 * top
            # the tensor-core variant (three TF32 passes) stays close to float32 too
            c = fused._fused(A, F, cam, dot_precision="tf32x3")
            assert float((c - b).abs().max()) <= 1e-3 * scale, (dim, float((c - b).abs().max()), scale)
    # and the whole uplift against the torch backend (its own projection and tiling)
    maps = [(c, torch.rand(8, 30, 40, device="cuda", generator=gen)) for c in cams]
    f_g, w_g = fulcra.uplift(fused, maps)
    f_t, w_t = fulcra.uplift(TorchScene.from_gaussians(g, device="cuda"), maps)
    seen = w_t > 1e-2 * w_t.max()
    # the bounds of test_gsplat_backend (two projections and tilings: float rounding may flip a
    # few transmittance stops); the fused-vs-autograd check above is the strict one
    assert float(((w_g - w_t).abs()[seen] / w_t[seen]).median()) < 1e-2
    assert float((f_g[seen] - f_t[seen]).abs().mean()) < 1e-2
    check_adjoint_scene(fused, cams[0], dim=5)  # <render(f), F> = <f, render_adjoint(F)>
