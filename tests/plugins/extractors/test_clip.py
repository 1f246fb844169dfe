"""clip: multi-scale crop grid, dense mode, text, relevancy (Eq. C.2), on a tiny random CLIP."""

import pytest
import torch
import torch.nn.functional as F

from fulcra_plugins.extractors.clip import CANONICAL_PHRASES, relevancy, relevancy_reference
from fulcra_plugins.extractors.common import window_weights


def test_relevancy_matches_equation_c2_and_is_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    f, q, c = torch.randn(50, 16, generator=g), torch.randn(3, 16, generator=g), torch.randn(4, 16, generator=g)
    r = relevancy(f, q, c, temperature=10.0)
    assert r.shape == (50, 3) and r.dtype == torch.float32
    assert torch.allclose(r.double(), relevancy_reference(f, q, c, 10.0), atol=1e-6)
    assert float(r.min()) >= 0 and float(r.max()) <= 1


def test_relevancy_is_monotone_in_query_similarity():
    g = torch.Generator().manual_seed(1)
    c = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    f = F.normalize(torch.randn(1, 8, generator=g), dim=-1)
    # queries rotating towards f: increasing cosine with the feature
    other = F.normalize(torch.randn(1, 8, generator=g), dim=-1)
    ts = torch.linspace(0, 1, 11)[:, None]
    q = F.normalize((1 - ts) * other + ts * f, dim=-1)
    sims = (q @ f.T)[:, 0]
    r = relevancy(f, q, c)[0]
    order = sims.argsort()
    assert torch.all(r[order][1:] >= r[order][:-1] - 1e-7)
    assert r[order][-1] > r[order][0]


def test_relevancy_on_maps_and_per_gaussian_features():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 16, 5, 6, generator=g)
    q, c = torch.randn(3, 16, generator=g), torch.randn(4, 16, generator=g)
    r_maps = relevancy(maps, q, c, channel_dim=1)
    assert r_maps.shape == (2, 3, 5, 6)
    flat = relevancy(maps.permute(0, 2, 3, 1).reshape(-1, 16), q, c)  # per-Gaussian [N, D]
    assert torch.allclose(r_maps.permute(0, 2, 3, 1).reshape(-1, 3), flat, atol=1e-6)


pytest.importorskip("open_clip")

from fulcra_plugins.extractors.clip import CLIPExtractor  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip():
    return CLIPExtractor(tiny=True, grid=8, scales=[0.5, 1.0], batch_size=32)


def test_crops_shapes_and_windows():
    e = CLIPExtractor(tiny=True, mode="crops", grid=8, scales=[0.5, 1.0], batch_size=32)
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    y = e(x)
    assert y.shape == (2, e.dim, 8, 11) and y.dtype == torch.float32
    for boxes in e.windows(24, 32).values():
        assert torch.allclose(window_weights(8, 11, boxes).sum(0), torch.ones(8, 11))


