"""The ``distill`` workflow: probe -> (generate) -> distill -> evaluate over seeds (thesis ch. 4).

Rows of the table (the thesis's line numbers in brackets; see docs/distill.md):

======================================= ==============================================================
``student_probed``                       the student's pretrained encoder, frozen, probed (1a)
``student_finetuned``                    the student from its pretrained init, task loss only (1b)
``student_alone``                        the student from scratch, task loss only (8a)
``teacher_probed``                       the teacher's frozen encoder + probed head (2a)
``teacher_finetuned``                    the teacher's encoder finetuned with its head (2b)
``distilled``                            ``(1 − α)·task + α·T²·KL`` from the probed teacher (5a)
``distilled_synthetic``                  the same with synthetic images in the distillation term (5b)
``distilled_real_extra``                 control: as many extra *real* images in the distillation term
``distilled_from_finetuned``             distilled from the finetuned teacher (6a)
``distilled_from_finetuned_synthetic``   the same with synthetic images (6b)
======================================= ==============================================================

Single-model rows run once per ``seeds`` entry; distillation rows once per (teacher seed, student
seed) pair of ``seeds`` × ``student_seeds`` (the thesis: 3 teachers × 2-3 students). With
``search.enabled`` the learning rate and weight decay of each kind of run are chosen by a grid
search on the validation split (B.1.2; the test split is never read before the final scoring).
Writes ``OUT/results.json`` (per row: per-run scores, mean, 1.96σ, the Student-t 95 % interval;
what each encoder saw; the chosen hyperparameters; the thesis's two orderings), ``OUT/results.md``
and the PCA plot of Fig. 4.1 / 4.4. Every stage is checkpointed under ``OUT``; running the same
command again after a kill resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

import fulcra
from fulcra.backbone import check_backbone_ref, create_backbone, locate_backbone_weights
from fulcra.engine import (
    DatasetImages,
    Stage,
    atomic_save,
    atomic_write_text,
    data_workers,
    dist,
    load_checkpoint,
    mean_ci,
)
from fulcra.errors import ConfigError

from .training import evaluate, probe_teacher, train_student

log = logging.getLogger(__name__)

__all__ = ["DistillWorkflow", "ROWS"]

ROWS = (
    "student_probed",
    "student_finetuned",
    "student_alone",
    "teacher_probed",
    "teacher_finetuned",
    "distilled",
    "distilled_synthetic",
    "distilled_real_extra",
    "distilled_from_finetuned",
    "distilled_from_finetuned_synthetic",
)
LABELS = {
    "student_probed": "(1a) student probed",
    "student_finetuned": "(1b) student finetuned",
    "student_alone": "(8a) student alone (scratch)",
    "teacher_probed": "(2a) teacher probed",
    "teacher_finetuned": "(2b) teacher finetuned",
    "distilled": "(5a) distilled from probed teacher",
    "distilled_synthetic": "(5b) distilled from probed teacher + synthetic",
    "distilled_real_extra": "(5a') distilled from probed teacher + as many extra real images",
    "distilled_from_finetuned": "(6a) distilled from finetuned teacher",
    "distilled_from_finetuned_synthetic": "(6b) distilled from finetuned teacher + synthetic",
}
# distillation rows: (teacher kind, extra images in the distillation term)
DISTILL_ROWS = {
    "distilled": ("probed", None),
    "distilled_synthetic": ("probed", "synthetic"),
    "distilled_real_extra": ("probed", "real"),
    "distilled_from_finetuned": ("finetuned", None),
    "distilled_from_finetuned_synthetic": ("finetuned", "synthetic"),
}
# the hyperparameter search's families: rows with extra images reuse their base row's choice (B.1.2:
# "distillation with synthetic images is run with the best hyperparameters found without")
FAMILY = {
    "student_probed": "probe_student",
    "teacher_probed": "probe_teacher",
    "student_finetuned": "student_finetuned",
    "student_alone": "student_alone",
    "teacher_finetuned": "teacher_finetuned",
    "distilled": "distilled",
    "distilled_synthetic": "distilled",
    "distilled_real_extra": "distilled",
    "distilled_from_finetuned": "distilled_from_finetuned",
    "distilled_from_finetuned_synthetic": "distilled_from_finetuned",
}


@dataclass
class ProbeConfig:
    epochs: int = field(default=30, metadata={"help": "probing epochs (thesis: 30 for ViT-S, 20 for ViT-L/g)"})
    batch_size: int = field(default=128, metadata={"help": "probing batch size"})
    optimizer: str = field(default="adamw", metadata={"help": "sgd or adamw"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Table B.2)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (Table B.2)"})
    augment: str = field(
        default="deterministic", metadata={"help": "deterministic (Resize+CenterCrop; enables the cache) or random"}
    )
    cache: bool = field(default=True, metadata={"help": "cache frozen features on disk when augment is deterministic"})


@dataclass
class TrainConfig:
    epochs: int = field(default=80, metadata={"help": "student epochs (thesis: 80 ViT-S, 200 ResNet-50)"})
    batch_size: int = field(
        default=128, metadata={"help": "batch of original images (as many synthetic ones are added)"}
    )
    optimizer: str = field(default="adamw", metadata={"help": "adamw for ViTs, sgd for ResNets"})
    lr: float = field(default=2e-5, metadata={"help": "learning rate (Table B.2)"})
    weight_decay: float = field(default=0.05, metadata={"help": "weight decay (Table B.2)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear warm-up before the cosine decay"})
    augment: str = field(
        default="random", metadata={"help": "random (RandomResizedCrop, flip, ColorJitter) or deterministic"}
    )
    mixup: float = field(default=0.2, metadata={"help": "Mixup Beta parameter on original images (0: off)"})
    crop_scale: Optional[float] = field(
        default=None, metadata={"help": "smallest crop area of RandomResizedCrop (default 0.08; 0.25 for segmentation)"}
    )
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    jitter: float = field(default=0.4, metadata={"help": "ColorJitter strength"})
    scratch_lr: Optional[float] = field(
        default=None, metadata={"help": "learning rate for the from-scratch row (default: lr)"}
    )


@dataclass
class KDConfig:
    alpha: float = field(default=0.5, metadata={"help": "weight of the distillation term, Eq. 4.2"})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature T, Eq. 4.4"})
    loss: str = field(
        default="kd", metadata={"help": "kd (Hinton), hard (hard-label KD), dkd or crd (KD + CRD) (Table B.9)"}
    )
    crd_weight: float = field(default=0.8, metadata={"help": "β of KD + β·CRD (the official CRD's 0.8)"})
    crd_temperature: float = field(default=0.5, metadata={"help": "CRD's τ (Table B.9: 0.5)"})
    crd_dim: int = field(default=128, metadata={"help": "CRD embedding size"})


@dataclass
class SyntheticConfig:
    factor: float = field(
        default=10.0, metadata={"help": "synthetic images per training image (thesis: 10 fine-grained, 5 otherwise)"}
    )
    batch_size: int = field(default=8, metadata={"help": "images per generation call / chunk"})
    path: Optional[str] = field(
        default=None, metadata={"help": "folder of the synthetic set (default OUT/synthetic); reused across runs"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the pairs and the sampling"})


@dataclass
class PretrainConfig:
    enabled: bool = field(
        default=False,
        metadata={"help": "pre-train the (tiny) teacher and student encoders here, without labels: offline demo only"},
    )
    epochs: int = field(default=20, metadata={"help": "teacher encoder: self-supervised (NT-Xent) epochs"})
    student_epochs: int = field(
        default=5, metadata={"help": "student encoder: task-agnostic feature distillation epochs from the teacher's"}
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=64, metadata={"help": "batch size (images; NT-Xent sees two views of each)"})
    temperature: float = field(default=0.2, metadata={"help": "NT-Xent temperature"})
    crop_scale: float = field(default=0.3, metadata={"help": "smallest crop area of the views"})
    jitter: float = field(default=0.4, metadata={"help": "ColorJitter strength of the views"})
    seed: int = field(default=0, metadata={"help": "seed of the pre-training (one pair of encoders for all seeds)"})
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "folder of the encoders, keyed by their config (default OUT/pretrain_cache)"}
    )


@dataclass
class SearchConfig:
    enabled: bool = field(default=False, metadata={"help": "choose lr and weight decay on the validation split"})
    split: str = field(
        default="val", metadata={"help": "validation split (absent: 10% of train is held out for it, §4.4.1)"}
    )
    lr: list = field(
        default_factory=lambda: [1e-5, 2e-5, 4e-5], metadata={"help": "finetuning/distillation lr grid (Table B.2)"}
    )
    weight_decay: list = field(
        default_factory=lambda: [0.025, 0.05, 0.1], metadata={"help": "finetuning/distillation wd grid (Table B.2)"}
    )
    probe_lr: list = field(default_factory=lambda: [1e-3, 2e-3, 4e-3], metadata={"help": "probing lr grid"})
    probe_weight_decay: list = field(default_factory=lambda: [0.0], metadata={"help": "probing wd grid"})


@dataclass
class DistillConfig:
    data: Any = field(default_factory=lambda: {"name": "digits"}, metadata={"kind": "datasets", "help": "the dataset"})
    task: Any = field(
        default_factory=lambda: {"name": "classification"},
        metadata={"kind": "tasks", "help": "classification or semantic_segmentation"},
    )
    teacher: Any = field(
        default_factory=lambda: {"name": "probed", "backbone": "dinov2_vitg14_reg"},
        metadata={"kind": "teachers", "help": "probed (classification) or probed_seg; set weights=PATH"},
    )
    student: Any = field(
        default_factory=lambda: {"name": "vit_small"},
        metadata={"kind": "students", "help": "vit_small, resnet50, deeplabv3_resnet50 or timm"},
    )
    generator: Any = field(
        default_factory=lambda: {"name": "imagemixer"},
        metadata={"kind": "generators", "help": "synthetic image generator (imagemixer needs model=DIR)"},
    )
    seeds: list = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "teacher seeds (one probed and one finetuned teacher each) and single-model row seeds"},
    )
    student_seeds: list = field(
        default_factory=lambda: [0], metadata={"help": "students distilled from each teacher (thesis: 2-3)"}
    )
    rows: list = field(
        default_factory=lambda: list(ROWS), metadata={"help": f"rows of the table, among {', '.join(ROWS)}"}
    )
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "teacher probing"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "student training (all student rows)"})
    distill: KDConfig = field(default_factory=KDConfig, metadata={"help": "distillation loss"})
    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig, metadata={"help": "synthetic set for the distillation term"}
    )
    pretrain: PretrainConfig = field(
        default_factory=PretrainConfig, metadata={"help": "offline stand-in for foundation-model weights"}
    )
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"help": "grid search on validation"})
    interval: str = field(
        default="sd196", metadata={"help": "spread shown in the table: sd196 (1.96σ, the thesis) or t (95% CI)"}
    )
    eval_split: str = field(default="test", metadata={"help": "split the table is scored on"})
    data_workers: Any = field(
        default="auto",
        metadata={
            "help": "auto | N: worker processes that decode the coming batches of an image-file dataset "
            "(auto: 0 for data in memory, else min(8, cpus - 1)); the results are the same"
        },
    )
    plots: bool = field(default=True, metadata={"help": "write the PCA feature plot (needs matplotlib)"})
    keep_checkpoints: bool = field(
        default=True, metadata={"help": "keep per-row checkpoints after scoring (needed for plots on resume)"}
    )


class DistillWorkflow:
    """Task-specific distillation of a probed foundation model into a small student (thesis ch. 4).

    (pre-train label-free stand-in encoders offline) -> probe / finetune the teachers -> build the
    synthetic set -> train each student row for each (teacher seed, student seed) -> score them with
    mean ± 1.96σ (as Tables B.4-B.6), hyperparameters chosen on validation. See docs/distill.md.
    """

    Config = DistillConfig

    def __init__(self, config: Any):
        self.cfg = config
        bad = [r for r in config.rows if r not in ROWS]
        if bad:
            raise ConfigError(f"workflows plugin 'distill': unknown row {bad[0]!r} (rows: {', '.join(ROWS)})")
        if not config.seeds or not config.student_seeds:
            raise ConfigError("workflows plugin 'distill': seeds and student_seeds must not be empty")
        if str(config.interval) not in ("sd196", "t"):
            raise ConfigError(f"workflows plugin 'distill': interval must be sd196 or t, got {config.interval!r}")
        if config.distill.loss not in ("kd", "hard", "dkd", "crd"):
            raise ConfigError(
                f"workflows plugin 'distill': distill.loss must be kd, hard, dkd or crd, got {config.distill.loss!r}"
            )
        self._hp_cache: dict = {}
        self.provenance: dict = {}
        self._workers = 0  # decoding processes: set by run() from data_workers

    # ------------------------------------------------------------------------------ helpers
    def _say(self, ctx, msg: str) -> None:
        if ctx.is_main:
            print(f"[distill] {msg}", flush=True)
        log.info(msg)

    def _node(self, key: str) -> dict:
        return dict(OmegaConf.to_container(self.cfg[key], resolve=True))

    def _teacher(self, node: dict, num_classes: int):
        return fulcra.create("teachers", {**node, "num_classes": num_classes})

    def _student(self, node: dict, num_classes: int, scratch: bool):
        node = {**node, "num_classes": num_classes}
        if scratch:
            if "pretrained" in _params("students", node["name"]):
                node["pretrained"] = False
            node.pop("weights", None)
        return fulcra.create("students", node)

    def _has_pretrained_init(self, node: dict) -> bool:
        """Whether the student starts from pretrained weights: a weights file, or ``pretrained`` on a
        full-size model (whose weights are then looked up). A ``tiny`` model has no pretrained
        weights of its own: without a file it starts from random weights."""
        params = _params("students", node["name"])
        if node.get("weights"):
            return True
        if "pretrained" in params and bool(node.get("pretrained", params["pretrained"])):
            return not bool(node.get("tiny", params.get("tiny", False)))
        return False

    def _finetune_node(self, tnode: dict) -> Optional[dict]:
        """The teacher's encoder and head as a trainable ``vit_small`` (row 2b), or None when the
        teacher is not a bundled probed one (a third party's teacher need not expose its encoder)."""
        if tnode["name"] not in ("probed", "probed_seg"):
            return None
        if tnode.get("tiny") and not tnode.get("weights"):
            return None  # a random encoder: "finetuning" it would be training from scratch
        params = _params("teachers", tnode["name"])
        node = {
            "name": "vit_small",
            "backbone": tnode.get("backbone", params["backbone"]),
            "pretrained": True,
            "image_size": tnode.get("image_size", params["image_size"]),
            "task": "segmentation" if tnode["name"] == "probed_seg" else "classification",
        }
        for k in ("weights", "tiny", "head", "n_cls", "avgpool", "hidden"):
            if k in tnode:
                node[k] = tnode[k]
        return node

    def _student_probe_node(self, snode: dict, task_name: str) -> Optional[dict]:
        """The student's pretrained encoder as a probed teacher (row 1a), or None without one."""
        params = _params("students", snode["name"])
        if "backbone" not in params or not self._has_pretrained_init(snode):
            return None
        dense = snode.get("task", params.get("task")) == "segmentation"
        node = {
            "name": "probed_seg" if dense else "probed",
            "backbone": snode.get("backbone", params["backbone"]),
            "image_size": snode.get("image_size", params.get("image_size", 224)),
        }
        keys = ("weights", "tiny") if dense else ("weights", "tiny", "head", "n_cls", "avgpool", "hidden")
        for k in keys:
            if k in snode:
                node[k] = snode[k]
            elif k in params and k not in ("weights",):
                node[k] = params[k]
        return node

    def _preflight(self, tnode: dict, snode: dict, rows: list) -> None:
        """Fail before any work when a backbone's name, keys or weight file are wrong (nothing is loaded
        here), or when the distillation loss cannot use the rows' images."""
        loss = str(self.cfg.distill.loss)
        if loss == "dkd" and any(DISTILL_ROWS.get(r, (None, None))[1] for r in rows):
            bad = next(r for r in rows if DISTILL_ROWS.get(r, (None, None))[1])
            raise ConfigError(
                f"distill: row {bad} with distill.loss=dkd: DKD needs class labels and the extra "
                "(synthetic or unlabelled real) images of that row have none; use distill.loss=kd or hard, or drop the row"
            )
        if loss == "crd" and self._node("task").get("name") != "classification":
            raise ConfigError("distill: distill.loss=crd is for classification (it contrasts image-level features)")
        params = _params("students", snode["name"])
        if "backbone" in tnode:
            check_backbone_ref(tnode["backbone"], owner="teacher.backbone")
        if "backbone" in params:
            check_backbone_ref(snode.get("backbone", params["backbone"]), owner="student.backbone")
        if self.cfg.pretrain.enabled:
            return  # the tiny encoders' weights are produced by the pre-training
        teacher_rows = ("teacher_probed", "teacher_finetuned", *DISTILL_ROWS)
        if any(r in rows for r in teacher_rows) and "backbone" in tnode:
            if not tnode.get("tiny") or tnode.get("weights"):
                locate_backbone_weights(tnode["backbone"], tnode.get("weights"), owner="teacher.backbone")
        if "backbone" in params and any(r in rows for r in ("student_finetuned", "student_probed", *DISTILL_ROWS)):
            pretrained = bool(snode.get("pretrained", params.get("pretrained", True)))
            if pretrained and (not snode.get("tiny") or snode.get("weights")):
                locate_backbone_weights(
                    snode.get("backbone", params["backbone"]), snode.get("weights"), owner="student.backbone"
                )

    # --------------------------------------------------------------------------- pretraining
    def _pretrain(self, ctx, train, tnode: dict, snode: dict) -> tuple[dict, dict]:
        """Offline stand-in for foundation-model weights, without the target labels: the teacher's
        encoder self-supervised on the training images, the student's distilled from it."""
        from .pretrain import distill_student_encoder, pretrain_teacher_encoder

        pc, tc = self.cfg.pretrain, self.cfg.train
        cache = Path(pc.cache_dir).expanduser() if pc.cache_dir else Path(ctx.out) / "pretrain_cache"
        images = _all_images(train, self._workers)
        aug = {"scale": (float(pc.crop_scale), 1.0), "jitter": float(pc.jitter), "flip": bool(tc.flip)}
        common = {"lr": pc.lr, "weight_decay": pc.weight_decay, "batch_size": pc.batch_size, "seed": pc.seed}
        self._say(
            ctx,
            "no foundation-model weights offline: pre-training stand-in encoders WITHOUT the labels "
            f"(teacher: self-supervised NT-Xent on the {len(images)} training images; student: feature "
            "distillation of that encoder); real runs set teacher.weights=PATH",
        )
        tparams = _params("teachers", tnode["name"])
        t_spec = {
            "backbone": tnode.get("backbone", tparams.get("backbone")),
            "tiny": bool(tnode.get("tiny", False)),
        }
        t_size = int(tnode.get("image_size", tparams.get("image_size", 224)))
        tiny = t_spec["tiny"]
        # the encoders' random init depends on pretrain.seed only (part of their cache key), not on
        # what ran before (a cached teacher must give the same student as a freshly trained one)
        torch.manual_seed(int(pc.seed))
        tb = create_backbone(t_spec["backbone"], tiny=tiny, pretrained=tiny, owner="teacher.backbone")
        t_cfg = {**common, "epochs": pc.epochs, "temperature": pc.temperature, "image_size": t_size}
        t_path, t_info = pretrain_teacher_encoder(
            tb, images, spec=t_spec, cfg=t_cfg, aug=aug, cache_dir=cache, device=ctx.device, hooks=ctx.hooks
        )
        tnode = {**tnode, "weights": str(t_path)}
        self.provenance["teacher"] = {**t_info, "data": f"{self.cfg.data.name} train split", "fulcra_pretrained": True}
        self._say(ctx, f"teacher encoder ({'cached' if t_info['cached'] else 'trained'}): {t_path}")
        sparams = _params("students", snode["name"])
        if snode["name"] == "vit_small" and snode.get("tiny") and not snode.get("weights"):
            s_spec = {
                "backbone": snode.get("backbone", sparams.get("backbone")),
                "tiny": True,
                "teacher": t_info["key"],
            }
            torch.manual_seed(int(pc.seed) + 1)
            sb = create_backbone(s_spec["backbone"], tiny=True, pretrained=True, owner="student.backbone")
            tb = create_backbone(t_spec["backbone"], weights=str(t_path), tiny=tiny, owner="teacher.backbone")
            s_cfg = {
                **common,
                "epochs": pc.student_epochs,
                "image_size": int(snode.get("image_size", sparams.get("image_size", 224))),
                "teacher_image_size": t_size,
            }
            s_path, s_info = distill_student_encoder(
                sb, tb, images, spec=s_spec, cfg=s_cfg, aug=aug, cache_dir=cache, device=ctx.device, hooks=ctx.hooks
            )
            snode = {**snode, "weights": str(s_path)}
            self.provenance["student"] = {
                **s_info,
                "data": f"{self.cfg.data.name} train split",
                "fulcra_pretrained": True,
            }
            self._say(ctx, f"student encoder ({'cached' if s_info['cached'] else 'trained'}): {s_path}")
        return tnode, snode

    def _external_provenance(self, who: str, node: dict, has_init: bool) -> dict:
        if node.get("weights"):
            return {"weights": str(node["weights"]), "labels": "as pretrained by the weights' authors", "epochs": None}
        if has_init:
            return {"weights": "looked up in the weight caches", "labels": "as pretrained by the weights' authors"}
        return {"weights": None, "labels": False, "objective": "random initialisation (no pretraining)"}

    # ------------------------------------------------------------------------ hyperparameters
    def _hp(self, ctx, family: str, run_one) -> dict:
        """``{"lr", "weight_decay"}`` of a family: the configured ones, or the grid point with the
        best validation score (first best on ties), ``run_one(hp, tag) -> val score`` trains one."""
        if family in self._hp_cache:
            return self._hp_cache[family]
        probe = family.startswith("probe")
        base = self.cfg.probe if probe else self.cfg.train
        default = {"lr": float(base.lr), "weight_decay": float(base.weight_decay)}
        if family == "student_alone" and self.cfg.train.scratch_lr:
            default["lr"] = float(self.cfg.train.scratch_lr)
        sc = self.cfg.search
        if not sc.enabled:
            self._hp_cache[family] = default
            return default
        path = Path(ctx.out) / "search.json"
        ledger = json.loads(path.read_text()) if path.is_file() else {}
        entry = ledger.get(family, {"grid": []})
        lrs, wds = (sc.probe_lr, sc.probe_weight_decay) if probe else (sc.lr, sc.weight_decay)
        done = {(g["lr"], g["weight_decay"]): g["score"] for g in entry["grid"]}
        for lr, wd in itertools.product([float(v) for v in lrs], [float(v) for v in wds]):
            if (lr, wd) in done:
                continue
            score = float(run_one({"lr": lr, "weight_decay": wd}, f"{family}_lr{lr:g}_wd{wd:g}"))
            done[(lr, wd)] = score
            entry["grid"].append({"lr": lr, "weight_decay": wd, "score": score})
            ledger[family] = entry
            if ctx.is_main:
                atomic_write_text(json.dumps(ledger, indent=1), path)
            dist.barrier()
        best = max(entry["grid"], key=lambda g: g["score"])  # max keeps the first of equal scores
        entry["best"] = {"lr": best["lr"], "weight_decay": best["weight_decay"]}
        ledger[family] = entry
        if ctx.is_main:
            atomic_write_text(json.dumps(ledger, indent=1), path)
        self._say(
            ctx,
            f"search {family} on {sc.split}: lr={best['lr']:g} weight_decay={best['weight_decay']:g} "
            f"({self._metric} {best['score']:.4f})",
        )
        self._hp_cache[family] = entry["best"]
        return entry["best"]

    # --------------------------------------------------------------------------------- main
    def check(self) -> None:
        """Before anything is written (:class:`~fulcra.interfaces.CheckedWorkflow`): the dataset is on
        disk and has the evaluation split, the search does not select on it, the backbones' names,
        keys and weight files resolve, and the loss fits the rows."""
        cfg = self.cfg
        data = self._dataset()
        splits = data.splits()
        if cfg.eval_split not in splits:
            raise ConfigError(
                f"workflows plugin 'distill': eval_split {cfg.eval_split!r} not in the dataset's splits {sorted(splits)}"
            )
        if cfg.search.enabled and cfg.search.split == cfg.eval_split:
            raise ConfigError(
                f"workflows plugin 'distill': search.split {cfg.search.split!r} is the evaluation split; "
                "hyperparameters are never chosen on the split the table reports"
            )
        self._preflight(self._node("teacher"), self._node("student"), list(cfg.rows))
        data_workers(cfg.data_workers, lazy=True, field="workflows plugin 'distill': data_workers")

    def _dataset(self):
        if getattr(self, "_data", None) is None:
            self._data = fulcra.create("datasets", self._node("data"))
        return self._data

    def run(self, ctx) -> dict:
        cfg = self.cfg
        out = Path(ctx.out)
        data = self._dataset()
        splits = data.splits()
        if cfg.eval_split not in splits:
            raise ConfigError(
                f"workflows plugin 'distill': eval_split {cfg.eval_split!r} not in the dataset's splits {sorted(splits)}"
            )
        train, test = splits["train"], splits[cfg.eval_split]
        val = None
        if cfg.search.enabled:
            if cfg.search.split == cfg.eval_split:
                raise ConfigError(
                    f"workflows plugin 'distill': search.split {cfg.search.split!r} is the evaluation split; "
                    "hyperparameters are never chosen on the split the table reports"
                )
            if cfg.search.split in splits:
                val = splits[cfg.search.split]
            else:  # §4.4.1: "where no validation set exists, we allocate 10% of the training set"
                train, val = _hold_out(train, 0.1, seed=0)
        # decoding ahead changes the speed, never the result: not an input of the stage below
        self._workers = data_workers(
            cfg.data_workers, lazy=not _in_memory(train), field="workflows plugin 'distill': data_workers"
        )
        if self._workers:
            self._say(ctx, f"data: {self._workers} worker process(es) decode the coming batches of {len(train)} images")
        task = fulcra.create("tasks", self._node("task"))
        self._metric = task.metric_name
        K = int(data.num_classes)
        tnode, snode = self._node("teacher"), self._node("student")
        rows = list(cfg.rows)
        self._preflight(tnode, snode, rows)
        # one fingerprinted stage over everything but `seeds`, `student_seeds` and `rows` (those only
        # add or drop entries of scores.json): another teacher, student, data, schedule or generator
        # recomputes the run from scratch, and says so
        inputs = {
            k: v
            for k, v in OmegaConf.to_container(cfg, resolve=True).items()
            if k not in ("seeds", "student_seeds", "rows", "plots", "interval", "data_workers")
        }
        stale = [out / "scores.json", out / "results.json", out / "results.md", out / "search.json"]
        stale += [out / "search", out / "feature_cache"]
        stale += sorted(out.glob("seed*")) + ([] if cfg.synthetic.path else [out / "synthetic"])
        stage = Stage(
            out,
            "distill",
            {**inputs, "world_size": ctx.world_size},
            stale,
            ctx.hooks.message if ctx.hooks else None,
            writer=ctx.is_main,
        )
        stage.begin()
        dist.barrier()
        # the synthetic set first: it depends only on the training images, and a generator that
        # cannot load its weights should fail before any training
        needs_syn = any(DISTILL_ROWS.get(r, (None, None))[1] == "synthetic" for r in rows)
        synthetic = self._synthetic(ctx, train) if needs_syn else None
        if cfg.pretrain.enabled:
            tnode, snode = self._pretrain(ctx, train, tnode, snode)
        s_init = self._has_pretrained_init(snode)
        t_init = bool(tnode.get("weights")) or not bool(tnode.get("tiny"))
        self.provenance.setdefault("teacher", self._external_provenance("teacher", tnode, t_init))
        self.provenance.setdefault("student", self._external_provenance("student", snode, s_init))
        for who in ("teacher", "student"):
            p = self.provenance[who]
            self._say(
                ctx,
                f"{who} encoder: {p.get('objective', 'pretrained weights')}; labels seen: {p['labels']}; "
                f"data: {p.get('data', 'unknown (external weights)')}; epochs: {p.get('epochs')}",
            )
        ft_node = self._finetune_node(tnode)
        sp_node = self._student_probe_node(snode, self._node("task").get("name", ""))
        skip = {
            "student_finetuned": None if s_init else f"student '{snode['name']}' has no pretrained initialisation",
            "student_probed": None if sp_node else f"student '{snode['name']}' has no pretrained encoder to probe",
            "teacher_finetuned": None
            if ft_node
            else f"teacher '{tnode['name']}' has no pretrained encoder to finetune (a third party's, or tiny without weights)",
        }
        skip["distilled_from_finetuned"] = skip["distilled_from_finetuned_synthetic"] = skip["teacher_finetuned"]
        for row in list(rows):
            if skip.get(row):
                self._say(ctx, f"{skip[row]}: row {row} skipped")
                rows.remove(row)
        env = {"K": K, "task": task, "train": train, "val": val, "tnode": tnode, "snode": snode}
        env.update({"ft_node": ft_node, "sp_node": sp_node, "synthetic": synthetic})

        scores_path = out / "scores.json"
        scores: dict = json.loads(scores_path.read_text()) if scores_path.is_file() else {}

        def record(key, model, row, seed):
            metrics = evaluate(model, test, task, ctx.device, workers=self._workers)
            scores[key] = float(metrics[task.metric_name])
            self._say(ctx, f"{key} {LABELS[row]}: {task.metric_name} = {scores[key]:.4f}")
            if ctx.hooks is not None:
                ctx.hooks.evaluate(metrics={f"{row}/{task.metric_name}": scores[key], "seed": seed}, stage=row)
            if ctx.is_main:
                atomic_write_text(json.dumps(scores, indent=1), scores_path)
            dist.barrier()

        for seed in cfg.seeds:
            sdir = out / f"seed{seed}"
            teachers: dict = {}

            def teacher(kind, seed=seed, sdir=sdir, teachers=teachers):
                if kind not in teachers:
                    teachers[kind] = (
                        self._probed_teacher(ctx, env, sdir, seed)
                        if kind == "probed"
                        else self._finetuned_teacher(ctx, env, sdir, seed)
                    )
                return teachers[kind]

            for row in rows:
                if row in DISTILL_ROWS:
                    continue
                key = f"{row}/{seed}"
                if key in scores:
                    continue
                if row == "teacher_probed":
                    model = teacher("probed")
                elif row == "teacher_finetuned":
                    model = teacher("finetuned")
                elif row == "student_probed":
                    model = self._probed(ctx, env, sp_node, "probe_student", sdir / "student_probe", seed, "student")
                else:
                    model = self._train_row(ctx, env, row, sdir, seed, None)
                record(key, model, row, seed)
            for s_seed in cfg.student_seeds:
                for row in rows:
                    if row not in DISTILL_ROWS:
                        continue
                    key = f"{row}/{seed}/{s_seed}"
                    if key in scores:
                        continue
                    model = self._train_row(ctx, env, row, sdir, seed, teacher(DISTILL_ROWS[row][0]), s_seed)
                    record(key, model, row, seed)
        results = self._table(ctx, rows, task.metric_name, scores)
        stage.complete()
        if cfg.plots and ctx.is_main:
            try:
                from .plots import distill_pca_plot

                path = distill_pca_plot(self, ctx, tnode, snode, K, test, train, synthetic, rows)
                if path:
                    results["pca_plot"] = str(path)
                    atomic_write_text(json.dumps(results, indent=1), out / "results.json")
            except ImportError as exc:  # matplotlib missing: the table is what matters
                self._say(ctx, f"PCA plot skipped ({exc})")
        return results

    # ---------------------------------------------------------------------------- the runs
    def _probed(self, ctx, env, node, family, sdir, seed, who, train=None):
        """A probed encoder (teacher or the student's), its head trained with the family's hyperparameters."""

        def run_one(hp, tag):
            m = self._probe_once(ctx, env, node, hp, Path(ctx.out) / "search" / tag, self.cfg.seeds[0], who)
            return evaluate(m, env["val"], env["task"], ctx.device, workers=self._workers)[self._metric]

        hp = self._hp(ctx, family, run_one)
        return self._probe_once(ctx, env, node, hp, sdir, seed, who)

    def _probe_once(self, ctx, env, node, hp, sdir, seed, who):
        torch.manual_seed(seed)  # the head's initialisation depends on the seed only
        teacher = self._teacher(node, env["K"]).to(ctx.device)
        head_path = sdir / "teacher_head.pt"
        if head_path.is_file():
            teacher.head.load_state_dict(load_checkpoint(head_path, map_location=ctx.device))
            return teacher.eval()
        info = probe_teacher(
            teacher,
            env["task"],
            env["train"],
            out_dir=sdir,
            cfg=OmegaConf.merge(self.cfg.probe, hp),
            device=ctx.device,
            seed=seed,
            hooks=ctx.hooks,
            cache_root=Path(ctx.out) / "feature_cache" / ("train" if who == "teacher" else f"{who}_train"),
            weights=node.get("weights"),
            workers=self._workers,
        )
        self._say(
            ctx, f"seed {seed}: {who} probed ({'on cached features' if info['cached'] else 're-encoding each batch'})"
        )
        if ctx.is_main:
            atomic_save(teacher.head.state_dict(), head_path)
        dist.barrier()
        return teacher.eval()

    def _probed_teacher(self, ctx, env, sdir, seed):
        return self._probed(ctx, env, env["tnode"], "probe_teacher", sdir, seed, "teacher")

    def _finetuned_teacher(self, ctx, env, sdir, seed):
        model = self._fit(ctx, env, "teacher_finetuned", env["ft_node"], False, sdir / "teacher_finetuned.ckpt", seed)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def _fit(self, ctx, env, family, node, scratch, ckpt, seed, teacher=None, extra=None, teacher_for_search=None):
        """Train one student-like model of ``family`` (hyperparameters from the search when enabled)."""

        def run_one(hp, tag):
            m = self._fit_once(
                ctx, env, node, scratch, Path(ctx.out) / "search" / f"{tag}.ckpt", self.cfg.seeds[0], hp,
                teacher_for_search() if teacher_for_search else None, None, family,
            )  # fmt: skip
            return evaluate(m, env["val"], env["task"], ctx.device, workers=self._workers)[self._metric]

        hp = self._hp(ctx, family, run_one)
        return self._fit_once(ctx, env, node, scratch, ckpt, seed, hp, teacher, extra, family)

    def _fit_once(self, ctx, env, node, scratch, ckpt, seed, hp, teacher, extra, stage):
        torch.manual_seed(seed)  # the student's (head) initialisation depends on the seed only
        student = self._student(node, env["K"], scratch=scratch)
        return train_student(
            student,
            env["task"],
            env["train"],
            ckpt_path=ckpt,
            cfg=OmegaConf.merge(self.cfg.train, hp),
            device=ctx.device,
            seed=seed,
            teacher=teacher,
            distill_cfg=self.cfg.distill,
            synthetic=extra,
            hooks=ctx.hooks,
            stage=stage,
            workers=self._workers,
        )

    def _train_row(self, ctx, env, row, sdir, seed, teacher, s_seed: int = 0):
        snode = env["snode"]
        if row not in DISTILL_ROWS:
            return self._fit(ctx, env, row, snode, row == "student_alone", sdir / f"{row}.ckpt", seed)
        kind, extra = DISTILL_ROWS[row]
        images = {"synthetic": env["synthetic"], "real": _all_images(env["train"]) if extra == "real" else None}
        first = self.cfg.seeds[0]
        fdir = Path(ctx.out) / f"seed{first}"

        def search_teacher():  # the first seed's teacher: trained on train only, never on val
            if kind == "probed":
                return self._probed_teacher(ctx, env, fdir, first)
            return self._finetuned_teacher(ctx, env, fdir, first)

        return self._fit(
            ctx,
            env,
            FAMILY[row],
            snode,
            False,
            sdir / (f"{row}.ckpt" if s_seed == 0 else f"{row}_s{s_seed}.ckpt"),
            seed + 1000 * int(s_seed),
            teacher=teacher,
            extra=images.get(extra) if extra else None,
            teacher_for_search=search_teacher,
        )

    def load_row_model(self, ctx, row: str, snode: dict, K: int, seed: int):
        """Rebuild the trained student of ``row``/``seed`` (first student seed) from its checkpoint (or None)."""
        path = Path(ctx.out) / f"seed{seed}" / f"{row}.ckpt"
        if not path.is_file():
            return None
        student = self._student(snode, K, scratch=row == "student_alone")
        sd = load_checkpoint(path, map_location="cpu")["model"]
        if any(k.startswith("embed.") for k in sd):  # trained with CRD's embedding heads beside it
            sd = {k[len("student.") :]: v for k, v in sd.items() if k.startswith("student.")}
        student.load_state_dict(sd)
        return student.to(ctx.device).eval()

    def _synthetic(self, ctx, train):
        from ..generators import build_synthetic_set

        sc = self.cfg.synthetic
        gnode = self._node("generator")
        gen = fulcra.create("generators", gnode)
        n = max(1, int(round(sc.factor * len(train))))
        root = Path(sc.path).expanduser() if sc.path else ctx.out / "synthetic"
        images = _all_images(train)
        self._say(
            ctx,
            f"synthetic set: {n} images from generator '{gnode['name']}' (mixing {getattr(gen, 'mix_k', 2)} images each) in {root}",
        )
        total = -(-n // sc.batch_size)

        def progress(done, tot):
            if ctx.hooks is not None:
                ctx.hooks.step(step=done, metrics={}, total=tot, stage="generate")

        return build_synthetic_set(
            gen,
            images,
            n,
            root,
            seed=sc.seed,
            batch_size=sc.batch_size,
            device=ctx.device,
            progress=progress if total > 1 else None,
            # the whole generator node (model, steps, guidance, alpha, ...): changing any of it
            # regenerates the set instead of reusing stale images
            config={"generator": gnode},
        )

    # ------------------------------------------------------------------------------- report
    def _row_scores(self, row: str, scores: dict) -> tuple[list, list]:
        if row in DISTILL_ROWS:
            keys = [f"{row}/{t}/{s}" for t in self.cfg.seeds for s in self.cfg.student_seeds]
        else:
            keys = [f"{row}/{t}" for t in self.cfg.seeds]
        keys = [k for k in keys if k in scores]
        return [scores[k] for k in keys], [k.split("/", 1)[1] for k in keys]

    def _table(self, ctx, rows, metric, scores) -> dict:
        results: dict = {
            "metric": metric,
            "seeds": list(self.cfg.seeds),
            "student_seeds": list(self.cfg.student_seeds),
            "interval": str(self.cfg.interval),
            "encoders": self.provenance,
            "rows": {},
        }
        shown = "1.96σ over runs" if self.cfg.interval == "sd196" else "95% Student-t CI of the mean"
        lines = [f"| configuration | {metric} (mean ± {shown}) | runs | per run |", "|---|---|---|---|"]
        for row in rows:
            vals, runs = self._row_scores(row, scores)
            if not vals:
                continue
            stats = mean_ci(vals)
            n = stats["n"]
            sd = (sum((v - stats["mean"]) ** 2 for v in vals) / (n - 1)) ** 0.5 if n > 1 else 0.0
            results["rows"][row] = {
                "label": LABELS[row],
                "scores": vals,
                "runs": runs,
                "mean": stats["mean"],
                "sd196": 1.96 * sd,
                "ci95": stats["ci95"],
                "n": n,
            }
            spread = results["rows"][row]["sd196" if self.cfg.interval == "sd196" else "ci95"]
            cell = f"{100 * stats['mean']:.2f} ± " + (f"{100 * spread:.2f}" if n > 1 else "n/a")
            per = ", ".join(f"{100 * v:.2f}" for v in vals)
            lines.append(f"| {LABELS[row]} | {cell} | {n} | {per} |")
        if self.cfg.search.enabled:
            path = Path(ctx.out) / "search.json"
            results["search"] = json.loads(path.read_text()) if path.is_file() else {}
        results["orderings"] = _orderings(results["rows"])
        enc = []
        for who, p in self.provenance.items():
            enc.append(
                f"- {who} encoder: {p.get('objective', 'pretrained weights')}; labels seen: {p['labels']}; "
                f"data: {p.get('data', 'unknown (external weights)')} ({p.get('images', '?')} images); "
                f"epochs: {p.get('epochs')}; weights: {p.get('weights')}"
            )
        order = []
        for o in results["orderings"]:
            verdict = "holds" if o["holds"] else "does NOT hold"
            order.append(f"- {o['claim']}: {verdict} ({100 * o['lhs']:.2f} vs {100 * o['rhs']:.2f})")
        table = "\n".join(lines + [""] + enc + ([""] + order if order else []))
        results["table"] = table
        if ctx.is_main:
            atomic_write_text(json.dumps(results, indent=1, default=str), Path(ctx.out) / "results.json")
            atomic_write_text(table + "\n", Path(ctx.out) / "results.md")
            print(table, flush=True)
        return results


def _orderings(rows: dict) -> list:
    """The thesis's two claims, on the means: distillation from the probed teacher >= from the
    finetuned one (5 vs 6), and distilled >= student finetuned (5 vs 1b)."""
    out = []
    for lhs, rhs, claim in (
        ("distilled", "distilled_from_finetuned", "distilled from probed teacher >= from finetuned teacher (5a vs 6a)"),
        (
            "distilled_synthetic",
            "distilled_from_finetuned_synthetic",
            "distilled from probed teacher >= from finetuned teacher, + synthetic (5b vs 6b)",
        ),
        ("distilled", "student_finetuned", "distilled >= student finetuned (5a vs 1b)"),
    ):
        if lhs in rows and rhs in rows:
            a, b = rows[lhs]["mean"], rows[rhs]["mean"]
            out.append({"claim": claim, "lhs": a, "rhs": b, "holds": bool(a >= b)})
    return out


def _params(kind: str, name: str) -> dict:
    from fulcra.config import plugin_params

    return {p.name: p.default for p in plugin_params(fulcra.load_plugin(kind, name))}


class _Subset(torch.utils.data.Dataset):
    def __init__(self, ds, idx: list):
        self.ds, self.idx = ds, list(idx)

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def labels(self) -> Optional[torch.Tensor]:
        """The base dataset's labels of these items when it holds them as a tensor (else None)."""
        base = getattr(self.ds, "labels", None)
        return base[torch.as_tensor(self.idx, dtype=torch.int64)] if isinstance(base, torch.Tensor) else None

    def __getitem__(self, i: int):
        return self.ds[self.idx[i]]

    def get_batch(self, indices):
        from fulcra.engine import collate_batch

        return collate_batch(self.ds, [self.idx[i] for i in indices])


def _hold_out(ds, fraction: float, seed: int):
    """A deterministic (train, val) split of ``ds``: ``fraction`` of it for validation."""
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(fraction * n)))
    return _Subset(ds, sorted(perm[k:])), _Subset(ds, sorted(perm[:k]))


def _all_images(ds, workers: int = 0) -> Any:
    """The images of ``ds`` indexed like a uint8 ``[N, 3, H, W]`` tensor: its own ``images`` tensor
    when it holds one in memory, else a :class:`fulcra.engine.DatasetImages` view that decodes what
    is drawn (a synthetic set's sources, a distillation batch), never the whole set at once; loops
    over the view decode ahead with ``workers`` processes."""
    if hasattr(ds, "images") and isinstance(ds.images, torch.Tensor):
        return ds.images
    return DatasetImages(ds, workers=workers)


def _in_memory(ds) -> bool:
    """Whether ``ds`` (or the dataset a held-out split was taken from) holds its images as a tensor."""
    while isinstance(ds, _Subset):
        ds = ds.ds
    return isinstance(getattr(ds, "images", None), torch.Tensor)
