import pytest
import torch

from fulcra_plugins.extractors.rgb import RGBExtractor


@pytest.mark.parametrize("p", [1, 2, 3, 5])
def test_rgb_pooling_matches_loop_reference(p):
    x = torch.rand(2, 3, 11, 7, generator=torch.Generator().manual_seed(p))
    y = RGBExtractor(patch_size=p)(x)
    H, W = x.shape[-2:]
    hh, ww = -(-H // p), -(-W // p)
    assert y.shape == (2, 3, hh, ww) and y.dtype == torch.float32
    for i in range(hh):
        for j in range(ww):
            ref = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].mean((-1, -2))
            assert torch.allclose(y[:, :, i, j], ref, atol=1e-6)


def test_rgb_identity_and_params():
    x = torch.rand(1, 3, 5, 5)
    y = RGBExtractor()(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    with pytest.raises(ValueError):
        RGBExtractor(patch_size=0)


@pytest.mark.gpu
def test_rgb_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    x = torch.rand(2, 3, 8, 8)
    y = RGBExtractor(patch_size=2, device="cuda")(x.cuda())
    assert y.is_cuda and torch.allclose(y.cpu(), RGBExtractor(patch_size=2)(x), atol=1e-6)