def test_crops_equal_slow_reference():
    """One scale, windows = the whole image along the short side: each cell averages the embeddings
    of the crops covering it."""
    e = CLIPExtractor(tiny=True, mode="crops", grid=4, scales=[1.0])
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    y = e(x)[0]  # [E, 4, 6]
    boxes = e.windows(16, 24)[1.0]  # 4x4 windows on a 4x6 grid, stride 2 -> x0 in {0, 2}
    assert boxes == [(0, 0, 4, 4), (0, 2, 4, 6)]
    embs = []
    for _, x0, _, x1 in boxes:
        crop = x[:, :, :, x0 * 4 : x1 * 4]
        crop = F.interpolate(crop, size=(e.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            embs.append(F.normalize(e.backbone.encode_image(e.backbone.normalize(crop)), dim=-1)[0])
    assert torch.allclose(y[:, 0, 0], embs[0], atol=1e-5)
    assert torch.allclose(y[:, 0, 3], (embs[0] + embs[1]) / 2, atol=1e-5)
    assert torch.allclose(y[:, 0, 5], embs[1], atol=1e-5)


def test_text_and_relevancy_of_maps(tiny_clip):
    t = tiny_clip.embed_text(["a red apple", "a chair"])
    assert t.shape == (2, tiny_clip.dim) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tiny_clip.canonical_phrases == list(CANONICAL_PHRASES)
    y = tiny_clip(torch.rand(1, 3, 16, 16))
    r = tiny_clip.relevancy(y, ["a red apple", "a chair"], channel_dim=1)
    assert r.shape == (1, 2, 8, 8) and float(r.min()) >= 0 and float(r.max()) <= 1
    # a feature equal to a query embedding is more relevant to it than to the other query
    r2 = tiny_clip.relevancy(t, t)
    assert r2[0, 0] > r2[0, 1] and r2[1, 1] > r2[1, 0]


def test_dense_mode_and_determinism():
    e = CLIPExtractor(tiny=True, mode="dense", grid=6, dense_resolution=32)
    x = torch.rand(2, 3, 30, 40, generator=torch.Generator().manual_seed(4))
    y = e(x)
    assert y.shape == (2, e.dim, 6, 8)
    assert torch.allclose(y, CLIPExtractor(tiny=True, mode="dense", grid=6, dense_resolution=32)(x), atol=1e-6)
    # the dense pass = MaskCLIP patch embeddings of the image at 2x3 tokens, upsampled and normalised
    xr = F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = e.backbone.patch_embeddings(e.backbone.normalize(xr))
    ref = F.normalize(F.interpolate(ref, size=(6, 8), mode="bilinear", align_corners=False), dim=1)
    assert torch.allclose(y, ref, atol=1e-5)


def test_bad_params():
    from fulcra.errors import ConfigError

    with pytest.raises(ConfigError):
        CLIPExtractor(tiny=True, mode="pyramid")
    with pytest.raises(ConfigError):
        CLIPExtractor(tiny=True, scales=[0.0])
    with pytest.raises(ConfigError):
        CLIPExtractor(tiny=True, variant="vitb32")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    for mode in ("tiles", "crops", "dense"):
        a = CLIPExtractor(tiny=True, grid=8, scales=[0.5, 1.0], mode=mode, dense_resolution=32)(x)
        gpu = CLIPExtractor(tiny=True, grid=8, scales=[0.5, 1.0], mode=mode, dense_resolution=32, device="cuda")
        b = gpu(x.cuda())
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-3)
        r = gpu.relevancy(b, ["a chair"], channel_dim=1)
        assert r.is_cuda and r.shape == (1, 1, 8, 11)


# ---------------------------------------------------------------------------------------------
# mode="tiles": the official multi-scale map (predictors/clip.py, clip_utils/openclip_encoder.py)

from fulcra_plugins.extractors.clip import OFFICIAL_SCALES, official_stride_ratios, tile_grid  # noqa: E402


def test_official_defaults_scales_and_strides():
    import inspect

    p = inspect.signature(CLIPExtractor).parameters
    assert {k: p[k].default for k in ("variant", "mode", "scales", "overlap", "grid", "temperature")} == {
        "variant": "vitb16_laion2b",
        "mode": "tiles",
        "scales": None,
        "overlap": None,
        "grid": None,
        "temperature": 10.0,
    }
    # np.linspace(0.05, 0.5, 7): evenly spaced by 0.075, not LERF's [0.05, 0.1, ..., 0.5]
    assert len(OFFICIAL_SCALES) == 7
    assert all(abs(a - b) < 1e-12 for a, b in zip(OFFICIAL_SCALES, [0.05, 0.125, 0.2, 0.275, 0.35, 0.425, 0.5]))
    assert official_stride_ratios(OFFICIAL_SCALES) == [1.0, 0.625, 0.5, 0.5, 0.5, 0.5, 0.5]
    e = CLIPExtractor(tiny=True)
    assert e.scales == list(OFFICIAL_SCALES) and e.stride_ratios == official_stride_ratios(OFFICIAL_SCALES)
    assert CLIPExtractor(tiny=True, overlap=0.25).stride_ratios == [0.75] * 7
    assert e.backbone.name == "clip_vitb16_laion2b"


def test_tile_grid_hand_computed_for_a_1199_x_1600_view():
    """(k, stride, pad, rows, cols): k = int(r H), stride = int(k q), pad = k // 2, Unfold's counts."""
    assert tile_grid(1199, 1600, OFFICIAL_SCALES[0], 1.0) == (59, 59, 29, 21, 28)
    assert tile_grid(1199, 1600, OFFICIAL_SCALES[1], 0.625) == (149, 93, 74, 13, 18)
    assert tile_grid(1199, 1600, OFFICIAL_SCALES[6], 0.5) == (599, 299, 299, 5, 6)
    # the counts are torch.nn.Unfold's
    for r, q in zip(OFFICIAL_SCALES, official_stride_ratios(OFFICIAL_SCALES)):
        k, s, pad, rows, cols = tile_grid(37, 53, r, q)
        n = torch.nn.Unfold(kernel_size=k, stride=s, padding=pad)(torch.zeros(1, 1, 37, 53)).shape[-1]
        assert n == rows * cols


def _unfold_tiles(x, k, s, pad):
    """The official tiling: nn.Unfold with zero padding, tiles row-major."""
    t = torch.nn.Unfold(kernel_size=k, stride=s, padding=pad)(x).permute(2, 0, 1)
    return t.reshape(-1, 3, k, k)


def test_border_tiles_are_zero_padded_and_ordered_as_unfold():
    e = CLIPExtractor(tiny=True, scales=[0.5], batch_size=7)
    x = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.5  # no black pixel
    seen = []
    encode = e.backbone.encode_image

    def spy(t):
        seen.append(t)
        return encode(t)

    e.backbone.encode_image = spy
    e(x)
    got = torch.cat(seen)
    k, s, pad, rows, cols = tile_grid(20, 30, 0.5, 0.5)
    assert (k, s, pad, rows, cols) == (10, 5, 5, 5, 7)
    ref = _unfold_tiles(x, k, s, pad)
    # the first tile hangs over the top-left corner: its top-left 5 x 5 is padding (black)
    assert torch.equal(ref[0, :, :5, :5], torch.zeros(3, 5, 5)) and bool((ref[0, :, 5:, 5:] > 0).all())
    S = e.input_size
    ref = e.backbone.normalize(F.interpolate(ref, size=(S, S), mode="bilinear", align_corners=False, antialias=True))
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-6)


