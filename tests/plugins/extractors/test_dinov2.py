"""dinov2: sliding windows + PCA over all views, on a tiny random DINOv2 (no weights)."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")

from fulcra_plugins.extractors.common import PCA, sliding_windows, window_weights  # noqa: E402
from fulcra_plugins.extractors.dinov2 import DINOv2Extractor, resize_short_side  # noqa: E402

KW = dict(variant="vits14_reg", tiny=True, resolution=42, crop_size=28, stride=14)


def images(b=2, h=30, w=40, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_shapes_dtype_and_windows():
    e = DINOv2Extractor(n_components=5, **KW)
    y = e(images())
    assert y.shape == (2, 5, 42, 56) and y.dtype == torch.float32 and e.dim == 5
    assert e.boxes(30, 40) == sliding_windows(42, 56, 28, 14)
    assert len(e.boxes(30, 40)) == 2 * 3
    y2 = DINOv2Extractor(n_components=5, output_stride=2, **KW)(images())
    assert y2.shape == (2, 5, 21, 28)


def test_raw_features_equal_slow_per_pixel_reference():
    """n_components=0: each pixel = the 1/count-weighted sum of the bilinearly upsampled crop tokens."""
    e = DINOv2Extractor(n_components=0, **KW)
    x = images(1)
    y = e(x)[0]  # [D, 42, 56]
    xr = resize_short_side(x, 42)
    boxes = sliding_windows(42, 56, 28, 14)
    w = window_weights(42, 56, boxes)
    ref = torch.zeros_like(y)
    for n, (y0, x0, y1, x1) in enumerate(boxes):
        crop = e.backbone.normalize(xr[:, :, y0:y1, x0:x1])
        with torch.no_grad():
            tok = e.backbone.forward_tokens(crop)["patch"].half().float()  # [1, D, 2, 2]
        up = F.interpolate(tok, size=(28, 28), mode="bilinear", align_corners=False)[0]
        placed = torch.zeros_like(y)
        placed[:, y0:y1, x0:x1] = up
        ref += placed * w[n]
    assert torch.allclose(y, ref, atol=1e-4)


def test_pca_fitted_over_all_views_and_reweighted():
    views = [images(1, seed=s)[0] for s in range(3)]
    e = DINOv2Extractor(n_components=4, **KW).fit(views)
    ref = PCA(e.embed_dim)
    raw = DINOv2Extractor(n_components=0, **KW)
    for v in views:
        ref.update(raw.tokens(v[None]).movedim(2, -1))
    ref.fit(4)
    assert torch.allclose(e.pca.eigenvalues, ref.eigenvalues, rtol=1e-4)
    assert torch.allclose(e.pca.components, ref.components, atol=1e-4)
    # PCA then aggregation = aggregation then PCA (both linear, weights sum to 1)
    y = e(views[1][None])[0]
    full = raw(views[1][None])[0]
    expect = ref.transform(full, "eigenvalue", channel_dim=0)
    assert torch.allclose(y, expect, atol=1e-3)
    # first components dominate after re-weighting
    var = y.flatten(1).var(1)
    assert var[0] > var[-1]


def test_pca_fitted_once_then_fixed():
    e = DINOv2Extractor(n_components=3, **KW)
    x = images(3)
    a = e(x)
    b = e(x[1:2])  # uses the PCA fitted on the first batch
    assert torch.allclose(a[1:2], b, atol=1e-5)
    e.reset_pca()
    assert not e.fitted


def test_cache_hit_does_not_run_backbone(tmp_path):
    x = images(2)
    e = DINOv2Extractor(n_components=3, cache_dir=str(tmp_path), **KW)
    y = e(x)
    e2 = DINOv2Extractor(n_components=3, cache_dir=str(tmp_path), **KW)

    def boom(*a, **k):
        raise AssertionError("backbone called despite the cache")

    e2.backbone.forward_tokens = boom
    assert torch.allclose(e2(x), y, atol=1e-6)


def test_bad_params():
    from fulcra.errors import ConfigError

    with pytest.raises(ConfigError, match="vits14_reg"):
        DINOv2Extractor(variant="vits14reg", tiny=True)
    with pytest.raises(ConfigError, match="multiple"):
        DINOv2Extractor(variant="vits14", tiny=True, crop_size=30, resolution=60)
    with pytest.raises(ConfigError):
        DINOv2Extractor(variant="vits14", tiny=True, crop_size=28, resolution=14)


def test_missing_weights_say_where(tmp_path, monkeypatch):
    from fulcra.errors import WeightsNotFoundError

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="put it at"):
        DINOv2Extractor(variant="vits14_reg")
    with pytest.raises(WeightsNotFoundError):
        DINOv2Extractor(variant="vits14_reg", weights=str(tmp_path / "missing.pth"))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    x = images(2)
    cpu = DINOv2Extractor(n_components=3, **KW)
    gpu = DINOv2Extractor(n_components=3, device="cuda", **KW)
    a, b = cpu(x), gpu(x.cuda())
    assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-2)


def test_token_cache_is_float16_and_lossless(tmp_path):
    x = images(1)
    e = DINOv2Extractor(n_components=0, cache_dir=str(tmp_path), **KW)
    fresh = e(x)
    files = list((tmp_path / "tokens").rglob("*.pt"))
    assert len(files) == 1 and torch.load(files[0], weights_only=True).dtype == torch.float16
    assert torch.equal(DINOv2Extractor(n_components=0, cache_dir=str(tmp_path), **KW)(x), fresh)
