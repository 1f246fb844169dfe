"""Backbones: tiny random models of every family through the same code path as the real ones,
resolved through the registry (``fulcra.backbones``), plus the generic timm / open_clip backbones."""

import json
import subprocess
import sys

import pytest
import torch

import fulcra
from fulcra.errors import ConfigError, FormatError, UnknownPluginError, WeightsNotFoundError
from fulcra.testing import check_backbone, check_plugin
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
    torch.testing.assert_close(out["patch"].flatten(2).transpose(1, 2), ref[:, bb.num_prefix_tokens :])


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
    with pytest.raises(
        WeightsNotFoundError, match=r"backbone 'dinov2_vits14'.*missing.pth does not exist.*dinov2_vits14_pretrain.pth"
    ):
        load_backbone("dinov2_vits14", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(FormatError, match="does not match"):
        load_backbone("dinov2_vits14_reg", weights=str(f), tiny=True)
    with pytest.raises(
        UnknownPluginError, match=r"unknown backbones plugin 'dinov2_vits15'.*did you mean 'dinov2_vits14'"
    ):
        load_backbone("dinov2_vits15", tiny=True)


def test_missing_weights_message_names_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(
        WeightsNotFoundError,
        match=rf"dinov2_vitl14_reg4_pretrain.pth from https://dl.fbaipublicfiles.com/\S+ and put it at {tmp_path}",
    ):
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
    official.update(
        register_tokens=sd["reg_token"],
        mask_token=torch.zeros(1, sd["cls_token"].shape[-1]),
        cls_token=sd["cls_token"] - pos0,
        pos_embed=torch.cat([pos0, sd["pos_embed"]], 1),
    )
    torch.save(official, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    bb = load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), tiny=True)
    x = torch.rand(1, 3, 56, 42)
    with torch.no_grad():
        # (cls - pos0) + pos0 is exact only up to float rounding
        torch.testing.assert_close(
            bb.forward_tokens(x, 2)["cls"][0], ref.forward_tokens(x, 2)["cls"][0], rtol=1e-4, atol=1e-4
        )
    grid = sd["pos_embed"].shape[-1]
    official["pos_embed"] = torch.randn(1, 1 + 37 * 37, grid)
    torch.save(official, tmp_path / "big.pth")
    assert load_backbone("dinov2_vits14_reg", weights=str(tmp_path / "big.pth"), tiny=True).embed_dim == grid


def test_every_variant_is_a_registered_plugin():
    names = {s.name for s in fulcra.plugin_specs("backbones")}
    assert set(BACKBONES) | {"timm", "open_clip"} <= names
    for name, spec in BACKBONES.items():
        cls = fulcra.load_plugin("backbones", name)
        assert cls.spec is spec and cls.variant == name
    rows = {r["name"]: r for r in fulcra.status("backbones")}
    assert rows["dinov2_vitg14_reg"]["available"] and rows["dinov2_vitg14_reg"]["extra"] == "timm"
    assert rows["clip_vitb16"]["extra"] == "clip" and rows["open_clip"]["available"]


def test_cli_lists_backbones_with_install_state():
    res = subprocess.run(
        [sys.executable, "-m", "fulcra", "plugins", "--json", "--kind", "backbones"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["timm"]["available"] is True and rows["dinov2_vits14"]["distribution"] == "fulcra"


@pytest.mark.parametrize(
    "name,params",
    [
        ("dinov2_vits14_reg", {"tiny": True}),
        ("clip_vitb16", {"tiny": True}),
        ("timm", {"arch": "vit_small_patch16_224", "tiny": True}),
        ("open_clip", {"arch": "ViT-B-32", "tiny": True}),
    ],
)
def test_conformance_and_weights_round_trip(name, params):
    check_plugin("backbones", name, **params)


def test_generic_timm_matches_timm_and_handles_no_cls_token():
    bb = load_backbone({"name": "timm", "arch": "vit_small_patch16_224"}, tiny=True)
    assert (bb.embed_dim, bb.patch_size, bb.depth, bb.name) == (48, 16, 2, "timm:vit_small_patch16_224")
    x = bb.normalize(torch.rand(1, 3, 32, 48))
    with torch.no_grad():
        ref = bb.model.forward_features(x)
        out = bb.forward_tokens(x)
    torch.testing.assert_close(out["cls"][-1], ref[:, 0])
    torch.testing.assert_close(out["patch"].flatten(2).transpose(1, 2), ref[:, 1:])
    # SigLIP has no CLS token: the global embedding is the mean patch token
    sig = load_backbone({"name": "timm", "arch": "vit_base_patch16_siglip_224"}, tiny=True)
    assert sig.num_prefix_tokens == 0 and sig.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        t = sig.forward_tokens(sig.normalize(torch.rand(2, 3, 32, 32)), n_last=2)
    torch.testing.assert_close(t["cls"][-1], t["patch"].mean(dim=(2, 3)))


def test_generic_backbones_errors_name_the_arch_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(
        WeightsNotFoundError,
        match=rf"'timm' \(arch=vit_small_patch16_224\).*vit_small_patch16_224.safetensors.*{tmp_path}",
    ):
        load_backbone({"name": "timm", "arch": "vit_small_patch16_224"})
    with pytest.raises(ConfigError, match="did you mean vit_small_patch16_224"):
        load_backbone({"name": "timm", "arch": "vit_smal_patch16_224"}, tiny=True)
    with pytest.raises(ConfigError, match="no patch tokens|not a ViT-like"):
        load_backbone({"name": "timm", "arch": "resnet18"}, tiny=True)
    with pytest.raises(ConfigError, match="open_clip has no model config 'ViT-B-33'"):
        load_backbone({"name": "open_clip", "arch": "ViT-B-33"}, tiny=True)
    with pytest.raises(ConfigError, match=r"backbones plugin 'timm': unknown key 'arhc'.*did you mean 'arch'"):
        load_backbone({"name": "timm", "arhc": "vit_small_patch16_224"}, tiny=True)
    with pytest.raises(ConfigError, match="'weights' goes beside 'backbone'"):
        load_backbone({"name": "timm", "arch": "vit_small_patch16_224", "weights": "x"})
    # a cached file under the arch's name is found without weights=
    src = load_backbone({"name": "timm", "arch": "vit_small_patch16_224"}, tiny=True)
    torch.save(src.model.state_dict(), tmp_path / "vit_small_patch16_224.pth")
    from fulcra_plugins.backbones import resolve_weights

    assert resolve_weights({"name": "timm", "arch": "vit_small_patch16_224"}) == tmp_path / "vit_small_patch16_224.pth"


def test_generic_open_clip_encodes_like_open_clip():
    bb = load_backbone({"name": "open_clip", "arch": "ViT-B-32"}, tiny=True)
    assert bb.patch_size == 32 and bb.clip_embed_dim == 32
    x = bb.normalize(torch.rand(2, 3, 128, 128))  # the tiny model's native size
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(x), bb.model.encode_image(x))
        assert bb.encode_text(["a cat"]).shape == (1, 32)


class _BrokenGrid(torch.nn.Module):
    """Patch grid off by one: the conformance check must say so."""

    embed_dim, patch_size, depth = 8, 4, 1

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 4, 4)

    def normalize(self, images):
        return images.float() / 255.0 if images.dtype == torch.uint8 else images

    def forward_tokens(self, images, n_last=1):
        if n_last > self.depth:
            raise ConfigError("n_last")
        patch = self.proj(images)[..., :-1]
        return {"cls": [patch.mean(dim=(2, 3))], "patch": patch}


