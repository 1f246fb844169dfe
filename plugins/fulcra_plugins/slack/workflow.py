"""The ``search`` workflow: SLACK search, then evaluation from scratch beside the baselines.

Outputs under ``out``:

* ``policy.json`` (ops, probs, mu, ranges), ``policy.png`` (pie chart, Fig. 3.3),
  ``policy_evolution.png`` (π over the search, Fig. A.1);
* ``results.json``: per method ``{"values" (per-seed test accuracies), "mean", "ci95", "n", "seeds"}``,
  and ``results.md``, the same as a table;
* ``search/`` checkpoints and ``eval/`` per-seed results, from which a killed run resumes.

Each stage (the search, each method's evaluation) is fingerprinted (:class:`fulcra.engine.Stage`):
a rerun into the same ``out=`` reuses a stage only when its config is unchanged, recomputes it
otherwise, and says which in one line. Changing ``eval_seeds`` only adds or drops seeds: finished
seeds are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import fulcra
from fulcra.engine import Stage, atomic_write_text, data_workers, format_mean_ci, over_seeds
from fulcra.errors import ConfigError, DataNotFoundError

from .common import TensorSplit, as_tensors, center_crops, evaluate, take, train_with_policy
from .plots import plot_evolution, plot_pie

__all__ = ["SearchWorkflow"]


def _in_memory(value) -> bool | str:
    v = str(value).strip().lower()
    if v in ("auto", "true", "false"):
        return "auto" if v == "auto" else v == "true"
    raise ConfigError(f"workflows plugin 'slack': data_in_memory must be auto, true or false, got {value!r}")


def _node(x):
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _label(node) -> str:
    node = _node(node)
    if isinstance(node, str):
        return node
    name = node["name"]
    if name == "trivialaugment":
        label = f"trivialaugment_{node.get('variant', 'wide')}"
    elif name == "randaugment":
        label = "randaugment"
    else:
        return name
    defaults = node.get("defaults", "none")
    return label if defaults == "none" else f"{label}_{defaults}"


def _search_node(cfg) -> Any:
    """The optimizer node, with the workflow's ``flip`` / ``cutout_last`` given to a ``slack``
    search that does not set its own, so that search and evaluation augment alike."""
    node = _node(cfg.optimizer)
    if isinstance(node, str):
        node = {"name": node}
    node = dict(node)
    if node.get("name") == "slack":
        node.setdefault("flip", bool(cfg.flip))
        node.setdefault("cutout_last", bool(cfg.cutout_last))
        if int(cfg.train_crop) > 0:
            node.setdefault("train_crop", int(cfg.train_crop))
    return node


class SearchWorkflow:
    """SLACK end to end: split the training data 0.5/0.5, search a policy, train from scratch with it
    and with each baseline over seeds, report test accuracy as mean ± 95% CI in one table."""

    @dataclass
    class Config:
        data: Any = field(
            default_factory=lambda: {"name": "digits"},
            metadata={"kind": "datasets", "help": "dataset (train split searched and trained on, test split scored)"},
        )
        model: Any = field(
            default_factory=lambda: {"name": "small_cnn"},
            metadata={
                "kind": "students",
                "help": "network used for search and evaluation (num_classes is set from the data)",
            },
        )
        optimizer: Any = field(
            default_factory=lambda: {"name": "slack"},
            metadata={"kind": "policy_optimizers", "help": "the policy search (slack, or a baseline)"},
        )
        baselines: list = field(
            default_factory=lambda: ["uniform", "trivialaugment", "randaugment"],
            metadata={"help": "policy_optimizers evaluated beside the found policy (names or nodes)"},
        )
        search_val_fraction: float = field(
            default=0.5, metadata={"help": "fraction of the training split used as D_val by the search"}
        )
        data_in_memory: str = field(
            default="auto",
            metadata={
                "help": "auto | true | false: read an image-file dataset into memory once (auto: when its "
                "images take at most 8 GiB and 40 percent of the machine's memory), or decode batches as they are "
                "drawn; the results are the same bytes either way"
            },
        )
        data_workers: Any = field(
            default="auto",
            metadata={
                "help": "auto | N: worker processes that decode an image-file dataset, as it is read in or, "
                "kept out of memory, the coming batches (auto: min(8, cpus - 1)); the results are the same bytes"
            },
        )
        eval_seeds: int = field(default=4, metadata={"help": "independent trainings from scratch per method", "min": 1})
        eval_epochs: float = field(default=200.0, metadata={"help": "epochs of each evaluation training", "min": 0})
        eval_batch_size: int = field(default=128, metadata={"help": "evaluation batch size"})
        eval_lr: float = field(default=0.1, metadata={"help": "evaluation SGD learning rate (cosine schedule)"})
        eval_weight_decay: float = field(default=5e-4, metadata={"help": "evaluation weight decay"})
        eval_nesterov: bool = field(
            default=True,
            metadata={
                "help": "Nesterov momentum in the evaluation training (the official configs: false; the thesis "
                "does not say; the digits recipe keeps true)"
            },
        )
        eval_warmup_epochs: float = field(
            default=0.0,
            metadata={"help": "linear warm-up epochs before the cosine schedule (official ImageNet-100: 5)", "min": 0},
        )
        flip: bool = field(
            default=False,
            metadata={
                "help": "random horizontal flip after the policy, in the evaluation training and in a slack search "
                "whose optimizer node does not set its own (the method: True for its natural-image benchmarks; "
                "False, the default, for digits)"
            },
        )
        cutout_last: bool = field(
            default=True,
            metadata={
                "help": "a sampled Cutout is applied last, after flip and normalisation, with the training mean "
                "as fill (the official code), in evaluation and in a slack search that does not set its own"
            },
        )
        train_crop: int = field(
            default=0,
            metadata={
                "help": "random train_crop x train_crop window of each training image first, at every step of the "
                "search and of the evaluation training; the search's validation images are centre-cropped to it "
                "(Table A.3: R(256)+RC(224) for ImageNet-100 and DomainNet, with data.train_size=256; 0: off)",
                "min": 0,
            },
        )
        include_no_augmentation: bool = field(
            default=True, metadata={"help": "also evaluate training without augmentation"}
        )
        policy: str = field(
            default="",
            metadata={
                "help": "evaluate this policy instead of searching one: a policy.json or an official SLACK "
                ".ckpt (read by fulcra.Policy.from_official); the optimizer is not run"
            },
        )

    def __init__(self, config):
        self.cfg = config

    def check(self) -> None:
        """Before anything is written: the search and baseline optimizers build (their ops exist,
        their ranges name ops of the space) and the dataset is on disk."""
        if self.cfg.policy:
            _given_policy(self.cfg.policy)
        else:
            fulcra.create("policy_optimizers", _search_node(self.cfg))
        for b in self.cfg.baselines:
            fulcra.create("policy_optimizers", _node(b))
        _in_memory(self.cfg.data_in_memory)
        data_workers(self.cfg.data_workers, lazy=True, field="workflows plugin 'slack': data_workers")
        fulcra.create("datasets", _node(self.cfg.data))

    def run(self, ctx) -> dict:
        cfg = self.cfg
        out = Path(ctx.out)
        out.mkdir(parents=True, exist_ok=True)
        device = torch.device(ctx.device)
        data = fulcra.create("datasets", _node(cfg.data))
        splits = data.splits()
        in_memory = _in_memory(cfg.data_in_memory)
        # image files are decoded by the workers whether they are read in once or drawn as they go
        n_workers = data_workers(cfg.data_workers, lazy=True, field="workflows plugin 'slack': data_workers")
        Xtr, Ytr = as_tensors(splits["train"], in_memory, n_workers)
        Xte, Yte = as_tensors(splits["test"], in_memory, n_workers)
        if not isinstance(Xtr, torch.Tensor):
            ctx.hooks.message(
                f"data: {len(Xtr)} training images decoded as drawn (data_in_memory={cfg.data_in_memory}), "
                f"{n_workers} decoding worker{'s' if n_workers != 1 else ''} ahead of the steps"
            )
        num_classes = int(data.num_classes)
        model_node = _node(cfg.model)
        model_node = {"name": model_node} if isinstance(model_node, str) else dict(model_node)
        model_node["num_classes"] = num_classes

        def factory():
            return fulcra.create("students", dict(model_node))

        # D_train / D_val of the search: a seeded 0.5/0.5 split of the training split
        perm = torch.randperm(Xtr.shape[0], generator=torch.Generator().manual_seed(int(ctx.seed) + 17))
        n_val = int(round(cfg.search_val_fraction * Xtr.shape[0]))
        # the validation images are pre-processed as the test images (Table A.3: the centre crop)
        x_val = take(Xtr, perm[:n_val])
        x_val = x_val if int(cfg.train_crop) <= 0 else center_crops(x_val, int(cfg.train_crop))
        d_val = TensorSplit(x_val, Ytr[perm[:n_val]])
        d_train = TensorSplit(take(Xtr, perm[n_val:]), Ytr[perm[n_val:]])

        # --- search --------------------------------------------------------------------------------
        opt_node = _search_node(cfg)
        policy_path = out / "policy.json"
        done_flag = out / "search" / "DONE"
        common = {
            "data": _node(cfg.data),
            "model": model_node,
            "seed": int(ctx.seed),
            "search_val_fraction": float(cfg.search_val_fraction),
        }
        if cfg.policy:
            # a given policy (policy.json or an official checkpoint) replaces the search
            policy = _given_policy(cfg.policy)
            opt_node = {"name": "policy"}
            if ctx.rank == 0:
                policy.save(policy_path)
                plot_pie(policy, out / "policy.png")
            ctx.hooks.message(f"search: skipped, evaluating the given policy {cfg.policy}")
            return self._evaluate(
                ctx,
                cfg,
                out,
                device,
                factory,
                policy,
                opt_node,
                policy_path,
                common,
                Xtr,
                Ytr,
                Xte,
                Yte,
                d_train,
                d_val,
            )
        searcher = fulcra.create("policy_optimizers", opt_node)
        search_stage = Stage(
            out,
            "search",
            {**common, "optimizer": opt_node, "world_size": int(ctx.world_size)},
            [out / "search", policy_path, out / "policy.png", out / "policy_evolution.png"],
            ctx.hooks.message,
            writer=ctx.rank == 0,
        )
        if not search_stage.begin() and done_flag.is_file() and policy_path.is_file():
            policy = fulcra.Policy.load(policy_path)
            history = (
                json.loads((out / "search" / "history.json").read_text())
                if (out / "search" / "history.json").is_file()
                else None
            )
        else:
            if ctx.world_size > 1:
                torch.distributed.barrier()  # rank 0 has cleared stale search state
            policy = searcher.search(d_train, d_val, factory, ctx)
            history = getattr(searcher, "history", None)
            if ctx.rank == 0:
                policy.save(policy_path)
                plot_pie(policy, out / "policy.png")
                if history:
                    atomic_write_text(json.dumps(history), out / "search" / "history.json")
                    plot_evolution(policy, history, out / "policy_evolution.png")
                (out / "search").mkdir(exist_ok=True)
                done_flag.write_text("search finished\n")
                search_stage.complete()

        return self._evaluate(
            ctx, cfg, out, device, factory, policy, opt_node, policy_path, common, Xtr, Ytr, Xte, Yte, d_train, d_val
        )

    def _evaluate(
        self, ctx, cfg, out, device, factory, policy, opt_node, policy_path, common, Xtr, Ytr, Xte, Yte, d_train, d_val
    ) -> dict:
        # --- evaluation from scratch over seeds ----------------------------------------------------
        if ctx.world_size > 1 and ctx.rank != 0:
            # under torchrun the processes ensemble the search only; rank 0 evaluates (independent
            # trainings, one result file per method)
            return {"policy": str(policy_path)}
        methods: dict[str, Any] = {_label(opt_node): policy}
        for b in cfg.baselines:
            node = _node(b)
            methods[_label(node)] = fulcra.create("policy_optimizers", node).search(d_train, d_val, factory, ctx)
        if cfg.include_no_augmentation:
            methods["none"] = None
        steps = max(1, int(round(cfg.eval_epochs * Xtr.shape[0] / min(cfg.eval_batch_size, Xtr.shape[0]))))
        results = {}
        (out / "eval").mkdir(exist_ok=True)
        seeds = [int(ctx.seed) * 100 + s for s in range(int(cfg.eval_seeds))]
        eval_cfg = {
            k: (float(v) if isinstance(v, float) else v)
            for k, v in (
                ("eval_epochs", cfg.eval_epochs),
                ("eval_batch_size", cfg.eval_batch_size),
                ("eval_lr", cfg.eval_lr),
                ("eval_weight_decay", cfg.eval_weight_decay),
                ("flip", cfg.flip),
                ("cutout_last", cfg.cutout_last),
            )
        }
        # only when set, so the runs made before these keys existed stay valid
        if int(cfg.train_crop) > 0:
            eval_cfg["train_crop"] = int(cfg.train_crop)
        if not cfg.eval_nesterov:
            eval_cfg["eval_nesterov"] = False
        warmup = int(round(float(cfg.eval_warmup_epochs) * steps / max(float(cfg.eval_epochs), 1e-12)))
        if warmup > 0:
            eval_cfg["eval_warmup_epochs"] = float(cfg.eval_warmup_epochs)
        for name, pol in methods.items():
            stage = Stage(
                out,
                f"eval/{name}",
                {**common, **eval_cfg, "policy": pol.to_dict() if pol is not None else None},
                [out / "eval" / f"{name}.json", out / "eval" / f"{name}_policy.json", out / "eval" / "ckpt" / name],
                ctx.hooks.message,
            )
            # finished seeds are reused when only eval_seeds changed (they are keyed by seed)
            stage.begin()
            if pol is not None and ctx.rank == 0 and name != _label(opt_node):
                pol.save(out / "eval" / f"{name}_policy.json")

            def one(seed, pol=pol, name=name):
                # a run killed inside a seed's training resumes from its last epoch's checkpoint
                ckpt = out / "eval" / "ckpt" / name / f"seed{seed}.pt"
                torch.manual_seed(seed)
                model = factory().to(device)
                train_with_policy(
                    model,
                    Xtr,
                    Ytr,
                    pol,
                    steps=steps,
                    batch_size=cfg.eval_batch_size,
                    lr=cfg.eval_lr,
                    weight_decay=cfg.eval_weight_decay,
                    seed=seed,
                    flip=cfg.flip,
                    cutout_last=cfg.cutout_last,
                    crop=int(cfg.train_crop),
                    nesterov=bool(cfg.eval_nesterov),
                    warmup_steps=warmup,
                    device=device,
                    ckpt_path=ckpt,
                    hooks=ctx.hooks,
                    stage=f"eval {name} seed {seed}",
                )
                acc = evaluate(model, Xte, Yte, device)
                ckpt.unlink(missing_ok=True)  # the seed's result is recorded next: its training is done
                ctx.hooks.evaluate(metrics={f"accuracy/{name}": acc, "seed": seed})
                return {"accuracy": acc}

            r = over_seeds(one, seeds, path=out / "eval" / f"{name}.json", key="accuracy")
            stage.complete()
            results[name] = {k: r[k] for k in ("values", "mean", "ci95", "n", "seeds")}
        if ctx.rank == 0:
            atomic_write_text(json.dumps(results, indent=1), out / "results.json")
            atomic_write_text(results_table(results), out / "results.md")
        return {"policy": str(policy_path), "results": results, "summary": results_table(results)}


def _given_policy(path: str) -> fulcra.Policy:
    """``policy=PATH``: a fulcra ``policy.json``, or an official SLACK checkpoint (``.ckpt``/``.pt``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(f"search: policy file not found: {p}")
    if p.suffix in (".ckpt", ".pt", ".pth"):
        return fulcra.Policy.from_official(p)
    return fulcra.Policy.load(p)


def results_table(results: dict) -> str:
    """Markdown table: method, test accuracy mean ± 95% CI (in %), number of runs."""
    lines = ["| method | test accuracy (%) | runs |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {format_mean_ci(r)} | {r['n']} |")
    return "\n".join(lines) + "\n"