def _official_map(e, x):
    """predictors/clip.py written out: per scale, Unfold tiles -> resize -> embed -> unit norm ->
    grid with the last row and column repeated -> bilinear to H x W; sum; unit norm per pixel."""
    H, W = x.shape[-2:]
    S = e.input_size
    acc = torch.zeros(e.dim, H, W)
    for r, q in zip(e.scales, e.stride_ratios):
        k, s, pad, rows, cols = tile_grid(H, W, r, q)
        tiles = F.interpolate(_unfold_tiles(x, k, s, pad), size=(S, S), mode="bilinear", antialias=True)
        with torch.no_grad():
            emb = F.normalize(e.backbone.encode_image(e.backbone.normalize(tiles)), dim=-1)
        g = emb.reshape(rows, cols, -1)
        g = torch.cat([g, g[:, [-1]]], 1)
        g = torch.cat([g, g[[-1]]], 0)
        acc += F.interpolate(g.permute(2, 0, 1)[None], size=(H, W), mode="bilinear")[0]
    return acc / acc.norm(dim=0, keepdim=True)


def test_tiles_map_equals_official_construction_at_full_resolution():
    e = CLIPExtractor(tiny=True, batch_size=256)
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(6))
    y = e(x)
    assert y.shape == (1, e.dim, 16, 20) and y.dtype == torch.float32
    assert torch.allclose(y[0], _official_map(e, x[0:1]), atol=1e-5)
    # grid=N: the same construction upsampled to N cells on the short side
    small = CLIPExtractor(tiny=True, grid=8, batch_size=256)(x)
    assert small.shape == (1, e.dim, 8, 10) and torch.allclose(small.norm(dim=1), torch.ones(1, 8, 10), atol=1e-5)


def test_tiles_same_for_any_batch_size_and_cached(tmp_path):
    x = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(7))
    a = CLIPExtractor(tiny=True, batch_size=1, scales=[0.25, 0.5])(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        b = CLIPExtractor(tiny=True, batch_size=500, scales=[0.25, 0.5], cache_dir=str(tmp_path))(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(a, b, rtol=0, atol=1e-6)
    files = list((tmp_path / "tiles").rglob("*.pt"))
    assert len(files) == 2  # tile embeddings per view, not full-resolution maps
    c = CLIPExtractor(tiny=True, scales=[0.25, 0.5], cache_dir=str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("CLIP called despite the cache")

    c.backbone.encode_image = boom
    assert torch.equal(c(x), b)
