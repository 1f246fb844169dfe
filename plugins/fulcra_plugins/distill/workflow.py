"""The ``distill`` workflow: probe -> (generate) -> distill -> evaluate over seeds (thesis ch. 4).

For every seed it trains and scores the table's rows:

==================== ==========================================================================
``teacher_probed``    frozen encoder + probed head (Table 4.1 "probing")
``student_alone``     the student from scratch on the task loss (Table 4.3 row 8a)
``student_finetuned`` the student from its pretrained initialisation on the task loss (row 1b)
``distilled``         ``(1 − α)·task + α·T²·KL`` from the probed teacher (rows 4a-7a, 9a)
``distilled_synthetic`` the same with synthetic images in the distillation term (rows 4b-7b, 9b)
==================== ==========================================================================

and writes ``OUT/results.json`` (per row: per-seed scores, mean, 1.96σ, 95% CI of the mean), ``OUT/results.md`` and the
PCA plot of Fig. 4.1 / 4.4 (``OUT/pca.png``). Every stage is checkpointed under ``OUT``; running the
same command again after a kill resumes where it stopped (finished rows are read back from
``OUT/scores.json``). Under ``torchrun`` the Trainer uses DDP, the feature cache and the synthetic
set are built in shards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

import fulcra
from fulcra.backbone import check_backbone_ref, create_backbone, locate_backbone_weights
from fulcra.engine import Stage, atomic_save, atomic_write_text, dist, format_mean_ci, load_checkpoint, mean_ci
from fulcra.errors import ConfigError

from .training import evaluate, probe_teacher, train_student

log = logging.getLogger(__name__)

__all__ = ["DistillWorkflow", "ROWS"]

ROWS = ("teacher_probed", "student_alone", "student_finetuned", "distilled", "distilled_synthetic")
LABELS = {
    "teacher_probed": "probed teacher",
    "student_alone": "student alone (scratch)",
    "student_finetuned": "student finetuned",
    "distilled": "distilled student",
    "distilled_synthetic": "distilled student + synthetic",
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
    loss: str = field(default="kd", metadata={"help": "kd (Hinton), hard (hard-label KD) or dkd (Table B.9)"})


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
        default=False, metadata={"help": "pre-train the (tiny) teacher and student encoders here: offline demo only"}
    )
    epochs: int = field(default=20, metadata={"help": "teacher encoder pre-training epochs"})
    student_epochs: int = field(
        default=5, metadata={"help": "student encoder pre-training epochs (its stand-in for generic pre-training)"}
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})


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
        default_factory=lambda: [0, 1, 2], metadata={"help": "one teacher and one of each student per seed"}
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
    eval_split: str = field(default="test", metadata={"help": "split the table is scored on"})
    plots: bool = field(default=True, metadata={"help": "write the PCA feature plot (needs matplotlib)"})
    keep_checkpoints: bool = field(
        default=True, metadata={"help": "keep per-row checkpoints after scoring (needed for plots on resume)"}
    )


class DistillWorkflow:
    """Task-specific distillation of a probed foundation model into a small student (thesis ch. 4).

    probe the teacher's head on the frozen encoder (feature cache when deterministic) -> build the
    synthetic set (ImageMixer, Mixup or CutMix; resumable) -> train each student row -> score them
    over ``seeds`` with mean ± 1.96σ (as Tables B.4-B.6). See docs/distill.md.
    """

    Config = DistillConfig

    def __init__(self, config: Any):
        self.cfg = config
        bad = [r for r in config.rows if r not in ROWS]
        if bad:
            raise ConfigError(f"workflows plugin 'distill': unknown row {bad[0]!r} (rows: {', '.join(ROWS)})")
        if not config.seeds:
            raise ConfigError("workflows plugin 'distill': seeds is empty")

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

    def _preflight(self, tnode: dict, snode: dict, rows: list) -> None:
        """Fail before any work when a backbone's name, keys or weight file are wrong (nothing is loaded
        here), or when the distillation loss cannot use the synthetic images."""
        if "distilled_synthetic" in rows and str(self.cfg.distill.loss) == "dkd":
            raise ConfigError(
                "distill: row distilled_synthetic with distill.loss=dkd: DKD needs class labels and "
                "synthetic images have none; use distill.loss=kd or hard, or drop the row"
            )
        params = _params("students", snode["name"])
        if "backbone" in tnode:
            check_backbone_ref(tnode["backbone"], owner="teacher.backbone")
        if "backbone" in params:
            check_backbone_ref(snode.get("backbone", params["backbone"]), owner="student.backbone")
        if self.cfg.pretrain.enabled:
            return  # the tiny encoders' weights are produced by the pre-training
        if any(r in rows for r in ("teacher_probed", "distilled", "distilled_synthetic")) and "backbone" in tnode:
            if not tnode.get("tiny") or tnode.get("weights"):
                locate_backbone_weights(tnode["backbone"], tnode.get("weights"), owner="teacher.backbone")
        if "backbone" in params and any(r in rows for r in ("student_finetuned", "distilled", "distilled_synthetic")):
            pretrained = bool(snode.get("pretrained", params.get("pretrained", True)))
            if pretrained and (not snode.get("tiny") or snode.get("weights")):
                locate_backbone_weights(
                    snode.get("backbone", params["backbone"]), snode.get("weights"), owner="student.backbone"
                )

    # --------------------------------------------------------------------------- pretraining
    def _pretrain(self, ctx, train, num_classes: int, tnode: dict, snode: dict) -> tuple[dict, dict]:
        """Offline stand-in for foundation-model weights: supervised pre-training of tiny encoders."""
        from .training import train_student as _train

        pc = self.cfg.pretrain
        out = ctx.out / "pretrain"
        jobs = [("teacher", tnode, pc.epochs)]
        if snode["name"] == "vit_small" and snode.get("tiny") and not snode.get("weights"):
            jobs.append(("student", snode, pc.student_epochs))
        self._say(
            ctx,
            "no foundation-model weights offline: pre-training a small teacher encoder on the training split "
            "first (a stand-in for DINOv2; real runs set teacher.weights=PATH)",
        )
        for who, node, epochs in jobs:
            path = out / f"{who}_encoder.safetensors"
            if not path.is_file():
                tiny = bool(node.get("tiny"))
                # a tiny backbone without weights is random already: only a full-size one is asked
                # for pretrained=False (a backbone plugin may not declare that key)
                bb = create_backbone(
                    node.get("backbone", "dinov2_vits14"), tiny=tiny, pretrained=tiny, owner=f"{who}.backbone"
                )
                net = _PretrainNet(bb, num_classes, int(node.get("image_size", 56)))
                tc = self.cfg.train  # same augmentation as the students (digits: no flips)
                cfg = TrainConfig(
                    epochs=epochs,
                    batch_size=pc.batch_size,
                    lr=pc.lr,
                    weight_decay=0.05,
                    mixup=0.0,
                    warmup_epochs=1.0,
                    augment=tc.augment,
                    crop_scale=tc.crop_scale,
                    flip=tc.flip,
                    jitter=tc.jitter,
                )
                _train(
                    net,
                    fulcra.create("tasks", "classification"),
                    train,
                    ckpt_path=out / f"{who}.ckpt",
                    cfg=cfg,
                    device=ctx.device,
                    seed=ctx.seed,
                    hooks=ctx.hooks,
                    stage=f"pretrain_{who}",
                )
                if ctx.is_main:
                    from safetensors.torch import save_file

                    tmp = path.with_suffix(".tmp")
                    save_file(
                        {k: v.detach().cpu().contiguous() for k, v in net.backbone.state_dict().items()}, str(tmp)
                    )
                    tmp.replace(path)
                dist.barrier()
            node["weights"] = str(path)
            self._say(ctx, f"{who} encoder weights: {path}")
        return tnode, snode

    # --------------------------------------------------------------------------------- main
    def run(self, ctx) -> dict:
        cfg = self.cfg
        out = Path(ctx.out)
        data = fulcra.create("datasets", self._node("data"))
        splits = data.splits()
        if cfg.eval_split not in splits:
            raise ConfigError(
                f"workflows plugin 'distill': eval_split {cfg.eval_split!r} not in the dataset's splits {sorted(splits)}"
            )
        train, test = splits["train"], splits[cfg.eval_split]
        task = fulcra.create("tasks", self._node("task"))
        K = int(data.num_classes)
        tnode, snode = self._node("teacher"), self._node("student")
        rows = list(cfg.rows)
        self._preflight(tnode, snode, rows)
        # one fingerprinted stage over everything but `seeds` and `rows` (those only add or drop
        # entries of scores.json): another teacher, student, data, schedule or generator recomputes
        # the run from scratch, and says so
        inputs = {
            k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("seeds", "rows", "plots")
        }
        stale = [out / "scores.json", out / "results.json", out / "results.md", out / "pretrain", out / "feature_cache"]
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
        synthetic = self._synthetic(ctx, train) if "distilled_synthetic" in rows else None
        if cfg.pretrain.enabled:
            tnode, snode = self._pretrain(ctx, train, K, tnode, snode)
        if "student_finetuned" in rows and not self._has_pretrained_init(snode):
            self._say(ctx, f"student '{snode['name']}' has no pretrained initialisation: row student_finetuned skipped")
            rows.remove("student_finetuned")

        scores_path = out / "scores.json"
        scores: dict = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
        for seed in cfg.seeds:
            sdir = out / f"seed{seed}"
            teacher = None
            need_teacher = any(r in rows for r in ("teacher_probed", "distilled", "distilled_synthetic"))
            if need_teacher and not all(
                f"{r}/{seed}" in scores for r in rows if r != "student_alone" and r != "student_finetuned"
            ):
                teacher = self._probed_teacher(ctx, tnode, K, task, train, sdir, seed)
            for row in rows:
                key = f"{row}/{seed}"
                if key in scores:
                    continue
                model = (
                    teacher
                    if row == "teacher_probed"
                    else self._train_row(ctx, row, snode, K, task, train, sdir, seed, teacher, synthetic)
                )
                metrics = evaluate(model, test, task, ctx.device)
                scores[key] = float(metrics[task.metric_name])
                self._say(ctx, f"seed {seed} {LABELS[row]}: {task.metric_name} = {scores[key]:.4f}")
                if ctx.hooks is not None:
                    ctx.hooks.evaluate(metrics={f"{row}/{task.metric_name}": scores[key], "seed": seed}, stage=row)
                if ctx.is_main:
                    atomic_write_text(json.dumps(scores, indent=1), scores_path)
                dist.barrier()
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

    def _probed_teacher(self, ctx, tnode, K, task, train, sdir, seed):
        torch.manual_seed(seed)  # the head's initialisation depends on the seed only
        teacher = self._teacher(tnode, K).to(ctx.device)
        head_path = sdir / "teacher_head.pt"
        if head_path.is_file():
            teacher.head.load_state_dict(load_checkpoint(head_path, map_location=ctx.device))
            return teacher.eval()
        info = probe_teacher(
            teacher,
            task,
            train,
            out_dir=sdir,
            cfg=self.cfg.probe,
            device=ctx.device,
            seed=seed,
            hooks=ctx.hooks,
            cache_root=ctx.out / "feature_cache" / "train",
            weights=tnode.get("weights"),
        )
        self._say(
            ctx, f"seed {seed}: teacher probed ({'on cached features' if info['cached'] else 're-encoding each batch'})"
        )
        if ctx.is_main:
            atomic_save(teacher.head.state_dict(), head_path)
        dist.barrier()
        return teacher.eval()

    def _train_row(self, ctx, row, snode, K, task, train, sdir, seed, teacher, synthetic):
        scratch = row == "student_alone"
        torch.manual_seed(seed)  # the student's (head) initialisation depends on the seed only
        student = self._student(snode, K, scratch=scratch)
        tcfg = self.cfg.train
        if scratch and tcfg.scratch_lr:
            tcfg = OmegaConf.merge(tcfg, {"lr": tcfg.scratch_lr})
        distilling = row.startswith("distilled")
        return train_student(
            student,
            task,
            train,
            ckpt_path=sdir / f"{row}.ckpt",
            cfg=tcfg,
            device=ctx.device,
            seed=seed,
            teacher=teacher if distilling else None,
            distill_cfg=self.cfg.distill,
            synthetic=synthetic if row == "distilled_synthetic" else None,
            hooks=ctx.hooks,
            stage=row,
        )

    def load_row_model(self, ctx, row: str, snode: dict, K: int, seed: int):
        """Rebuild the trained student of ``row``/``seed`` from its checkpoint (or None)."""
        path = Path(ctx.out) / f"seed{seed}" / f"{row}.ckpt"
        if not path.is_file():
            return None
        student = self._student(snode, K, scratch=row == "student_alone")
        student.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])
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

    def _table(self, ctx, rows, metric, scores) -> dict:
        results: dict = {"metric": metric, "seeds": list(self.cfg.seeds), "rows": {}}
        # the thesis's distillation tables (B.4-B.6) report mean ± 1.96σ over runs; the Student-t
        # interval of the mean is kept beside it in results.json
        lines = [f"| configuration | {metric} (mean ± 1.96σ over seeds) | per seed |", "|---|---|---|"]
        for row in rows:
            vals = [scores[f"{row}/{s}"] for s in self.cfg.seeds if f"{row}/{s}" in scores]
            if not vals:
                continue
            stats = mean_ci(vals)
            n = stats["n"]
            sd = (sum((v - stats["mean"]) ** 2 for v in vals) / (n - 1)) ** 0.5 if n > 1 else 0.0
            results["rows"][row] = {
                "label": LABELS[row],
                "scores": vals,
                "mean": stats["mean"],
                "sd196": 1.96 * sd,
                "ci95": stats["ci95"],
                "n": n,
            }
            spread = format_mean_ci({"mean": stats["mean"], "ci95": 1.96 * sd, "n": n})
            lines.append(f"| {LABELS[row]} | {spread} | " + ", ".join(f"{100 * v:.2f}" for v in vals) + " |")
        table = "\n".join(lines)
        results["table"] = table
        if ctx.is_main:
            atomic_write_text(json.dumps(results, indent=1), Path(ctx.out) / "results.json")
            atomic_write_text(table + "\n", Path(ctx.out) / "results.md")
            print(table, flush=True)
        return results


class _PretrainNet(torch.nn.Module):
    """Backbone + linear classifier on the last CLS token (offline encoder pre-training)."""

    def __init__(self, backbone, num_classes: int, image_size: int):
        super().__init__()
        self.backbone = backbone
        self.fc = torch.nn.Linear(int(backbone.embed_dim), num_classes)
        self.image_size = image_size

    def prepare(self, images):
        from ._common import InputSpec

        return InputSpec.prepare(self, images)

    def normalize_resized(self, images):
        return self.backbone.normalize(images)

    def forward(self, x):
        return self.fc(self.backbone.forward_tokens(x)["cls"][-1])


def _params(kind: str, name: str) -> dict:
    from fulcra.config import plugin_params

    return {p.name: p.default for p in plugin_params(fulcra.load_plugin(kind, name))}


def _all_images(ds) -> torch.Tensor:
    if hasattr(ds, "images") and isinstance(ds.images, torch.Tensor):
        return ds.images
    from fulcra.engine import collate_batch

    return torch.cat([collate_batch(ds, list(range(i, min(len(ds), i + 256))))[0] for i in range(0, len(ds), 256)])
