"""The feature cache against re-encoding, its resume, and the distillation training step."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fulcra_plugins.data.digits import TensorImageDataset
from fulcra_plugins.distill.cache import CachedFeatures, FeatureCache
from fulcra_plugins.distill.students import VitStudent
from fulcra_plugins.distill.teachers import ProbedTeacher
from fulcra_plugins.distill.training import evaluate, probe_teacher, to_unit, train_student
from fulcra_plugins.tasks.classification import Classification


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(
        (torch.rand(n, 3, 16, 16, generator=g) * 255).to(torch.uint8), torch.randint(0, 3, (n,), generator=g)
    )


def _teacher():
    torch.manual_seed(0)
    return ProbedTeacher("dinov2_vits14", tiny=True, num_classes=3, n_cls=2, image_size=28)


def test_cache_equals_encoding_and_resumes(tmp_path):
    t, ds = _teacher(), _data()
    enc = lambda x: t.encode(t.prepare(to_unit(x)))  # noqa: E731
    cache = FeatureCache(tmp_path / "c", {"k": 1}, chunk=5)
    feats = cache.build(ds, enc, torch.device("cpu"))
    ref = enc(ds.images)
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert cache.complete
    # an interrupted build: chunk 2 never flagged -> only it is recomputed
    done = np.load(tmp_path / "c" / "done.npy", mmap_mode="r+")
    done[2] = 0
    done.flush()
    f = np.load(tmp_path / "c" / "features.npy", mmap_mode="r+")
    f[10:15] = 0
    f.flush()
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    calls = []
    feats = FeatureCache(tmp_path / "c", {"k": 1}, chunk=5).build(
        ds, lambda x: calls.append(len(x)) or enc(x), torch.device("cpu")
    )
    assert calls == [5]
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-5, atol=1e-5)
    # another key -> rebuilt from scratch
    calls.clear()
    FeatureCache(tmp_path / "c", {"k": 2}, chunk=5).build(
        ds, lambda x: calls.append(len(x)) or enc(x), torch.device("cpu")
    )
    assert len(calls) == 1 + 5  # shape probe + every chunk
    cf = CachedFeatures(feats, ds.labels)
    x, y = cf.get_batch([7, 2, 11])
    torch.testing.assert_close(x, torch.from_numpy(np.asarray(feats[[7, 2, 11]])))
    assert y.tolist() == ds.labels[[7, 2, 11]].tolist()


def test_cached_probing_matches_reencoding(tmp_path, monkeypatch):
    # fast path (head on cached features) vs slow reference (encoder run on every batch)
    from fulcra_plugins.distill import training

    ds, task = _data(), Classification()
    cfg = SimpleNamespace(
        epochs=2, batch_size=8, optimizer="adamw", lr=1e-2, weight_decay=0.0, augment="deterministic", cache=True
    )
    a, b = _teacher(), _teacher()
    with monkeypatch.context() as mp:  # the targets come from the cache, not another pass over the data
        mp.setattr(training, "dataset_targets", lambda *a: pytest.fail("targets read from the dataset"))
        info = probe_teacher(
            a, task, ds, out_dir=tmp_path / "a", cfg=cfg, device=torch.device("cpu"), seed=0,
            cache_root=tmp_path / "cache",
        )  # fmt: skip
    assert info["cached"]
    cfg.cache = False
    info = probe_teacher(b, task, ds, out_dir=tmp_path / "b", cfg=cfg, device=torch.device("cpu"), seed=0)
    assert not info["cached"]
    for pa, pb in zip(a.head.parameters(), b.head.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert 0.0 <= evaluate(a, ds, task, torch.device("cpu"))["accuracy"] <= 1.0


def _cfg(**kw):
    base = dict(
        epochs=1,
        batch_size=8,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.0,
        warmup_epochs=0,
        augment="random",
        mixup=0.2,
        crop_scale=None,
        flip=True,
        jitter=0.4,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _student(tmp_path, name, alpha, synthetic, loss="kd"):
    ds = _data()
    teacher = _teacher()
    torch.manual_seed(1)
    s = VitStudent(tiny=True, pretrained=False, num_classes=3, image_size=28)
    train_student(
        s,
        Classification(),
        ds,
        ckpt_path=tmp_path / f"{name}.ckpt",
        cfg=_cfg(),
        device=torch.device("cpu"),
        seed=0,
        teacher=teacher,
        distill_cfg=SimpleNamespace(alpha=alpha, temperature=2.0, loss=loss),
        synthetic=synthetic,
    )
    return s


def test_synthetic_images_only_enter_the_distillation_term(tmp_path):
    syn = (torch.rand(10, 3, 16, 16) * 255).to(torch.uint8)
    # alpha = 0: the loss is the task loss on real images only -> synthetic images change nothing
    a = _student(tmp_path, "a", 0.0, None)
    b = _student(tmp_path, "b", 0.0, syn)
    # (a larger batch through the same matmuls changes float rounding only: ~1e-5)
    same = max(float((pa - pb).abs().max()) for pa, pb in zip(a.parameters(), b.parameters()))
    assert same < 1e-4
    # alpha = 0.5: they do, by far more than rounding
    c = _student(tmp_path, "c", 0.5, None)
    d = _student(tmp_path, "d", 0.5, syn)
    assert max(float((pc - pd).abs().max()) for pc, pd in zip(c.parameters(), d.parameters())) > 10 * max(same, 1e-5)


def test_distillation_resumes_exactly(tmp_path):
    full = _student(tmp_path, "full", 0.5, None, loss="dkd")
    ckpt = torch.load(tmp_path / "full.ckpt", weights_only=True)
    assert ckpt["step"] == 3
    again = _student(tmp_path, "full", 0.5, None, loss="dkd")  # finished checkpoint: nothing retrained
    for pa, pb in zip(full.parameters(), again.parameters()):
        torch.testing.assert_close(pa, pb)


def test_crd_distillation_trains_its_embedding_heads_and_the_student(tmp_path):
    s = _student(tmp_path, "crd", 0.5, None, loss="crd")
    sd = torch.load(tmp_path / "crd.ckpt", weights_only=True)["model"]
    assert any(k.startswith("embed.student.") for k in sd) and any(k.startswith("embed.teacher.") for k in sd)
    torch.manual_seed(1)
    before = VitStudent(tiny=True, pretrained=False, num_classes=3, image_size=28)
    assert max(float((a - b).abs().max()) for a, b in zip(s.parameters(), before.parameters())) > 1e-4


def test_distillation_loss_only_ignores_the_labels(tmp_path):
    """Table 4.6's "L_distill only" ablation is distill.alpha=1: the labels must not matter."""
    ds = _data()
    flipped = TensorImageDataset(ds.images, (ds.labels + 1) % 3)
    out = []
    for name, data in (("a", ds), ("b", flipped)):
        torch.manual_seed(1)
        s = VitStudent(tiny=True, pretrained=False, num_classes=3, image_size=28)
        train_student(
            s, Classification(), data, ckpt_path=tmp_path / f"{name}.ckpt", cfg=_cfg(), device=torch.device("cpu"),
            seed=0, teacher=_teacher(), distill_cfg=SimpleNamespace(alpha=1.0, temperature=2.0, loss="kd"),
        )  # fmt: skip
        out.append(s)
    for pa, pb in zip(out[0].parameters(), out[1].parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_synthetic_images_get_the_dense_crop_scale(tmp_path, monkeypatch):
    """Synthetic images carry no label map; for segmentation they must still get the real images'
    crop scale 0.25, not classification's 0.08 (issue 16: they got 0.08)."""
    from fulcra_plugins.distill import training
    from fulcra_plugins.distill.teachers import ProbedSegTeacher
    from fulcra_plugins.tasks.segmentation import SemanticSegmentation

    seen = []
    real = training.augment_batch

    def spy(images, labels, mode, gen, **kw):
        seen.append((labels is None, kw.get("scale")))
        return real(images, labels, mode, gen, **kw)

    monkeypatch.setattr(training, "augment_batch", spy)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(8, 3, 28, 28, generator=g) * 255).to(torch.uint8)
    maps = torch.randint(0, 3, (8, 28, 28), generator=g)
    ds = torch.utils.data.TensorDataset(images, maps)
    torch.manual_seed(0)
    teacher = ProbedSegTeacher("dinov2_vits14", tiny=True, num_classes=3, image_size=28)
    s = VitStudent(tiny=True, pretrained=False, num_classes=3, image_size=28, task="segmentation")
    train_student(
        s, SemanticSegmentation(), ds, ckpt_path=None, cfg=_cfg(batch_size=4, epochs=1, mixup=0.0),
        device=torch.device("cpu"), seed=0, teacher=teacher,
        distill_cfg=SimpleNamespace(alpha=0.5, temperature=2.0, loss="kd"), synthetic=images[:4],
    )  # fmt: skip
    syn = [scale for unlabelled, scale in seen if unlabelled]
    assert syn and all(scale == (0.25, 1.0) for scale in syn)


