"""Offline stand-ins for foundation-model weights, pre-trained **without the target labels**.

No DINOv2 exists offline, so the ``distill-digits`` recipe makes its own encoders, the way DINOv2 made
its: a large encoder learns from images alone, and the small one is distilled from it, task-agnostically.

- :func:`pretrain_teacher_encoder` — self-supervised contrastive pre-training (SimCLR's NT-Xent, a
  joint-embedding objective of the DINO family): two random views of each image, their last CLS
  tokens through a small projector, each view must find its partner among the ``2B - 1`` others.
  The data it reads is a tensor of images: no label can reach it.
- :func:`distill_student_encoder` — task-agnostic feature distillation of that frozen encoder into
  the small one (as DINOv2's ViT-S comes from its ViT-g): the student's CLS and patch tokens,
  through a linear map, regress the teacher's (cosine) on augmented images, no labels.

Both are cached under a key of their whole configuration (objective, backbone, image size, schedule,
augmentation, a hash of the images, seed, and for the student the teacher's key): ``KEY.safetensors``
is written atomically with ``KEY.json`` (the key and what the encoder saw), so reruns and other seeds
reuse them, and any change of the configuration trains a new one. Training resumes from
``KEY.ckpt`` (the engine's Trainer) after an interruption.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fulcra.engine import Trainer, atomic_write_text, dist, image_batches

from ._common import InputSpec
from .augment import augment_batch

__all__ = ["nt_xent", "pretrain_teacher_encoder", "distill_student_encoder", "encoder_key", "images_digest"]


def nt_xent(z: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent over ``2B`` embeddings ``z`` ``[2B, d]`` whose rows ``i`` and ``i + B`` are views
    of one image: mean over rows of ``-log softmax_j(cos(z_i, z_j)/τ)`` at the partner, ``j ≠ i``."""
    n = z.shape[0]
    if n % 2:
        raise ValueError(f"nt_xent needs an even number of rows (two views per image), got {n}")
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.t() / float(temperature)
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    half = n // 2
    target = torch.cat([torch.arange(half, n), torch.arange(0, half)]).to(z.device)
    return F.cross_entropy(sim, target)


