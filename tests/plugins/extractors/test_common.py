"""Shared machinery: sliding windows, aggregation, PCA, cache, camera-set extraction."""

import numpy as np
import pytest
import torch

from fulcra_plugins.extractors import views
from fulcra_plugins.extractors.common import (
    PCA,
    aggregate_windows,
    even_window_starts,
    extract_views,
    iter_feature_maps,
    sliding_windows,
    window_starts,
    window_weights,
)
from fulcra_plugins.extractors.rgb import RGBExtractor


@pytest.mark.parametrize(
    "H,W,win,stride", [(10, 10, 4, 2), (13, 7, 5, 3), (6, 9, 6, 6), (5, 5, 8, 4), (100, 37, 16, 7), (9, 9, 3, 5)]
)
def test_windows_cover_every_pixel_and_weights_sum_to_one(H, W, win, stride):
    boxes = sliding_windows(H, W, win, stride)
    w = window_weights(H, W, boxes)  # [N, H, W]
    assert torch.allclose(w.sum(0), torch.ones(H, W)), "every pixel covered, weights sum to 1"
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W
        assert (y1 - y0) == min(win, H) and (x1 - x0) == min(win, W), (
            "windows keep their size (last one aligned to the border)"
        )


def test_window_starts_stride_and_end_alignment():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 3) == [0]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)


def test_even_window_starts_are_the_official_placement():
    """utils/sliding_windows.py: n = ceil((L - w) / s) steps of ceil((L - w) / n) pixels, last clipped."""
    assert even_window_starts(1190, 840, 200) == [0, 175, 350]
    assert even_window_starts(1596, 840, 200) == [0, 189, 378, 567, 756]
    assert even_window_starts(1040, 840, 200) == [0, 200]  # a stride that fits exactly is kept
    assert even_window_starts(1050, 840, 200) == [0, 105, 210]
    assert even_window_starts(840, 840, 200) == [0] and even_window_starts(500, 840, 200) == [0]
    assert even_window_starts(300, 56, 28) == [0, 28, 56, 84, 112, 140, 168, 196, 224, 244]  # ceil(244/9) = 28
    assert even_window_starts(57, 14, 100) == [0, 11, 22, 33, 43]  # stride above the window: no gaps
    for L, w, s in [(97, 10, 7), (300, 56, 28), (1000, 840, 1), (57, 14, 100), (11, 4, 3)]:
        st = even_window_starts(L, w, s)
        steps = [b - a for a, b in zip(st, st[1:])]
        # as many windows as the plain stride needs, equal steps <= stride, the last one possibly shorter
        assert st[0] == 0 and st[-1] == L - w and len(st) == len(window_starts(L, w, s))
        assert len(set(steps[:-1])) <= 1 and steps[-1] <= steps[0] <= s
        covered = torch.zeros(L, dtype=torch.bool)
        for a in st:
            covered[a : a + w] = True
        assert covered.all() and len(set(st)) == len(st)
    with pytest.raises(ValueError, match="spacing"):
        sliding_windows(10, 10, 4, 2, spacing="uniform")


def test_aggregate_windows_matches_explicit_weighted_sum():
    g = torch.Generator().manual_seed(0)
    H, W = 11, 14
    boxes = sliding_windows(H, W, 6, 4)
    maps = [torch.rand(3, 6, 6, generator=g) for _ in boxes]
    out = aggregate_windows(maps, boxes, (H, W))
    # reference: place each (same-size, no interpolation) window map and weight it by 1/count
    wts = window_weights(H, W, boxes)
    ref = torch.zeros(3, H, W)
    for n, (m, (y0, x0, y1, x1)) in enumerate(zip(maps, boxes)):
        placed = torch.zeros(3, H, W)
        placed[:, y0:y1, x0:x1] = m
        ref += placed * wts[n]
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("hin,win,hout,wout", [(2, 3, 28, 42), (32, 32, 448, 448), (1, 1, 5, 7), (4, 4, 4, 9)])
def test_fast_bilinear_equals_interpolate(hin, win, hout, wout):
    m = torch.rand(3, hin, win, generator=torch.Generator().manual_seed(0))
    out = aggregate_windows([m], [(0, 0, hout, wout)], (hout, wout))
    ref = torch.nn.functional.interpolate(m[None], size=(hout, wout), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, ref, atol=1e-5)


