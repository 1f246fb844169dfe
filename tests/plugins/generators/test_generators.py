"""Generators: Mixup/CutMix against their definitions, ImageMixer on tiny random diffusers parts,
and the resumable, sharded synthetic-set builder."""

import json

import numpy as np
import pytest
import torch

from fulcra.errors import ConfigError, WeightsNotFoundError
from fulcra_plugins.generators import CutMix, Mixup, build_synthetic_set, load_synthetic_set
from fulcra_plugins.generators.synthetic import draw_sources


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_mixup_is_convex_combination():
    x = torch.rand(6, 3, 8, 8)
    m = Mixup(mix_k=3)
    w = m.weights(2, _gen(0))
    y = m.generate(x, _gen(0))
    assert y.shape == (2, 3, 8, 8)
    ref = torch.einsum("nk,nkchw->nchw", w, x.view(2, 3, 3, 8, 8))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    torch.testing.assert_close(m.generate(x, _gen(0)), y)  # deterministic for a seed
    with pytest.raises(ConfigError):
        m.generate(torch.rand(4, 3, 8, 8))


def test_cutmix_pastes_boxes():
    a, b = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    c = CutMix(mix_k=2)
    y = c.generate(torch.cat([a, b]), _gen(3))
    y0, y1, x0, x1 = c.boxes(1, 16, 16, _gen(3))[0, 0].tolist()
    assert y.shape == (1, 3, 16, 16)
    assert float(y.sum()) == 3 * (y1 - y0) * (x1 - x0)
    assert y[0, :, y0:y1, x0:x1].eq(1).all() and float(y.sum()) < y.numel()


def test_draw_sources_distinct():
    s = draw_sources(5, 200, 3, seed=1)
    assert s.shape == (200, 3) and int(s.max()) < 5
    assert all(len(set(r)) == 3 for r in s.tolist())
    torch.testing.assert_close(s, draw_sources(5, 200, 3, seed=1))


class _Counting(Mixup):
    calls = 0

    def generate(self, images, generator=None):
        type(self).calls += 1
        return super().generate(images, generator)


def test_synthetic_set_resume_and_index(tmp_path):
    imgs = (torch.rand(10, 3, 8, 8) * 255).to(torch.uint8)
    gen = _Counting()
    from fulcra_plugins.generators import synthetic as synth

    with pytest.MonkeyPatch.context() as mp:  # the state of a run killed before the consolidation
        mp.setattr(synth, "_consolidate", lambda *a: None)
        full = build_synthetic_set(gen, imgs, 7, tmp_path / "a", seed=0, batch_size=3)
    assert full.shape == (7, 3, 8, 8) and full.dtype == torch.uint8
    assert sorted(p.name for p in (tmp_path / "a").glob("chunk_*.pt")) == [f"chunk_0000{c}.pt" for c in range(3)]
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert len(index["sources"]) == 7 and all(len(r) == 2 for r in index["sources"])
    # killed after one chunk: remove the others, rerun -> only missing chunks are generated
    (tmp_path / "a" / "chunk_00001.pt").unlink()
    (tmp_path / "a" / "chunk_00002.pt").unlink()
    _Counting.calls = 0
    again = build_synthetic_set(gen, imgs, 7, tmp_path / "a", seed=0, batch_size=3)
    assert _Counting.calls == 2
    assert torch.equal(again, full) and torch.equal(load_synthetic_set(tmp_path / "a"), full)
    # consolidated: one memory-mapped images.npy, the chunks gone; a rerun generates nothing
    assert (tmp_path / "a" / "images.npy").is_file() and not list((tmp_path / "a").glob("chunk_*.pt"))
    assert np.load(tmp_path / "a" / "images.npy").shape == (7, 3, 8, 8)
    _Counting.calls = 0
    again = build_synthetic_set(gen, imgs, 7, tmp_path / "a", seed=0, batch_size=3)
    assert _Counting.calls == 0 and torch.equal(again, full)
    again[0] = 0  # copy on write: the file keeps the set
    assert torch.equal(load_synthetic_set(tmp_path / "a"), full)
    # two "ranks" each producing their shard give the same set as one process
    from fulcra.engine import dist
    from fulcra.errors import FormatError

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dist, "shard_indices", lambda n, rank_=None, world=None: list(range(0, n, 2)))
        with pytest.raises(FormatError, match="unfinished"):  # rank 1's chunk is not there yet
            build_synthetic_set(gen, imgs, 7, tmp_path / "b", seed=0, batch_size=3)
        mp.setattr(dist, "shard_indices", lambda n, rank_=None, world=None: list(range(1, n, 2)))
        assert torch.equal(build_synthetic_set(gen, imgs, 7, tmp_path / "b", seed=0, batch_size=3), full)


