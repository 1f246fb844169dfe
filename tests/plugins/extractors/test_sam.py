"""sam / sam2: prompt sampling, averaged masks, mask choice, on tiny random models."""

import pytest
import torch

from fulcra_plugins.extractors.sam import positive_points, sample_prompts


def test_prompts_drawn_only_from_positive_set_and_distinct():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[3:6, 4:9] = True
    mask[15, 25] = True
    pts = positive_points(mask)
    assert pts.shape == (16, 2)
    assert mask[pts[:, 1], pts[:, 0]].all(), "(x, y) order"
    s = sample_prompts(pts, 3, 10, torch.Generator().manual_seed(0))
    assert s.shape == (10, 3, 2)
    assert mask[s[..., 1], s[..., 0]].all(), "every prompt is a positive pixel"
    for rep in s:
        assert len({tuple(p.tolist()) for p in rep}) == 3, "distinct points within a draw"
    assert len({tuple(r.flatten().tolist()) for r in s}) > 1, "draws differ across repeats"
    again = sample_prompts(pts, 3, 10, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


def test_prompts_with_fewer_positives_than_points():
    pts = torch.tensor([[1, 2], [3, 4]])
    s = sample_prompts(pts, 3, 4, torch.Generator().manual_seed(0))
    assert s.shape == (4, 3, 2)
    assert {tuple(p.tolist()) for p in s.reshape(-1, 2)} <= {(1, 2), (3, 4)}
    with pytest.raises(ValueError):
        sample_prompts(torch.zeros(0, 2, dtype=torch.long), 3, 1, torch.Generator())


def _inputs():
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    pos = torch.zeros(2, 24, 32, dtype=torch.bool)
    pos[0, 5:10, 5:15] = True
    pos[1, 12:20, 20:30] = True
    return x, pos


def _check_prompted(cls, **kw):
    x, pos = _inputs()
    e = cls(tiny=True, n_repeats=4, **kw)
    y = e(x, positive=pos)
    assert y.shape == (2, 1, 24, 32) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    # binarised masks averaged over 4 repeats: multiples of 1/4
    assert torch.allclose(y * 4, (y * 4).round(), atol=1e-5)
    # prompts as point lists = positive masks; batch independent; deterministic
    y1 = e(x[1:], prompts=[positive_points(pos[1])])
    assert torch.allclose(y[1:], y1, atol=1e-5)
    assert torch.allclose(y, cls(tiny=True, n_repeats=4, **kw)(x, positive=pos), atol=1e-5)
    for choice, ch in (("all", 3), ("best", 1), ("2", 1)):
        out = cls(tiny=True, n_repeats=2, mask=choice, binarize=False, **kw)(x, positive=pos)
        assert out.shape == (2, ch, 24, 32)
    allm = cls(tiny=True, n_repeats=2, mask="all", binarize=False, **kw)(x, positive=pos)
    one = cls(tiny=True, n_repeats=2, mask="1", binarize=False, **kw)(x, positive=pos)
    assert torch.allclose(allm[:, 1:2], one, atol=1e-5), "mask='1' is channel 1 of the multimask outputs"
    with pytest.raises(ValueError, match="positive"):
        e(x)
    with pytest.raises(ValueError, match="outside"):
        e(x[:1], prompts=[torch.tensor([[40, 3]])])
    from fulcra.errors import ConfigError

    with pytest.raises(ConfigError):
        cls(tiny=True, mask="largest", **kw)
    return e


def test_sam_tiny():
    pytest.importorskip("segment_anything")
    from fulcra_plugins.extractors.sam import SAMExtractor

    _check_prompted(SAMExtractor)


def test_sam_weights_missing_and_wrong(tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    from fulcra.errors import FormatError, WeightsNotFoundError
    from fulcra_plugins.extractors.sam import SAMExtractor

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "sam_vit_b_01ec64.pth")):
        SAMExtractor(variant="vit_b")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(FormatError):
        SAMExtractor(variant="vit_b", tiny=True, weights=str(bad))
    # a tiny checkpoint round-trips through the safe loader
    good = tmp_path / "tiny.pth"
    e = SAMExtractor(tiny=True)
    torch.save(e.model.state_dict(), good)
    e2 = SAMExtractor(tiny=True, weights=str(good))
    x, pos = _inputs()
    assert torch.allclose(e(x, positive=pos), e2(x, positive=pos))


def test_sam_cache_hit(tmp_path):
    pytest.importorskip("segment_anything")
    from fulcra_plugins.extractors.sam import SAMExtractor

    x, pos = _inputs()
    y = SAMExtractor(tiny=True, n_repeats=2, cache_dir=str(tmp_path))(x, positive=pos)
    e2 = SAMExtractor(tiny=True, n_repeats=2, cache_dir=str(tmp_path))
    e2._embed = None  # any recomputation would fail
    assert torch.equal(e2(x, positive=pos), y)
    pos2 = pos.clone()
    pos2[0, 0, 0] = True  # other prompts -> other cache entry
    e3 = SAMExtractor(tiny=True, n_repeats=2, cache_dir=str(tmp_path))
    assert e3(x, positive=pos2).shape == y.shape


def test_sam2_tiny():
    try:
        import sam2  # noqa: F401
    except ImportError:
        pytest.skip("the sam2 package is not installed (pip install 'fulcra[sam2]')")
    from fulcra_plugins.extractors.sam2 import SAM2Extractor

    _check_prompted(SAM2Extractor)


def test_sam2_weights_missing(tmp_path, monkeypatch):
    try:
        import sam2  # noqa: F401
    except ImportError:
        pytest.skip("the sam2 package is not installed (pip install 'fulcra[sam2]')")
    from fulcra.errors import WeightsNotFoundError
    from fulcra_plugins.extractors.sam2 import SAM2Extractor

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="sam2.1_hiera_large.pt"):
        SAM2Extractor()


@pytest.mark.gpu
@pytest.mark.parametrize("module", ["sam", "sam2"])
def test_cuda_matches_cpu(module):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    pytest.importorskip("segment_anything" if module == "sam" else "sam2")
    if module == "sam":
        from fulcra_plugins.extractors.sam import SAMExtractor as cls
    else:
        from fulcra_plugins.extractors.sam2 import SAM2Extractor as cls
    x, pos = _inputs()
    a = cls(tiny=True, n_repeats=3, mask="all", binarize=False)(x, positive=pos)
    b = cls(tiny=True, n_repeats=3, mask="all", binarize=False, device="cuda")(x.cuda(), positive=pos.cuda())
    assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-3)