def test_aggregate_windows_constant_maps_stay_constant():
    # bilinear upsampling of patch grids + averaging is a convex combination: constants are kept
    boxes = sliding_windows(20, 30, 12, 5)
    out = aggregate_windows([torch.full((2, 3, 3), 0.7) for _ in boxes], boxes, (20, 30))
    assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-6)


def test_pca_matches_numpy_and_reweights_by_eigenvalues():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.diag(torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])) + 2.0
    pca = PCA(6)
    for chunk in x.split(128):  # streamed statistics equal the batch fit
        pca.update(chunk)
    pca.fit(3)
    xn = x.double().numpy()
    cov = np.cov(xn, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1][:3], evecs[:, ::-1][:, :3]
    assert np.allclose(pca.eigenvalues.numpy(), evals, rtol=1e-4)
    assert np.allclose(np.abs(pca.components.numpy().T @ evecs), np.eye(3), atol=1e-4)
    plain = pca.transform(x, "none")
    weighted = pca.transform(x, "eigenvalue")
    lam = torch.tensor(evals.copy(), dtype=torch.float32)
    assert torch.allclose(weighted, plain * lam / lam[0], atol=1e-4)
    # the variance of component k is λ_k, times its weight squared after re-weighting
    assert torch.allclose(weighted.var(0), lam * (lam / lam[0]) ** 2, rtol=1e-3)
    assert torch.allclose(pca.transform(x, "sqrt"), plain * (lam / lam[0]).sqrt(), atol=1e-4)
    # channel_dim: maps [B, D, h, w]
    maps = x[:24].T.reshape(1, 6, 4, 6)
    assert torch.allclose(pca.transform(maps, channel_dim=1), weighted[:24].T.reshape(1, 3, 4, 6), atol=1e-5)
    with pytest.raises(ValueError):
        pca.weights("bogus")


def test_pca_signs_are_deterministic():
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    a, b = PCA(4), PCA(4)
    a.update(x)
    b.update(x.flip(0))
    a.fit(4), b.fit(4)
    assert torch.allclose(a.components, b.components, atol=1e-5)


class CountingRGB(RGBExtractor):
    calls = 0

    def forward_batch(self, images):
        CountingRGB.calls += images.shape[0]
        return super().forward_batch(images)


def test_cache_hit_on_rerun(tmp_path):
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    CountingRGB.calls = 0
    e = CountingRGB(patch_size=2, cache_dir=str(tmp_path))
    y = e(x)
    assert CountingRGB.calls == 3
    y2 = CountingRGB(patch_size=2, cache_dir=str(tmp_path))(x)  # a new instance: a rerun
    assert CountingRGB.calls == 3, "a rerun must read the cache"
    assert torch.equal(y, y2)
    CountingRGB(patch_size=4, cache_dir=str(tmp_path))(x)  # other parameters -> other entries
    assert CountingRGB.calls == 6
    x2 = x.clone()
    x2[1, 0, 0, 0] += 0.5  # one changed view -> only that one recomputed
    CountingRGB(patch_size=2, cache_dir=str(tmp_path))(x2)
    assert CountingRGB.calls == 7


def test_cache_survives_corrupt_file(tmp_path):
    x = torch.rand(1, 3, 4, 4)
    e = RGBExtractor(cache_dir=str(tmp_path))
    y = e(x)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1
    files[0].write_bytes(b"garbage")
    assert torch.equal(RGBExtractor(cache_dir=str(tmp_path))(x), y)


