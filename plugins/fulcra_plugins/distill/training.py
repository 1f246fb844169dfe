"""The training steps of the distill workflow, each resumable through the engine's Trainer.

- :func:`probe_teacher` — trains only the teacher's head (step 1 of §4.3.1), on the memory-mapped
  feature cache when the augmentation is deterministic, else re-encoding every augmented batch.
- :func:`train_student` — trains a student on ``(1 − α)·task + α·distill`` (Eq. 4.2), or on the task
  alone when no teacher is given; teacher and student see exactly the same augmented batch, Mixup
  touches original images only, and synthetic images enter only the distillation term, as many per
  step as original ones (§4.3.2).
- :func:`evaluate` — the task's headline metric over a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulcra.engine import Trainer, collate_batch, dataset_batches, unwrap
from fulcra.errors import ConfigError
from fulcra.interfaces import PredictingTask

from ._common import resize_logits
from .augment import augment_batch, mixup
from .cache import CachedFeatures, FeatureCache, dataset_fingerprint, file_fingerprint
from .losses import CRDEmbed, combine, crd_loss, distill_loss

__all__ = ["probe_teacher", "train_student", "evaluate", "dataset_targets", "to_unit"]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float in [0, 1] (float input passes through)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def dataset_targets(dataset: Any) -> torch.Tensor:
    """All targets of a dataset as one tensor ``[N]`` or ``[N, H, W]``."""
    if hasattr(dataset, "labels") and isinstance(dataset.labels, torch.Tensor):
        return dataset.labels
    out = [collate_batch(dataset, list(range(i, min(len(dataset), i + 256))))[1] for i in range(0, len(dataset), 256)]
    return torch.cat([torch.as_tensor(t) for t in out])


def _is_dense(targets: torch.Tensor) -> bool:
    return targets.ndim >= 3


def _task_loss(task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return task.loss(resize_logits(out, tuple(y.shape[-2:])) if _is_dense(y) else out, y)


class _HeadOnFeatures(nn.Module):
    """Wraps a teacher head so the Trainer can train it on cached features."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)


def probe_teacher(
    teacher: nn.Module,
    task: Any,
    train: Any,
    *,
    out_dir: Path,
    cfg: Any,
    device: torch.device,
    seed: int,
    hooks: Any = None,
    cache_root: Path | None = None,
    weights: str | None = None,
    workers: int = 0,
) -> dict:
    """Train the teacher head; returns ``{"cached": bool}``. Resumes from ``out_dir/teacher.ckpt``.

    ``cfg`` has ``epochs, batch_size, optimizer, lr, weight_decay, augment, cache``. With
    ``augment == "deterministic"`` and ``cache``, features live in ``cache_root`` (shared by seeds).
    ``workers`` processes decode the coming batches of ``train`` (the same result).
    """
    cached = bool(cfg.cache) and cfg.augment == "deterministic"
    common = dict(
        epochs=cfg.epochs,
        batch_size=min(cfg.batch_size, len(train)),
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        device=device,
        seed=seed,
        workers=workers,
        ckpt_path=out_dir / "teacher.ckpt",
        hooks=hooks,
        stage="probe",
    )
    teacher.to(device)
    if cached:
        key = {
            "backbone": teacher.backbone_name,
            "weights": file_fingerprint(weights),
            "image_size": teacher.image_size,
            "n_cls": getattr(teacher, "n_cls", None),
            "avgpool": getattr(teacher, "avgpool", None),
            "dense": teacher.task == "segmentation",
            "data": dataset_fingerprint(train),
        }
        cache = FeatureCache(cache_root, key)
        feats = cache.build(train, lambda x: teacher.encode(teacher.prepare(to_unit(x))), device, workers=workers)
        targets = cache.targets()  # memory-mapped with the features; a cache from before: the dataset's
        ds = CachedFeatures(feats, targets if targets is not None else dataset_targets(train))
        model = _HeadOnFeatures(teacher.head)
        # a head on cached features trains in seconds: checkpointing it every epoch would cost as
        # much as training it (measured 1.0 of 2.6 s), and the expensive part, the cache, resumes itself
        common["ckpt_path"] = None
        Trainer(model, ds, lambda m, x, y: _task_loss(task, m(x), y), **common).fit()
    else:

        def transform(x, y, gen):
            x, y = augment_batch(to_unit(x), y, cfg.augment, gen)
            return unwrap_prepare(teacher, x), y

        Trainer(teacher, train, lambda m, x, y: _task_loss(task, m(x), y), batch_transform=transform, **common).fit()
    teacher.eval()
    return {"cached": cached}