def _tiny_imagemixer(root):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    DDIMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", clip_sample=False).save_pretrained(
        root / "scheduler"
    )
    cfg = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(root / "image_encoder")


@pytest.fixture(scope="module")
def tiny_mixer_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("imagemixer")
    _tiny_imagemixer(root)
    return root


def test_imagemixer_shapes_determinism_and_conditioning(tiny_mixer_dir):
    from fulcra_plugins.generators.imagemixer import ImageMixer

    mixer = ImageMixer(model=str(tiny_mixer_dir), mix_k=2, steps=3, device="cpu")
    x = torch.rand(4, 3, 12, 12)
    y = mixer.generate(x, _gen(0))
    assert y.shape == (2, 3, 12, 12) and float(y.min()) >= 0 and float(y.max()) <= 1
    torch.testing.assert_close(mixer.generate(x, _gen(0)), y)
    assert not torch.allclose(mixer.generate(x, _gen(1)), y)
    # the conditioning is the pair's embeddings, a two-token sequence for cross-attention: other
    # content changes that pair's image under the same noise (the order does not: attention over
    # the tokens is permutation-invariant)
    assert mixer.embed(x).shape == (4, 16)
    other = x.clone()
    other[0] = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(mixer.generate(other, _gen(0))[0], y[0])
    torch.testing.assert_close(mixer.generate(x[[1, 0, 2, 3]], _gen(0)), y, atol=1e-5, rtol=1e-4)
    big = ImageMixer(model=str(tiny_mixer_dir), steps=2, keep_size=False, device="cpu").generate(x, _gen(0))
    assert big.shape == (2, 3, 16, 16)  # UNet sample 8 × VAE factor 2


def test_imagemixer_resumable_set(tiny_mixer_dir, tmp_path, monkeypatch):
    from fulcra_plugins.generators import synthetic as synth
    from fulcra_plugins.generators.imagemixer import ImageMixer

    mixer = ImageMixer(model=str(tiny_mixer_dir), steps=2, device="cpu")
    imgs = (torch.rand(6, 3, 12, 12) * 255).to(torch.uint8)
    with monkeypatch.context() as mp:  # killed before the consolidation, one chunk lost
        mp.setattr(synth, "_consolidate", lambda *a: None)
        a = build_synthetic_set(mixer, imgs, 4, tmp_path / "s", seed=5, batch_size=2)
    (tmp_path / "s" / "chunk_00001.pt").unlink()
    b = build_synthetic_set(mixer, imgs, 4, tmp_path / "s", seed=5, batch_size=2)
    assert a.shape == (4, 3, 12, 12) and torch.equal(a, b)


def test_imagemixer_missing_model_says_where(tmp_path):
    from fulcra_plugins.generators.imagemixer import ImageMixer

    with pytest.raises(WeightsNotFoundError, match="model=DIR"):
        ImageMixer().generate(torch.rand(2, 3, 8, 8))
    with pytest.raises(WeightsNotFoundError, match="unet/"):
        ImageMixer(model=str(tmp_path)).generate(torch.rand(2, 3, 8, 8))