def test_batching_does_not_change_results():
    x = torch.rand(5, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    assert torch.equal(RGBExtractor(patch_size=3, batch_size=2)(x), RGBExtractor(patch_size=3, batch_size=64)(x))


def test_input_checks():
    e = RGBExtractor()
    with pytest.raises(ValueError):
        e(torch.rand(2, 4, 5, 5))
    with pytest.raises(TypeError):
        e(torch.ones(1, 3, 4, 4, dtype=torch.int32))
    u8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(e(u8), u8.float() / 255)


def test_iter_feature_maps_lazy_views_mixed_sizes_and_order():
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g), torch.rand(3, 6, 10, generator=g)]
    loaded = []

    def loader(i):
        def load():
            loaded.append(i)
            return imgs[i]

        return load

    out = list(
        iter_feature_maps(RGBExtractor(patch_size=2), [loader(i) for i in range(3)], batch_size=2, show_progress=False)
    )
    assert [i for i, _ in out] == [0, 1, 2]
    assert loaded == [0, 1, 2]
    for i, f in out:
        assert torch.allclose(f, torch.nn.functional.avg_pool2d(imgs[i][None], 2)[0])


def test_extract_views_shards_round_robin(monkeypatch):
    class FakeDist:
        def __init__(self, r, w):
            self.r, self.w = r, w

        def rank(self):
            return self.r

        def world_size(self):
            return self.w

        def shard(self, seq):
            return list(seq)[self.r :: self.w]

    imgs = [torch.full((3, 4, 4), i / 10) for i in range(5)]
    seen = []
    for r in range(2):
        monkeypatch.setattr(views, "_dist", lambda r=r: FakeDist(r, 2))
        res = extract_views(RGBExtractor(), imgs, shard=True, show_progress=False)
        seen.append(sorted(res))
        for i, f in res.items():
            assert torch.allclose(f, imgs[i])
    assert seen == [[0, 2, 4], [1, 3]]


def test_missing_weights_error_says_where(tmp_path, monkeypatch):
    # the one weight finder every plugin uses (it replaced extractors.common.resolve_weights)
    from fulcra.errors import WeightsNotFoundError
    from fulcra.weights import find_weights

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(
        WeightsNotFoundError,
        match=rf"x: no weights found: download x.pth from https://e.org/x.pth and put it at {tmp_path / 'x.pth'}",
    ):
        find_weights("x", None, files=("x.pth",), url="https://e.org/x.pth")
    with pytest.raises(WeightsNotFoundError, match=r"x: no weights given; pass weights=PATH"):
        find_weights("x", None)
    with pytest.raises(
        WeightsNotFoundError, match=r"x: weights file .*nope.pth does not exist \(get x.pth from https://e.org\)"
    ):
        find_weights("x", tmp_path / "nope.pth", files=("x.pth",), url="https://e.org")
    (tmp_path / "x.pth").write_bytes(b"")
    assert find_weights("x", None, files=("y.pth", "x.pth")) == tmp_path / "x.pth"


def test_pca_standardize_is_pca_of_zscored_features():
    """standardize=True: each dimension z-scored (unbiased std, as torch.std) over all samples, then
    PCA; equal to numpy on explicitly z-scored data, however the samples are streamed. A constant
    dimension keeps scale 1 instead of dividing by 0."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 5, generator=g) @ torch.randn(5, 5, generator=g) * torch.tensor([100.0, 1, 0.01, 3, 7]) + 4
    x = torch.cat([x, torch.full((400, 1), 2.5)], 1)  # a constant dimension
    pca = PCA(6)
    for chunk in x.split(97):
        pca.update(chunk)
    pca.fit(3, standardize=True)
    xn = x.double().numpy()[:, :5]
    z = (xn - xn.mean(0)) / xn.std(0, ddof=1)
    evals, evecs = np.linalg.eigh(np.cov(z, rowvar=False))
    evals, evecs = evals[::-1][:3], evecs[:, ::-1][:, :3]
    assert np.allclose(pca.eigenvalues.numpy(), evals, rtol=1e-4)
    got = pca.transform(x, "none").double().numpy()
    ref = z @ evecs
    assert np.allclose(np.abs(got), np.abs(ref), atol=1e-3) and torch.isfinite(pca.transform(x)).all()
    assert float(pca.scale[-1]) == 1.0
    # a state saved without "scale" (before standardisation existed) still loads as a plain PCA
    state = {k: v for k, v in pca.state_dict().items() if k != "scale"}
    old = PCA(6)
    old.load_state_dict(state)
    assert old.scale is None and old.transform(x).shape == (400, 3)