def images_digest(images: Any) -> str:
    """Hash of the pixel bytes of ``images`` (the encoders' only input, so part of their key): a
    uint8 tensor or a :class:`fulcra.engine.DatasetImages`, read in batches (the same digest)."""
    h = hashlib.sha1(str(tuple(images.shape)).encode())
    for x in image_batches(images):
        h.update(x.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encoder_key(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Unlabelled(torch.utils.data.Dataset):
    """Images only: the target handed to the Trainer is a constant, never a label."""

    def __init__(self, images: Any):
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        return self.images[i], torch.zeros((), dtype=torch.long)

    def get_batch(self, indices):
        idx = torch.as_tensor(list(indices))
        return self.images[idx], torch.zeros(len(idx), dtype=torch.long)


class _Encoder(nn.Module, InputSpec):
    """A backbone plus a trainable projection, with the teachers' and students' ``prepare``. Its
    ``forward`` does all the trainable work, so that under DDP every gradient is synchronised."""

    def __init__(self, backbone: nn.Module, proj: nn.Module, image_size: int, patch_size: tuple | None = None):
        super().__init__()
        self.backbone, self.proj, self.image_size = backbone, proj, int(image_size)
        self.patch_size = patch_size  # set: (cls, patch tokens resized to this grid) through proj["cls"/"patch"]

    def normalize_resized(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.normalize(images)

    def forward(self, x: torch.Tensor):
        tok = self.backbone.forward_tokens(x)
        if self.patch_size is None:
            return self.proj(tok["cls"][-1])
        sp = tok["patch"]
        if tuple(sp.shape[-2:]) != tuple(self.patch_size):
            sp = F.interpolate(sp, size=self.patch_size, mode="bilinear", align_corners=False)
        return self.proj["cls"](tok["cls"][-1]), self.proj["patch"](sp.flatten(2).transpose(1, 2))


def _views(images01: torch.Tensor, gen: torch.Generator, aug: dict) -> torch.Tensor:
    return augment_batch(images01, None, "random", gen, **aug)[0]


def _train(model, images, loss_fn, transform, cfg, device, seed, ckpt, hooks, stage) -> None:
    Trainer(
        model,
        _Unlabelled(images),
        loss_fn,
        epochs=int(cfg["epochs"]),
        batch_size=min(int(cfg["batch_size"]), int(images.shape[0])),
        optimizer="adamw",
        lr=float(cfg["lr"]),
        weight_decay=float(cfg["weight_decay"]),
        warmup_steps=max(1, int(images.shape[0]) // int(cfg["batch_size"])),
        device=device,
        seed=seed,
        ckpt_path=ckpt,
        hooks=hooks,
        stage=stage,
        batch_transform=transform,
    ).fit()


def _cached(cache_dir: Path, who: str, spec: dict, provenance: dict, build) -> tuple[Path, dict]:
    """``build(ckpt_path) -> state_dict`` once per key; the weights and their JSON appear atomically."""
    key = encoder_key(spec)
    path = cache_dir / f"{who}-{key}.safetensors"
    meta = cache_dir / f"{who}-{key}.json"
    info = {**provenance, "key": key, "weights": str(path)}
    if path.is_file() and meta.is_file():
        return path, {**json.loads(meta.read_text()), "cached": True}
    cache_dir.mkdir(parents=True, exist_ok=True)
    ckpt = cache_dir / f"{who}-{key}.ckpt"
    state = build(ckpt)
    if dist.rank() == 0:
        from safetensors.torch import save_file

        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        atomic_write_text(json.dumps({**info, "spec": spec}, indent=1, default=str), meta)
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    return path, {**info, "spec": spec, "cached": False}


def pretrain_teacher_encoder(
    backbone: nn.Module,
    images: Any,
    *,
    spec: dict,
    cfg: dict,
    aug: dict,
    cache_dir: Path,
    device: torch.device,
    hooks: Any = None,
) -> tuple[Path, dict]:
    """Self-supervised (NT-Xent) pre-training of ``backbone`` on ``images`` ``[N, 3, H, W]`` uint8.

    ``cfg``: ``epochs, batch_size, lr, weight_decay, temperature, image_size, seed``; ``aug``: the
    RandomResizedCrop/ColorJitter/flip settings of the two views. Returns (weights path, provenance).
    """
    d = int(backbone.embed_dim)
    full = {"objective": "nt_xent", **spec, **cfg, "aug": aug, "images": images_digest(images)}
    provenance = {
        "objective": f"self-supervised contrastive (SimCLR NT-Xent, τ = {cfg['temperature']}) on two augmented views",
        "images": int(images.shape[0]),
        "labels": False,
        "epochs": int(cfg["epochs"]),
    }

    def build(ckpt):
        torch.manual_seed(int(cfg["seed"]))
        proj = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 128))
        model = _Encoder(backbone, proj, int(cfg["image_size"]))

        def transform(x, y, gen):
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x
            return torch.cat([_views(x, gen, aug), _views(x, gen, aug)]), y

        def loss_fn(m, x, _y):
            net = m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m
            loss = nt_xent(m(net.prepare(x)), float(cfg["temperature"]))
            return loss, {"nt_xent": float(loss.detach())}

        _train(model, images, loss_fn, transform, cfg, device, int(cfg["seed"]), ckpt, hooks, "pretrain_teacher")
        return backbone.state_dict()

    return _cached(Path(cache_dir), "teacher", full, provenance, build)


def distill_student_encoder(
    student: nn.Module,
    teacher: nn.Module,
    images: Any,
    *,
    spec: dict,
    cfg: dict,
    aug: dict,
    cache_dir: Path,
    device: torch.device,
    hooks: Any = None,
) -> tuple[Path, dict]:
    """Task-agnostic feature distillation of the frozen ``teacher`` backbone into ``student``.

    Both read the same augmented view (each at its own ``image_size``: ``cfg['image_size']`` and
    ``cfg['teacher_image_size']``); ``1 - cos`` between a linear map of the student's last CLS token
    and the teacher's, plus the same over patch tokens (the student's patch grid resized to the
    teacher's). ``spec`` must hold the teacher's key. Returns (weights path, provenance).
    """
    ds, dt = int(student.embed_dim), int(teacher.embed_dim)
    full = {"objective": "feature_distillation", **spec, **cfg, "aug": aug, "images": images_digest(images)}
    provenance = {
        "objective": "task-agnostic feature distillation of the teacher encoder (cosine on CLS and patch tokens)",
        "images": int(images.shape[0]),
        "labels": False,
        "epochs": int(cfg["epochs"]),
    }
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    t_size = int(cfg["teacher_image_size"])

    def build(ckpt):
        torch.manual_seed(int(cfg["seed"]))
        proj = nn.ModuleDict({"cls": nn.Linear(ds, dt), "patch": nn.Linear(ds, dt)})
        teacher.to(device)
        t_in = _Encoder(teacher, nn.Identity(), t_size)
        with torch.no_grad():
            grid = tuple(
                teacher.forward_tokens(t_in.prepare(images[:1].to(device).float() / 255.0))["patch"].shape[-2:]
            )
        model = _Encoder(student, proj, int(cfg["image_size"]), patch_size=grid)

        def transform(x, y, gen):
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x
            return _views(x, gen, aug), y

        def loss_fn(m, x, _y):
            net = m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m
            with torch.no_grad():
                tt = teacher.forward_tokens(t_in.prepare(x))
            s_cls, s_patch = m(net.prepare(x))
            c = 1 - F.cosine_similarity(s_cls, tt["cls"][-1], dim=-1).mean()
            p = 1 - F.cosine_similarity(s_patch, tt["patch"].flatten(2).transpose(1, 2), dim=-1).mean()
            loss = c + p
            return loss, {"cls": float(c.detach()), "patch": float(p.detach())}

        _train(model, images, loss_fn, transform, cfg, device, int(cfg["seed"]), ckpt, hooks, "pretrain_student")
        return student.state_dict()

    return _cached(Path(cache_dir), "student", full, provenance, build)
