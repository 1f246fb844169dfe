"""``fulcra convert imagemixer``: a tiny checkpoint written here in the original latent-diffusion key
layout (from random diffusers modules through an independent diffusers -> LDM key map) converts back
to exactly the same weights, the folder loads in the ``imagemixer`` generator, and wrong files are
refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from fulcra.cli import main

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

# a 2-level UNet / autoencoder: GroupNorm(32) as in LDM, so channels are multiples of 32
TINY_CONFIG = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "image_size": 8,
            "channels": 4,
            "scale_factor": 0.18215,
            "unet_config": {
                "params": {
                    "image_size": 8,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 32,
                    "attention_resolutions": [1],
                    "num_res_blocks": 1,
                    "channel_mult": [1, 2],
                    "num_heads": 2,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 16,
                }
            },
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 16,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 32,
                        "ch_mult": [1, 2],
                        "num_res_blocks": 1,
                        "attn_resolutions": [],
                    },
                }
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPImageMutliEmbedder"},
        },
    }
}


def _tiny_diffusers():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=16,
    )
    with torch.no_grad():  # non-trivial norms and biases, so a swapped key cannot go unnoticed
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return unet, vae


# ---- diffusers -> original LDM keys (the inverse of the conversion under test, written independently)
def _unet_to_ldm(sd: dict, levels: int = 2, per_block: int = 1) -> dict:
    L = per_block
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
    ]
    for j in range(2):
        pairs.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    for i in range(levels):
        for j in range(L):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(L + 1) * (i + 1)}.0.op."))
        for j in range(L + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(L + 1) * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(L + 1) * i + j}.1."))
        if i < levels - 1:
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}."))
    resnet = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("time_emb_proj.", "emb_layers.1."),
        ("conv_shortcut.", "skip_connection."),
    ]
    out = {}
    for k, v in sd.items():
        new = k
        for d, o in sorted(pairs, key=lambda p: -len(p[0])):
            if k.startswith(d):
                new = o + k[len(d) :]
                if "resnets" in d:
                    for rd, ro in resnet:
                        new = new.replace("." + rd, "." + ro)
                break
        else:
            raise AssertionError(f"unmapped UNet key {k}")
        out["model.diffusion_model." + new] = v
    return out


def _vae_to_ldm(sd: dict, levels: int = 2, per_block: int = 1) -> dict:
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        for i in range(2):
            pairs.append((f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}."))
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(levels):
        for j in range(per_block):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
        for j in range(per_block + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for k, v in sd.items():
        new = k
        for d, o in sorted(pairs, key=lambda p: -len(p[0])):
            if k.startswith(d):
                new = o + k[len(d) :]
                break
        if "mid.attn_1." in new:
            for ad, ao in attn:
                new = new.replace("attn_1." + ad, "attn_1." + ao)
            if new.endswith(".weight") and v.ndim == 2:
                v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + new] = v
    return out


def _tiny_clip(root):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    cfg = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    unet, vae = _tiny_diffusers()
    sd = {**_unet_to_ldm(unet.state_dict()), **_vae_to_ldm(vae.state_dict())}
    sd["cond_stage_model.model.visual.proj"] = torch.randn(16, 16)  # present in the release, ignored
    torch.save({"state_dict": sd, "global_step": 7}, root / "tiny.ckpt")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    _tiny_clip(root / "clip")
    return root, unet, vae


def test_convert_recovers_the_weights_and_loads_in_the_generator(original, tmp_path, capsys):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from fulcra_plugins.generators.imagemixer import ImageMixer

    root, unet, vae = original
    out = tmp_path / "mixer"
    rc = main(
        ["convert", "imagemixer", str(root / "tiny.ckpt"), "--clip", str(root / "clip"), "--out", str(out)]
        + ["--config", str(root / "tiny.yaml")]
    )
    assert rc == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    u2 = UNet2DConditionModel.from_pretrained(out / "unet")
    v2 = AutoencoderKL.from_pretrained(out / "vae")
    for a, b in ((unet, u2), (vae, v2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert u2.config.cross_attention_dim == 16 and v2.config.scaling_factor == pytest.approx(0.18215)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 2, 16)
    with torch.no_grad():  # weights are equal bit for bit; a reloaded module differs by ~1e-6 in float32
        a, b = unet(x, t, encoder_hidden_states=ctx).sample, u2(x, t, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    sched = DDIMScheduler.from_pretrained(out / "scheduler")
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"
    assert not sched.config.clip_sample and sched.config.steps_offset == 1
    pre = json.loads((out / "feature_extractor" / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 16, "width": 16}
    mixer = ImageMixer(model=str(out), mix_k=2, steps=2, device="cpu")
    img = mixer.generate(torch.rand(4, 3, 20, 24), torch.Generator().manual_seed(0))
    assert img.shape == (2, 3, 20, 24) and torch.isfinite(img).all()


def test_convert_refuses_wrong_files_with_one_line(original, tmp_path, capsys):
    root, _, _ = original
    clip = ["--clip", str(root / "clip")]
    cfg = ["--config", str(root / "tiny.yaml")]

    def err(args):
        assert main(["convert", "imagemixer", *args]) == 2
        e = capsys.readouterr().err.strip()
        assert e.startswith("fulcra: error:") and "\n" not in e, e
        return e

    assert "checkpoint not found" in err([str(tmp_path / "nope.ckpt"), *clip, "--out", str(tmp_path / "o1"), *cfg])
    # a state dict of another model (no model.diffusion_model.* / first_stage_model.*)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    assert "not an original-layout" in err([str(tmp_path / "other.pt"), *clip, "--out", str(tmp_path / "o2"), *cfg])
    # an arbitrary pickled object is never unpickled
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": _Pickled()}, tmp_path / "evil.ckpt")
    assert "weights_only" in err([str(tmp_path / "evil.ckpt"), *clip, "--out", str(tmp_path / "o3"), *cfg])
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    assert "weights_only" in err([str(tmp_path / "junk.ckpt"), *clip, "--out", str(tmp_path / "o4"), *cfg])
    # the released SD v1 shapes (the default config) do not fit the tiny weights
    e = err([str(root / "tiny.ckpt"), "--clip", str(root / "clip"), "--out", str(tmp_path / "o5")])
    assert "projection_dim 16" in e  # the tiny CLIP cannot condition a 768-wide UNet: caught first
    # a text-conditioned config is not ImageMixer's
    bad = json.loads(json.dumps(TINY_CONFIG))
    bad["model"]["params"]["cond_stage_config"]["target"] = "ldm.modules.encoders.modules.BERTEmbedder"
    (tmp_path / "bert.yaml").write_text(yaml.safe_dump(bad))
    args = [str(root / "tiny.ckpt"), *clip, "--out", str(tmp_path / "o6"), "--config", str(tmp_path / "bert.yaml")]
    assert "not a CLIP image embedder" in err(args)
    # a config whose widths differ from the checkpoint's
    wide = json.loads(json.dumps(TINY_CONFIG))
    wide["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(wide))
    args = [str(root / "tiny.ckpt"), *clip, "--out", str(tmp_path / "o7"), "--config", str(tmp_path / "wide.yaml")]
    assert "do not match the config" in err(args) or "has shape" in err(args)
    assert not (tmp_path / "o7" / "unet").exists()
    assert "not a Hugging Face CLIP folder" in err([str(root / "tiny.ckpt"), "--clip", str(tmp_path), "--out", "x"])


class _Pickled:
    pass
