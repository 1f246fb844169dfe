"""Backbones: tiny random models of every family through the same code path as the real ones."""

import pytest
import torch

from fulcra.errors import ConfigError, FormatError, WeightsNotFoundError
from fulcra_plugins.backbones import BACKBONES, load_backbone

FAMILIES = ["dinov2_vits14", "dinov2_vitb14_reg", "eva02_vits14", "clip_vitb16"]


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_tokens_shapes(name):
    bb = load_backbone(name, tiny=True)
    p = bb.patch_size
    x = bb.normalize(torch.rand(2, 3, 4 * p, 3 * p))
    out = bb.forward_tokens(x, n_last=3)
    assert len(out["cls"]) == 3 and all(c.shape == (2, bb.embed_dim) for c in out["cls"])
    assert out["patch"].shape == (2, bb.embed_dim, 4, 3)
    assert len(bb.mean) == len(bb.std) == 3
    with pytest.raises(ConfigError):
        bb.forward_tokens(x, n_last=bb.depth + 1)


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "eva02_vits14"])
def test_timm_last_cls_matches_forward_features(name):
    # slow reference: timm's own forward_features (final norm on all tokens)
    bb = load_backbone(name, tiny=True)
    x = bb.normalize(torch.rand(1, 3, 56, 56))
    with torch.no_grad():
        ref = bb.model.forward_features(x)
        out = bb.forward_tokens(x, n_last=1)
    assert bb.num_prefix_tokens == (5 if "reg" in name else 1)
    torch.testing.assert_close(out["cls"][-1], ref[:, 0])
    torch.testing.assert_close(out["patch"].flatten(2).transpose(1, 2), ref[:, bb.num_prefix_tokens:])


def test_clip_encode_image_matches_open_clip():
    bb = load_backbone("clip_vitb16", tiny=True)
    x = bb.normalize(torch.rand(2, 3, 64, 64))  # the tiny model's native size
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(x), bb.model.encode_image(x))
        t = bb.encode_text(["a photo of a cat", "a dog"])
        dense = bb.patch_embeddings(x, mode="maskclip")
        proj = bb.patch_embeddings(x, mode="proj")
    assert t.shape == (2, bb.clip_embed_dim)
    assert dense.shape == proj.shape == (2, bb.clip_embed_dim, 4, 4)
    # other resolutions interpolate the positional embedding
    assert bb.patch_embeddings(bb.normalize(torch.rand(1, 3, 96, 64))).shape == (1, bb.clip_embed_dim, 6, 4)


def test_weights_round_trip_and_errors(tmp_path):
    bb = load_backbone("dinov2_vits14", tiny=True)
    from safetensors.torch import save_file

    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(f))
    bb2 = load_backbone("dinov2_vits14", weights=str(f), tiny=True)
    x = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(bb.forward_tokens(x)["patch"], bb2.forward_tokens(x)["patch"])
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_backbone("dinov2_vits14", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(FormatError, match="does not match"):
        load_backbone("dinov2_vits14_reg", weights=str(f), tiny=True)
    with pytest.raises(ConfigError, match="did you mean"):
        load_backbone("dinov2_vits15", tiny=True)


def test_missing_weights_message_names_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match="dinov2_vitl14_reg4_pretrain.pth"):
        load_backbone("dinov2_vitl14_reg")


def test_weights_found_in_fulcra_cache(monkeypatch, tmp_path):
    from fulcra_plugins.backbones import resolve_weights

    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "dinov2_vitb14_pretrain.pth").write_bytes(b"x")
    assert resolve_weights("dinov2_vitb14") == tmp_path / "dinov2_vitb14_pretrain.pth"


def test_catalogue_dimensions():
    assert BACKBONES["dinov2_vitg14_reg"].embed_dim == 1536 and BACKBONES["dinov2_vitg14_reg"].num_prefix_tokens == 5
    assert BACKBONES["clip_vitl14"].patch_size == 14 and BACKBONES["clip_vitl14"].clip_embed_dim == 768


def test_official_dinov2_checkpoint_layout_loads(tmp_path):
    # facebookresearch/dinov2 names: register_tokens, mask_token, a pos_embed that includes the CLS
    # slot; timm's filter converts them (and resamples a different grid, e.g. 37x37 for 518 px)
    ref = load_backbone("dinov2_vits14_reg", tiny=True)
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    pos0 = torch.randn(1, 1, sd["pos_embed"].shape[-1])
    official = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(register_tokens=sd["reg_token"], mask_token=torch.zeros(1, sd["cls_token"].shape[-1]),
                    cls_token=sd["cls_token"] - pos0, pos_embed=torch.cat([pos0, sd["pos_embed"]], 1))
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    bb = load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), tiny=True)
    x = torch.rand(1, 3, 56, 42)
    with torch.no_grad():
        # (cls - pos0) + pos0 is exact only up to float rounding
        torch.testing.assert_close(bb.forward_tokens(x, 2)["cls"][0], ref.forward_tokens(x, 2)["cls"][0], rtol=1e-4, atol=1e-4)
    grid = sd["pos_embed"].shape[-1]
    official["pos_embed"] = torch.randn(1, 1 + 37 * 37, grid)
    torch.save(official, tmp_path / "big.pth")
    assert load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "big.pth"), tiny=True).embed_dim == grid