def test_synthetic_set_is_regenerated_when_the_generator_config_changes(tmp_path):
    imgs = (torch.rand(6, 3, 8, 8) * 255).to(torch.uint8)
    a = build_synthetic_set(Mixup(mix_k=2, alpha=1.0), imgs, 4, tmp_path / "s", seed=0, batch_size=2)
    again = build_synthetic_set(Mixup(mix_k=2, alpha=1.0), imgs, 4, tmp_path / "s", seed=0, batch_size=2)
    assert torch.equal(a, again)
    # another Mixup alpha: same class, same request; the old images must not be reused
    b = build_synthetic_set(Mixup(mix_k=2, alpha=0.2), imgs, 4, tmp_path / "s", seed=0, batch_size=2)
    assert not torch.equal(a, b)
    assert json.loads((tmp_path / "s" / "index.json").read_text())["config"]["alpha"] == 0.2
    # an explicit config node (what the distill workflow passes) is part of the identity too
    c1 = build_synthetic_set(Mixup(mix_k=2), imgs, 4, tmp_path / "t", seed=0, batch_size=2, config={"steps": 10})
    idx = json.loads((tmp_path / "t" / "index.json").read_text())
    assert idx["config"] == {"steps": 10}
    build_synthetic_set(Mixup(mix_k=2), imgs, 4, tmp_path / "t", seed=0, batch_size=2, config={"steps": 20})
    assert json.loads((tmp_path / "t" / "index.json").read_text())["config"] == {"steps": 20}
    assert c1.shape == (4, 3, 8, 8)


def test_clip_preprocess_resizes_the_short_side_and_centre_crops():
    """ImageMixer's CLIP input as CLIPImageProcessor makes it (shorter side to the size, centre crop),
    against torchvision's Resize + CenterCrop; a non-square image is not squashed (issue 16)."""
    from torchvision.transforms import v2

    from fulcra_plugins.generators.imagemixer import clip_preprocess

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 30), torch.linspace(0, 1, 50), indexing="ij")
    x = torch.stack([xx, yy, (xx * yy)]).expand(2, 3, 30, 50).contiguous()  # smooth: resampling agrees
    got = clip_preprocess(x, 16)
    ref = v2.CenterCrop(16)(v2.Resize(16, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(x)).clamp(0, 1)
    assert got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=0)
    # a squashed resize would see the whole width; the crop drops the sides
    squashed = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    assert (got - squashed.clamp(0, 1)).abs().max() > 0.05


def test_imagemixer_accepts_one_image_per_output(tiny_mixer_dir):
    """mix_k = 1: ImageVariations, one source image per synthetic image (Table 4.4)."""
    from fulcra_plugins.generators.imagemixer import ImageMixer

    mixer = ImageMixer(model=str(tiny_mixer_dir), mix_k=1, steps=2, device="cpu")
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = mixer.generate(x, _gen(0))
    assert y.shape == (3, 3, 12, 12)
    with pytest.raises(Exception, match="mix_k must be >= 1"):
        ImageMixer(model=str(tiny_mixer_dir), mix_k=0)


def test_synthetic_set_from_a_lazy_view_equals_the_eager_one(tmp_path):
    """Sources drawn from a DatasetImages view (decoded per chunk) give the same set as a tensor."""
    from fulcra.engine import DatasetImages

    imgs = (torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)

    class Files(torch.utils.data.Dataset):
        reads = 0

        def __len__(self):
            return 9

        def __getitem__(self, i):
            type(self).reads += 1
            return imgs[i], 0

    eager = build_synthetic_set(Mixup(mix_k=2), imgs, 5, tmp_path / "e", seed=1, batch_size=2)
    lazy = build_synthetic_set(Mixup(mix_k=2), DatasetImages(Files()), 5, tmp_path / "l", seed=1, batch_size=2)
    assert torch.equal(eager, lazy)
    assert Files.reads == 5 * 2  # the two sources of each of the 5 images, decoded once; nothing else


def _ddp_synthetic_worker(rank, world, port, out):
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from fulcra.engine import dist

    assert dist.init_distributed("gloo")
    imgs = (torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    syn = build_synthetic_set(Mixup(mix_k=2), imgs, 7, f"{out}/set", seed=4, batch_size=2)
    torch.save(syn.clone(), f"{out}/rank{rank}.pt")
    dist.destroy()


def test_synthetic_set_built_by_two_processes_equals_one(tmp_path):
    """Under torchrun (2 gloo processes) each rank generates its chunks, rank 0 consolidates them into
    images.npy, and every rank reads the same set as a single process builds."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_synthetic_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    imgs = (torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    one = build_synthetic_set(Mixup(mix_k=2), imgs, 7, tmp_path / "one", seed=4, batch_size=2)
    for r in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{r}.pt", weights_only=True), one)
    assert (tmp_path / "set" / "images.npy").is_file() and not list((tmp_path / "set").glob("chunk_*.pt"))