class _Dense(torch.utils.data.Dataset):
    """Images with [H, W] label maps (values set by the test)."""

    def __init__(self, maps: torch.Tensor):
        self.maps = maps
        self.images = (torch.rand(len(maps), 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(
            torch.uint8
        )

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return self.images[i], self.maps[i]


def test_cache_keeps_the_targets_memory_mapped(tmp_path):
    """Labels and label maps are stored with the features in one pass (int64 / int16 memory maps),
    read back exactly; a cache written before targets were stored falls back to the dataset."""
    enc = lambda x: x.float().mean((2, 3))  # noqa: E731
    ds = _data(n=13)
    cache = FeatureCache(tmp_path / "cls", {"k": 1}, chunk=4)
    cache.build(ds, enc, torch.device("cpu"))
    t = cache.targets()
    assert isinstance(t, np.memmap) and t.dtype == np.int64 and t.tolist() == ds.labels.tolist()
    maps = torch.randint(0, 150, (9, 6, 5), generator=torch.Generator().manual_seed(2))
    maps[3, 0, 0] = 255  # an ignore index
    dense = FeatureCache(tmp_path / "seg", {"k": 1}, chunk=4)
    feats = dense.build(_Dense(maps), enc, torch.device("cpu"))
    t = dense.targets()
    assert t.dtype == np.int16 and t.shape == (9, 6, 5)
    _, y = CachedFeatures(feats, t).get_batch([8, 3, 0])
    assert y.dtype == torch.int64 and torch.equal(y, maps[[8, 3, 0]])
    bad = maps.clone()
    bad[7, 1, 1] = 40000
    with pytest.raises(ValueError, match="items 4.. hold 0..40000, outside the int16 range"):
        FeatureCache(tmp_path / "bad", {"k": 1}, chunk=4).build(_Dense(bad), enc, torch.device("cpu"))
    (tmp_path / "cls" / "targets.npy").unlink()  # the layout of an older cache: still complete
    assert cache.complete and cache.targets() is None
