"""dinov2: sliding windows + PCA over all views, on a tiny random DINOv2 (no weights)."""

import numpy as np
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
    ref.fit(4, standardize=True)
    assert torch.allclose(e.pca.eigenvalues, ref.eigenvalues, rtol=1e-4)
    assert torch.allclose(e.pca.components, ref.components, atol=1e-4)
    # PCA then aggregation = aggregation then PCA (both linear, weights sum to 1)
    y = e(views[1][None])[0]
    full = raw(views[1][None])[0]
    expect = ref.transform(full, "sqrt", channel_dim=0)
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


# ---------------------------------------------------------------------------------------------
# the official defaults (configs/dif_SPIn.yaml, predictors/dino.py, utils/sliding_windows.py)


def test_defaults_are_the_official_ones():
    import inspect

    p = inspect.signature(DINOv2Extractor).parameters
    got = {k: p[k].default for k in ("variant", "n_components", "pca_weighting", "pca_standardize")}
    assert got == {"variant": "vitg14_reg", "n_components": 40, "pca_weighting": "sqrt", "pca_standardize": True}
    got = {k: p[k].default for k in ("resolution", "crop_size", "stride", "window_spacing")}
    assert got == {"resolution": None, "crop_size": 840, "stride": 200, "window_spacing": "even"}


def test_official_crop_grid_at_native_resolution():
    """A 1199 x 1600 view (LLFF at the official 1600-pixel cap): resized to whole patches 1190 x 1596;
    840-pixel crops, the stride 200 shrunk to 175 rows / 189 columns so they spread evenly."""
    e = DINOv2Extractor(variant="vits14_reg", tiny=True)
    assert e.processed_size(1199, 1600) == (1190, 1596)
    ys, xs = [0, 175, 350], [0, 189, 378, 567, 756]
    assert e.boxes(1199, 1600) == [(y, x, y + 840, x + 840) for y in ys for x in xs]
    # a view whose short side is under 840: square crops of the short side (378 = 27 patches)
    assert e.boxes(378, 504) == [(0, 0, 378, 378), (0, 126, 378, 504)]
    # the former placement stays available
    fixed = DINOv2Extractor(variant="vits14_reg", tiny=True, window_spacing="fixed")
    assert [b[0] for b in fixed.boxes(1199, 1600)[::5]] == [0, 200, 350]


def _tokens_matrix(raw, views):
    return np.concatenate(
        [raw.tokens(v[None])[0].movedim(1, -1).reshape(-1, raw.embed_dim).double().numpy() for v in views]
    )


def test_zscore_sqrt_pca_equals_slow_numpy_reference():
    """Every token dimension z-scored over all patches of all views, eigenvectors of the result's
    covariance, component k scaled by sqrt(λ_k / λ_1): against numpy in float64 (and sklearn's
    singular values, which the official code multiplies by, up to one constant)."""
    views = [images(1, seed=s)[0] for s in range(3)]
    kw = dict(variant="vits14_reg", tiny=True, crop_size=28, stride=14)
    e = DINOv2Extractor(n_components=5, **kw).fit(views)
    raw = DINOv2Extractor(n_components=0, **kw)
    X = _tokens_matrix(raw, views)  # [N, D]
    Z = (X - X.mean(0)) / X.std(0, ddof=1)
    lam, V = np.linalg.eigh(np.cov(Z, rowvar=False))
    lam, V = lam[::-1][:5], V[:, ::-1][:, :5]
    ref = Z @ V * np.sqrt(lam / lam[0])
    tok = raw.tokens(views[2][None])[0]  # [n, D, g, g]
    got = e.project(tok).movedim(1, -1).reshape(-1, 5).double().numpy()
    n = got.shape[0]
    ref_v = ref[-n:]  # the last view's patches
    signs = np.sign((got * ref_v).sum(0))
    assert np.allclose(got, ref_v * signs, atol=2e-3 * np.abs(ref_v).max())
    assert np.allclose(e.pca.eigenvalues.numpy(), lam, rtol=1e-3)
    sklearn = pytest.importorskip("sklearn.decomposition")
    sv = sklearn.PCA(n_components=5, svd_solver="full").fit(Z).singular_values_
    assert np.allclose(e.pca.weights("sqrt").numpy(), sv / sv[0], rtol=1e-3)
    # standardisation matters: without it the basis differs
    plain = DINOv2Extractor(n_components=5, pca_standardize=False, **kw).fit(views)
    assert not torch.allclose(plain.pca.eigenvalues, e.pca.eigenvalues, rtol=1e-2)


def test_native_resolution_output_equals_slow_reference():
    """resolution=None: whole-patch resize (45 x 60 -> 42 x 56), crops averaged there, then the map
    resized bilinearly back to the input's 45 x 60 pixels."""
    kw = dict(variant="vits14_reg", tiny=True, crop_size=28, stride=14, n_components=0)
    e = DINOv2Extractor(**kw)
    x = images(1, 45, 60)
    y = e(x)[0]
    assert y.shape == (e.embed_dim, 45, 60)
    xr = F.interpolate(x, size=(42, 56), mode="bilinear", align_corners=False)
    boxes = sliding_windows(42, 56, 28, 14, spacing="even")
    w = window_weights(42, 56, boxes)
    acc = torch.zeros(e.embed_dim, 42, 56)
    for n, (y0, x0, y1, x1) in enumerate(boxes):
        with torch.no_grad():
            tok = e.backbone.forward_tokens(e.backbone.normalize(xr[:, :, y0:y1, x0:x1]))["patch"].half().float()
        placed = torch.zeros_like(acc)
        placed[:, y0:y1, x0:x1] = F.interpolate(tok, size=(28, 28), mode="bilinear", align_corners=False)[0]
        acc += placed * w[n]
    ref = F.interpolate(acc[None], size=(45, 60), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(y, ref, atol=1e-4)


def test_same_output_for_any_batch_size_and_thread_count():
    x = images(3, 45, 60)
    kw = dict(variant="vits14_reg", tiny=True, crop_size=28, stride=14, n_components=4)
    views = [x[i] for i in range(3)]
    ref = DINOv2Extractor(batch_size=1, **kw).fit(views)(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        other = DINOv2Extractor(batch_size=16, **kw).fit(views)(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(ref, other, rtol=0, atol=1e-6)  # bitwise equal on the machines tried


def test_renamed_or_unknown_keys_fail_with_the_key():
    from fulcra.errors import ConfigError

    with pytest.raises(ConfigError, match="pca_weighting"):
        DINOv2Extractor(variant="vits14_reg", tiny=True, pca_weighting="eigval")
    with pytest.raises(ConfigError, match="window_spacing"):
        DINOv2Extractor(variant="vits14_reg", tiny=True, window_spacing="uniform")