def unwrap_prepare(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return unwrap(model).prepare(x)


class _WithCRD(nn.Module):
    """A student plus CRD's embedding heads, trained together; one forward gives the logits and both
    embeddings (so DDP sees every parameter used inside its forward)."""

    def __init__(self, student: nn.Module, embed: CRDEmbed):
        super().__init__()
        self.student, self.embed = student, embed

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.prepare(images)

    def forward(self, x: torch.Tensor, t_feats: torch.Tensor):
        zs, zt = self.embed(self.student.features(x), t_feats)
        return self.student(x), zs, zt


def train_student(
    student: nn.Module,
    task: Any,
    train: Any,
    *,
    ckpt_path: Path,
    cfg: Any,
    device: torch.device,
    seed: int,
    teacher: nn.Module | None = None,
    distill_cfg: Any = None,
    synthetic: Any = None,
    hooks: Any = None,
    stage: str = "student",
    workers: int = 0,
) -> nn.Module:
    """Train ``student`` (resuming from ``ckpt_path``); with ``teacher``, by distillation.
    ``workers`` processes decode the coming batches of ``train`` (the same weights).

    Args:
        cfg: ``epochs, batch_size, optimizer, lr, weight_decay, warmup_epochs, augment, mixup``.
        distill_cfg: ``alpha, temperature, loss`` (``kd``, ``hard``, ``dkd`` or ``crd``: KD plus
            ``crd_weight`` × the contrastive term of :func:`crd_loss` at ``crd_temperature``).
        synthetic: ``[M, 3, H, W]`` uint8 images used only in the distillation term: a tensor (a
            memory-mapped synthetic set) or anything indexed like one (:class:`fulcra.engine.DatasetImages`).
    """
    dense = _is_dense(torch.as_tensor(collate_batch(train, [0])[1]))  # one item's target, not the whole set's
    loss_name = distill_cfg.loss if (teacher is not None and distill_cfg is not None) else "kd"
    # Mixup is not compatible with hard-label KD and DKD (Table B.9), nor with label maps
    use_mixup = cfg.mixup > 0 and not dense and not (teacher is not None and loss_name in ("hard", "dkd"))
    bs = min(cfg.batch_size, len(train))
    syn = synthetic

    aug = dict(
        scale=(cfg.crop_scale, 1.0) if getattr(cfg, "crop_scale", None) else None,
        jitter=getattr(cfg, "jitter", 0.4),
        flip=getattr(cfg, "flip", True),
    )
    aug_syn = dict(aug, scale=aug["scale"] or ((0.25, 1.0) if dense else (0.08, 1.0)))
    if loss_name == "dkd" and syn is not None and teacher is not None:
        raise ConfigError("distill: DKD needs class labels and synthetic images have none; use loss kd or hard")
    model: nn.Module = student
    use_crd = teacher is not None and loss_name == "crd"
    if use_crd:
        if dense:
            raise ConfigError("distill: distill.loss=crd is for classification (it contrasts image-level features)")
        x0 = to_unit(collate_batch(train, [0, min(1, len(train) - 1)])[0].to(device))
        teacher.to(device).eval()
        with torch.no_grad():
            d_s = student.to(device).features(student.prepare(x0)).shape[-1]
            d_t = teacher.features(teacher.prepare(x0)).shape[-1]
        model = _WithCRD(student, CRDEmbed(d_s, d_t, int(getattr(distill_cfg, "crd_dim", 128))))

    def transform(x, y, gen):
        x, y = augment_batch(to_unit(x), y, cfg.augment, gen, **aug)
        n = x.shape[0]
        perm, lam = torch.arange(n, device=x.device), 1.0
        if use_mixup:
            x, perm, lam = mixup(x, cfg.mixup, gen)
        if syn is not None and teacher is not None:
            pick = torch.randint(0, syn.shape[0], (n,), generator=gen, device=gen.device).cpu()
            # synthetic images carry no label map, so augment_batch cannot tell a dense task: give
            # them the real images' crop scale (0.25 for segmentation, not 0.08)
            xs, _ = augment_batch(to_unit(syn[pick].to(x.device)), None, cfg.augment, gen, **aug_syn)
            if xs.shape[-2:] != x.shape[-2:]:
                xs = torch.nn.functional.interpolate(
                    xs, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True
                )
            x = torch.cat([x, xs], 0)
        return x, {"y": y, "perm": perm, "lam": lam, "n": n}

    def loss_fn(model, x, t):
        n, y = t["n"], t["y"]
        if use_crd:
            with torch.no_grad():
                t_in = teacher.prepare(x)
                t_out, t_feats = teacher(t_in), teacher.features(t_in)
            s_out, zs, zt = model(unwrap(model).prepare(x), t_feats)
        else:
            s_out = model(unwrap(model).prepare(x))
        if dense:
            s_out = resize_logits(s_out, tuple(y.shape[-2:]))
        task_loss = t["lam"] * _task_loss(task, s_out[:n], y)
        if t["lam"] < 1.0:
            task_loss = task_loss + (1 - t["lam"]) * _task_loss(task, s_out[:n], y[t["perm"]])
        if teacher is None:
            return task_loss, {"task": float(task_loss.detach())}
        if not use_crd:
            with torch.no_grad():
                t_out = teacher(teacher.prepare(x))
                if dense:
                    t_out = resize_logits(t_out, tuple(y.shape[-2:]))
        mask = None
        if dense and hasattr(task, "ignore_index"):
            # synthetic images carry no labels: all their pixels count; ignored real pixels do not
            mask = torch.cat(
                [
                    y != task.ignore_index,
                    torch.ones((s_out.shape[0] - n, *y.shape[1:]), dtype=torch.bool, device=y.device),
                ]
            )
        if loss_name == "dkd":  # needs labels: real images only
            d = distill_loss("dkd", s_out[:n], t_out[:n], labels=y, mask=None if mask is None else mask[:n])
        else:
            d = distill_loss(loss_name, s_out, t_out, temperature=distill_cfg.temperature, mask=mask)
        extra = {}
        if use_crd:
            c = crd_loss(zs, zt, float(getattr(distill_cfg, "crd_temperature", 0.5)))
            extra["crd"] = float(c.detach())
            d = d + float(getattr(distill_cfg, "crd_weight", 0.8)) * c
        loss = combine(task_loss, d, distill_cfg.alpha)
        return loss, {"task": float(task_loss.detach()), "distill": float(d.detach()), **extra}

    steps_per_epoch = max(1, len(train) // bs)
    trainer = Trainer(
        model,
        train,
        loss_fn,
        epochs=cfg.epochs,
        batch_size=bs,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
        device=device,
        seed=seed,
        ckpt_path=ckpt_path,
        hooks=hooks,
        stage=stage,
        batch_transform=transform,
        grad_clip=getattr(cfg, "grad_clip", None) or None,
        workers=workers,
    )
    if teacher is not None:
        teacher.to(device).eval()
    trainer.fit()
    student.eval()
    return student


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Any, task: Any, device: torch.device, batch_size: int = 256, workers: int = 0
) -> dict:
    """Reduced task metrics of ``model`` over ``dataset`` (Resize/CenterCrop only: ``prepare``).

    A task with ``predict`` (:class:`fulcra.interfaces.PredictingTask`, e.g. sliding windows)
    decides how the model sees each image; with ``per_image`` images go one at a time. ``workers``
    processes decode the coming batches."""
    was = model.training
    model.eval()
    metrics = []
    predict = task.predict if isinstance(task, PredictingTask) else None
    step = 1 if predict is not None and task.per_image else batch_size
    for x, y in dataset_batches(dataset, step, workers=workers):
        x, y = to_unit(x.to(device)), torch.as_tensor(y).to(device)
        out = predict(lambda z: model(model.prepare(z)), x) if predict is not None else model(model.prepare(x))
        if _is_dense(y):
            out = resize_logits(out, tuple(y.shape[-2:]))
        metrics.append(task.metric(out, y))
    model.train(was)
    return task.reduce(metrics)


def collect_features(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 256,
    limit: int | None = None,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.features`` over (the first ``limit`` items of) a dataset -> (features, targets) on CPU."""
    fs, ts = [], []
    model.eval()
    with torch.no_grad():
        for x, y in dataset_batches(dataset, batch_size, workers=workers, stop=limit):
            fs.append(model.features(model.prepare(to_unit(x.to(device)))).float().cpu())
            ts.append(torch.as_tensor(y))
    return torch.cat(fs), torch.cat(ts)


def images_features(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """``model.features`` of a uint8 image tensor ``[M, 3, H, W]`` (synthetic images in the PCA plot)."""
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out.append(model.features(model.prepare(to_unit(images[i : i + batch_size].to(device)))).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
