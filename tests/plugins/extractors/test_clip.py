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


def test_crops_shapes_and_windows(tiny_clip):
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    y = tiny_clip(x)
    assert y.shape == (2, tiny_clip.dim, 8, 11) and y.dtype == torch.float32
    for boxes in tiny_clip.windows(24, 32).values():
        assert torch.allclose(window_weights(8, 11, boxes).sum(0), torch.ones(8, 11))


def test_crops_equal_slow_reference():
    """One scale, windows = the whole image along the short side: each cell averages the embeddings
    of the crops covering it."""
    e = CLIPExtractor(tiny=True, grid=4, scales=[1.0])
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
    for mode in ("crops", "dense"):
        a = CLIPExtractor(tiny=True, grid=8, scales=[0.5, 1.0], mode=mode, dense_resolution=32)(x)
        gpu = CLIPExtractor(tiny=True, grid=8, scales=[0.5, 1.0], mode=mode, dense_resolution=32, device="cuda")
        b = gpu(x.cuda())
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-3)
        r = gpu.relevancy(b, ["a chair"], channel_dim=1)
        assert r.is_cuda and r.shape == (1, 1, 8, 11)