def test_conformance_catches_a_wrong_patch_grid():
    with pytest.raises(AssertionError, match=r"patch tokens \[2, 8, 3, 1\].*expected \[2, 8, 3, 2\]"):
        check_backbone(_BrokenGrid())


def test_missing_timm_shows_in_the_listing_with_its_extra(monkeypatch):
    from fulcra import registry
    from fulcra.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    for mod in ("fulcra_plugins.backbones.vit_timm", "fulcra_plugins.backbones.named_timm"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    registry.clear_cache()
    try:
        rows = {r["name"]: r for r in fulcra.status("backbones")}
        assert (
            not rows["dinov2_vitg14_reg"]["available"]
            and "pip install 'fulcra[timm]'" in rows["dinov2_vitg14_reg"]["reason"]
        )
        assert not rows["timm"]["available"] and rows["clip_vitb16"]["available"]
        with pytest.raises(MissingDependencyError, match=r"fulcra\[timm\]"):
            fulcra.create("teachers", "probed", backbone="dinov2_vits14", tiny=True, image_size=28)
    finally:
        registry.clear_cache()


def test_presets_name_timm_architectures_without_code(tmp_path, monkeypatch):
    # registry.yaml presets.backbones: DINOv3 and SigLIP through the generic timm backbone
    bb = check_plugin("backbones", "dinov3_vits16", tiny=True)
    assert bb.name == "timm:vit_small_patch16_dinov3.lvd1689m" and bb.patch_size == 16 and bb.num_prefix_tokens == 5
    t = fulcra.create("teachers", "probed", backbone="siglip_vitb16", tiny=True, n_cls=2, image_size=32)
    assert t.backbone.num_prefix_tokens == 0 and t.backbone_name == "siglip_vitb16"
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"vit_large_patch16_dinov3.lvd1689m.safetensors"):
        load_backbone("dinov3_vitl16")


def test_laion2b_clip_is_the_official_ludvig_one(monkeypatch, tmp_path):
    """clip_vitb16_laion2b: open_clip ViT-B-16 with GELU (LAION's weights; OpenAI's need QuickGELU),
    weights only from a path or a cache (the message names the LAION repo), open_clip's .bin layout loads."""
    from open_clip.model import QuickGELU

    def acts(bb):
        return {type(m).__name__ for m in bb.model.visual.modules() if type(m).__name__ in ("GELU", "QuickGELU")}

    laion = load_backbone("clip_vitb16_laion2b", tiny=True)
    assert acts(laion) == {"GELU"} and laion.clip_embed_dim == 32 and laion.patch_size == 16
    assert acts(load_backbone("clip_vitb16", tiny=True)) == {QuickGELU.__name__}
    f = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(laion.model.state_dict(), f)
    again = load_backbone("clip_vitb16_laion2b", tiny=True, weights=str(f))
    x = laion.normalize(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), laion.encode_image(x))
    monkeypatch.setenv("FULCRA_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"laion/CLIP-ViT-B-16-laion2B-s34B-b88K.*never downloads"):
        load_backbone("clip_vitb16_laion2b")
