"""SLACK (thesis Algorithm 1, Eq. 3.4-3.5, app. A.2.1): bilevel policy search with cold start and
KL anchoring.

The hypergradient, batched
--------------------------
For ``B_aug`` augmentations ``τ`` sampled from ``p_φ`` and one training batch of ``N_t`` images,
the thesis' estimate is

    Ĝ_φ = -(η / B_aug) Σ_τ (∇_θ l̂_val(θ̂)ᵀ ∇_θ l̂_train(θ, τ)) ∇_φ log p_φ(τ),   θ̂ = θ − η ĝ_θ.

All ``B_aug × N_t`` augmented images go through the network as **one** batch. Each group's mean
loss ``l_τ`` is weighted by ``w_τ = 1 + log p_φ(τ) − stop_grad(log p_φ(τ))`` (value 1, gradient
``∇_φ log p_φ(τ)``): ``L = (1/B_aug) Σ_τ w_τ l_τ``. One backward with ``create_graph=True`` gives
``ĝ_θ = ∇_θ L`` (its value is the plain training gradient, used for the model step and for
``θ̂``); the validation gradient ``v = ∇_θ l̂_val(θ̂)`` is taken at ``θ̂`` through
``torch.func.functional_call`` (one extra parameter-sized tensor set, no module copy); and one
more backward of ``⟨ĝ_θ, v⟩`` to φ yields exactly ``(1/B_aug) Σ_τ (vᵀ ∇_θ l_τ) ∇_φ log p_φ(τ)``,
which times ``−η`` is ``Ĝ_φ``. Without clipping no per-augmentation gradient is stored: the B_aug
inner products come out of a single double-backward (``formulation="double_backward"``; BatchNorm
statistics of the joint ``B_aug × N_t`` batch). The default ``formulation="layerwise"``
(:mod:`.layerwise`) normalises each augmentation group with its own BatchNorm statistics, as
separate forward passes would, and gets the same B_aug inner products from the saved layer inputs
and output gradients of one ordinary backward plus one linear forward with ``v`` as weights.

Groups and stabilisers (Table A.4 "8×128" and the official code): every re-training and search
step draws one augmentation per group for ``B_aug`` groups of the same ``N_t`` images; each group's
gradient is clipped to norm ``clip`` (5) and the clipped gradients averaged (the REINFORCE weights
then use them: ``c_τ vᵀ ∇_θ l_τ``); ``v`` is clipped tensor by tensor to ``val_clip`` (5); the policy
optimiser is rebuilt at every anchor update. ``double_backward`` is used only when asked for a
model with BatchNorm (its joint-batch statistics are not the method's), or for a model without
batch statistics, where it is the same quantity.

η is the *initial* lower-level learning rate (app. A.2.1), μ's learning rate is π's divided by
``mu_lr_divisor`` (40, or 10 without KL), and ``∇_π KL(p_π ‖ p_π̃)`` is the exact closed form.
Under ``torchrun`` each process trains its own model (pre-trained from its own seed) and the
policy gradients are averaged with ``all_reduce_sum`` (app. A.3.4).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fulcra.engine import Prefetcher, atomic_save, dist, load_checkpoint, make_scheduler, step_generator
from fulcra.errors import ConfigError
from fulcra.policy import Policy

from .common import SEARCH_SPACES, MethodAugment, as_tensors, batch_indices, channel_mean, to_input

__all__ = ["Slack", "hypergradient"]


def hypergradient(
    model: torch.nn.Module,
    policy: Policy,
    logits: torch.Tensor,
    mu: torch.Tensor,
    x_aug: torch.Tensor,
    y_aug: torch.Tensor,
    op_index: torch.Tensor,
    magnitude: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    eta: float,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    clip: float = 0.0,
    val_clip: float = 0.0,
):
    """One batched REINFORCE hypergradient (see the module docstring).

    Args:
        model: the network at θ (train mode).
        policy: gives ``log_prob``; ``logits [K, N]`` and ``mu [N]`` are the leaves to differentiate.
        x_aug: ``[B_aug * N_t, C, H, W]`` float network input, group-major (τ = row // N_t).
        y_aug: ``[B_aug * N_t]`` labels.
        op_index, magnitude: ``[B_aug, K]`` the sampled augmentations.
        x_val, y_val: validation batch (unaugmented network input, labels).
        eta: the step size of θ̂ = θ − η ĝ_θ.
        loss_fn: ``loss_fn(outputs, targets, reduction=...)`` pointwise loss (cross-entropy).
        clip: > 0: each group's gradient ``∇_θ l_τ`` is scaled by ``c_τ = min(1, clip / (‖∇_θ l_τ‖ + 1e-6))``
            (norm over all parameters) before averaging; the REINFORCE weights use the clipped
            gradients, ``c_τ vᵀ ∇_θ l_τ``. Costs B_aug extra backward passes here (joint BatchNorm).
        val_clip: > 0: each parameter tensor of ``v`` is scaled to norm at most ``val_clip``.
    Returns:
        ``(g_theta, g_logits, g_mu, train_loss, val_loss)``: the model gradient (list, one per
        parameter), ``Ĝ`` for π and μ (``None`` where not differentiable), and the two losses.
    """
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    n_aug = op_index.shape[0]
    per = loss_fn(model(x_aug), y_aug, reduction="none").view(n_aug, -1).mean(1)  # l_τ, [B_aug]
    coef = torch.ones(n_aug, dtype=per.dtype, device=per.device)
    if clip > 0:
        for t in range(n_aug):
            gt = torch.autograd.grad(per[t], params, retain_graph=True, allow_unused=True)
            coef[t] = clip_coefficient(gt, clip)
    logp = policy.log_prob(op_index, magnitude, logits, mu)
    box = 1.0 + logp - logp.detach()
    L = (coef * box * per).mean()
    g = torch.autograd.grad(L, params, create_graph=True)
    theta_hat = {n: (p.detach() - eta * gi.detach()).requires_grad_(True) for n, p, gi in zip(names, params, g)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # θ̂'s forward must not move running stats
    out_val = functional_call(model, {**theta_hat, **buffers}, (x_val,))
    val_loss = loss_fn(out_val, y_val, reduction="mean")
    v = clip_each(torch.autograd.grad(val_loss, list(theta_hat.values())), val_clip)
    inner = sum((gi * vi).sum() for gi, vi in zip(g, v))
    leaves = [t for t in (logits, mu) if t.requires_grad]
    grads = torch.autograd.grad(inner, leaves, allow_unused=True) if leaves else []
    it = iter(grads)
    g_logits = next(it) if logits.requires_grad else None
    g_mu = next(it) if mu.requires_grad else None
    g_logits = None if g_logits is None else -eta * g_logits
    g_mu = None if g_mu is None else -eta * g_mu
    return [gi.detach() for gi in g], g_logits, g_mu, float(per.detach().mean()), float(val_loss.detach())


def clip_coefficient(grads, max_norm: float) -> torch.Tensor:
    """``min(1, max_norm / (‖grads‖ + 1e-6))``, the norm over all tensors together (the official
    code's per-group clipping; ``None`` entries count as zeros)."""
    sq = sum(0.0 if gi is None else gi.detach().double().pow(2).sum() for gi in grads)
    norm = torch.as_tensor(sq, dtype=torch.float64).sqrt()
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_each(tensors, max_norm: float) -> list:
    """Each tensor scaled to norm at most ``max_norm`` (the official code's clipping of the
    validation gradient, parameter tensor by parameter tensor); ``max_norm <= 0``: unchanged."""
    if max_norm <= 0:
        return list(tensors)
    out = []
    for t in tensors:
        c = torch.clamp(max_norm / (t.detach().double().norm() + 1e-6), max=1.0)
        out.append(t * c.to(t.dtype))
    return out


def _step_id(key: tuple[int, ...]) -> int:
    """The integer step of a search key ``(phase, [round,] j)``: seeds its batch draw."""
    return key[-1] + 100003 * sum(key[:-1])


class _SearchDraws:
    """The images of a search draw ``(which, step)``: D_train's batch of ``step`` (seed ``seed``) or
    D_val's (seed ``seed + 1``), as :func:`batch_indices` picks them. Runs in prefetching workers."""

    def __init__(self, Xtr: Any, Xva: Any, batch: int, seed: int):
        self.Xtr, self.Xva, self.batch, self.seed = Xtr, Xva, int(batch), int(seed)

    def __call__(self, key: tuple[str, int]) -> torch.Tensor:
        which, step = key
        X, seed = (self.Xtr, self.seed) if which == "train" else (self.Xva, self.seed + 1)
        return X[batch_indices(X.shape[0], self.batch, seed, step)]


class Slack:
    """SLACK policy search (thesis Algorithm 1). Defaults: Table A.4 (CIFAR, WRN).

    Args:
        ops: transform names (any ``augmentations`` plugins); empty: the ``space`` preset.
        space: search-space preset used when ``ops`` is empty (``cifar``, ``imagenet``, ``domainnet``, ``all``).
        ranges: per-transform value-range overrides ``{name: [v0, v1]}``.
        num_stages: K, the transforms composed per image.
        mu_init: initial magnitude upper bound (0.75).
        pretrain_steps: steps of pre-training with the uniform policy.
        pretrain_epochs: when > 0, pre-train for this many epochs of D_train instead (§3.4.1: the
            evaluation's 200 epochs, on the search's half of the training set); overrides ``pretrain_steps``.
        pretrain_lr: pre-training learning rate (0: ``lower_lr``); §3.4.1 pre-trains as the
            evaluation trains (TrivialAugment's 0.1).
        rounds: n_rounds of cold-started search.
        retrain_steps: n_retrain plain model steps at the start of each round.
        unrolled_steps: n_total − n_retrain alternating model/policy steps per round.
        batch_size: N_t training images per group (and N_v validation images); Table A.4's "8×128"
            is ``b_aug=8, batch_size=128``.
        b_aug: B_aug augmentation groups per re-training and search step: one composite augmentation
            is drawn per group and applied to all N_t images of the step's batch.
        clip: each group's training gradient is clipped to this norm before the groups are averaged
            (official code: 5; 0: off).
        val_clip: the validation gradient is clipped to this norm, tensor by tensor (official: 5; 0: off).
        flip: random horizontal flip after the policy at every step (the method's default for its
            natural-image benchmarks; wrong for digits and text).
        cutout_last: a sampled Cutout is applied last, after flip and normalisation, with the
            training images' mean as fill (official code); False: at its stage, black fill.
        train_crop: a random ``train_crop``×``train_crop`` window of each training image first, at
            every step (Table A.3's ``RC((224, 224))`` for ImageNet-100 and DomainNet; 0: off). The
            validation images are expected already centre-cropped to that size.
        lower_lr: initial lower-level learning rate (also η).
        upper_lr: π's learning rate α.
        mu_lr_divisor: μ's learning rate is ``upper_lr / mu_lr_divisor`` (0: 40 with KL, 10 without).
        kl_weight: λ; Table A.4 gives λ·α = 0.02.
        weight_decay: lower-level weight decay.
        momentum: lower-level SGD momentum.
        upper_momentum: momentum of the policy's SGD.
        kl: anchor with KL(p_π ‖ p_π̃) (ablation: False).
        cold_start: restart each round from the pre-trained weights (ablation: False = warm start).
        unrolled: single-stage unrolled optimisation with entropy regularisation (KL to the uniform
            anchor, Table A.7): one round of ``unrolled_steps`` without cold starts.
        learn_pi: update π (Table 3.6 ablation).
        learn_mu: update μ (Table 3.6 ablation).
        formulation: how the B_aug REINFORCE weights are computed: ``layerwise`` (the method: each
            augmentation group normalised by its own BatchNorm statistics, as separate forward
            passes would; one backward; needs a model made of Conv2d/Linear/BatchNorm2d) or
            ``double_backward`` (any model, but BatchNorm over the joint B_aug × N_t batch: a
            different quantity when the model has BatchNorm, so it is used only when asked for; a
            model without batch statistics gets it automatically, where it is the same quantity).
        checkpoint_every: steps between checkpoints (a killed search resumes from the last one).
        history_every: steps between recorded π snapshots (Fig. A.1).
    """

    def __init__(
        self,
        ops: Optional[list] = None,
        space: str = "cifar",
        ranges: Optional[dict] = None,
        num_stages: int = 3,
        mu_init: float = 0.75,
        pretrain_steps: int = 78000,
        pretrain_epochs: float = 0.0,
        pretrain_lr: float = 0.0,
        rounds: int = 10,
        retrain_steps: int = 1000,
        unrolled_steps: int = 400,
        batch_size: int = 128,
        b_aug: int = 8,
        clip: float = 5.0,
        val_clip: float = 5.0,
        flip: bool = True,
        cutout_last: bool = True,
        train_crop: int = 0,
        lower_lr: float = 0.1,
        upper_lr: float = 1.0,
        mu_lr_divisor: float = 0.0,
        kl_weight: float = 0.02,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        upper_momentum: float = 0.9,
        kl: bool = True,
        cold_start: bool = True,
        unrolled: bool = False,
        learn_pi: bool = True,
        learn_mu: bool = True,
        formulation: str = "layerwise",
        checkpoint_every: int = 200,
        history_every: int = 10,
    ):
        if not ops:
            if space not in SEARCH_SPACES:
                raise ConfigError(
                    f"policy_optimizers.slack: unknown search space '{space}' (have {sorted(SEARCH_SPACES)})"
                )
            ops = SEARCH_SPACES[space]
        self.ops = [str(o) for o in ops]
        if len(self.ops) < 2:
            raise ConfigError("policy_optimizers.slack: ops needs at least 2 transforms")
        from fulcra.registry import load_plugin

        for o in self.ops:  # an unknown op fails now, with the registry's close matches
            load_plugin("augmentations", o)
        self.ranges = dict(ranges or {})
        for k, r in self.ranges.items():
            if k not in self.ops:
                close = difflib.get_close_matches(str(k), self.ops, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(
                    f"policy_optimizers plugin 'slack': key 'ranges.{k}' names no op of the search space{hint}"
                )
            ok = (
                isinstance(r, (list, tuple))
                and len(r) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in r)
            )
            if not ok:
                raise ConfigError(f"policy_optimizers plugin 'slack': key 'ranges.{k}' must be [v0, v1], got {r!r}")
        self.num_stages, self.mu_init = int(num_stages), float(mu_init)
        self.pretrain_steps, self.rounds = int(pretrain_steps), int(rounds)
        self.retrain_steps, self.unrolled_steps = int(retrain_steps), int(unrolled_steps)
        self.batch_size, self.b_aug = int(batch_size), int(b_aug)
        for key, value, low in (
            ("pretrain_steps", self.pretrain_steps, 0),
            ("rounds", self.rounds, 0),
            ("retrain_steps", self.retrain_steps, 0),
            ("unrolled_steps", self.unrolled_steps, 0),
            ("batch_size", self.batch_size, 1),
            ("b_aug", self.b_aug, 1),
        ):
            if value < low:
                raise ConfigError(f"policy_optimizers 'slack': key {key!r} must be >= {low}, got {value}")
        self.clip, self.val_clip = float(clip), float(val_clip)
        if self.clip < 0 or self.val_clip < 0:
            raise ConfigError("policy_optimizers 'slack': keys 'clip' and 'val_clip' must be >= 0 (0: off)")
        self.flip, self.cutout_last = bool(flip), bool(cutout_last)
        if train_crop < 0:
            raise ConfigError(f"policy_optimizers 'slack': key 'train_crop' must be >= 0, got {train_crop}")
        self.train_crop = int(train_crop)
        self.lower_lr, self.upper_lr = float(lower_lr), float(upper_lr)
        if pretrain_epochs < 0 or pretrain_lr < 0:
            raise ConfigError("policy_optimizers 'slack': pretrain_epochs and pretrain_lr must be >= 0")
        self.pretrain_epochs, self.pretrain_lr = float(pretrain_epochs), float(pretrain_lr) or float(lower_lr)
        self.mu_lr_divisor = float(mu_lr_divisor) or (40.0 if kl else 10.0)
        self.kl_weight = float(kl_weight) if kl else 0.0
        self.weight_decay, self.momentum, self.upper_momentum = (
            float(weight_decay),
            float(momentum),
            float(upper_momentum),
        )
        self.kl, self.cold_start, self.unrolled = bool(kl), bool(cold_start), bool(unrolled)
        self.learn_pi, self.learn_mu = bool(learn_pi), bool(learn_mu)
        self.checkpoint_every, self.history_every = max(1, int(checkpoint_every)), max(1, int(history_every))
        if formulation not in ("layerwise", "double_backward"):
            raise ConfigError(
                f"policy_optimizers.slack: formulation must be 'layerwise' or 'double_backward', got '{formulation}'"
            )
        self.formulation = formulation
        if self.unrolled:
            self.rounds, self.retrain_steps = 1, 0

    # ----------------------------------------------------------------------------------------------
    def initial_policy(self) -> Policy:
        from fulcra.policy import default_ranges

        rng = default_ranges(self.ops)
        rng.update({k: [float(v) for v in r] for k, r in self.ranges.items()})
        return Policy.uniform(self.ops, self.num_stages, self.mu_init, rng)

    def search(
        self,
        train_data: Any,
        val_data: Any,
        model_factory: Callable[[], torch.nn.Module],
        ctx,
        workdir: str | Path | None = None,
    ) -> Policy:
        """Run Algorithm 1 and return the learned policy.

        Args:
            train_data, val_data: datasets of ``(uint8 [C,H,W], label)`` (D_train, D_val of the 0.5/0.5 split).
            model_factory: builds a fresh network.
            ctx: the RunContext (device, seed, rank, hooks).
            workdir: where checkpoints go (default ``ctx.out / "search"``); an existing checkpoint there
                is resumed.
        Returns:
            the final :class:`~fulcra.policy.Policy`; ``self.history`` holds the π snapshots.
        """
        try:
            policy = self._search(train_data, val_data, model_factory, ctx, workdir)
            ahead, hooks = getattr(self, "_ahead", None), getattr(ctx, "hooks", None)
            if ahead is not None and ahead.workers > 0 and hasattr(hooks, "message") and getattr(ctx, "is_main", True):
                hooks.message(
                    f"search: {ahead.hits} batches decoded ahead by {ahead.workers} worker"
                    f"{'s' if ahead.workers != 1 else ''}, {ahead.misses} drawn off the plan"
                )
            return policy
        finally:
            ahead, self._ahead = getattr(self, "_ahead", None), None
            if ahead is not None:
                ahead.close()
                self.prefetched = {"workers": ahead.workers, "hits": ahead.hits, "misses": ahead.misses}

    def _search(self, train_data, val_data, model_factory, ctx, workdir) -> Policy:
        device = torch.device(ctx.device)
        rank, world = dist.rank(), dist.world_size()
        seed = int(ctx.seed) * 1000 + rank
        work = Path(workdir) if workdir is not None else Path(ctx.out) / "search"
        work.mkdir(parents=True, exist_ok=True)
        ckpt_path = work / f"state_rank{rank}.pt"
        Xtr, Ytr = as_tensors(train_data)
        Xva, Yva = as_tensors(val_data)
        hooks = getattr(ctx, "hooks", None)
        if self.pretrain_epochs > 0:  # epochs of D_train, as batch_indices draws them
            per_epoch = max(1, Xtr.shape[0] // min(self.batch_size, Xtr.shape[0]))
            self.pretrain_steps = max(1, int(round(self.pretrain_epochs * per_epoch)))

        policy = self.initial_policy()
        logits = policy.logits.clone().to(device).requires_grad_(self.learn_pi)
        mu = policy.mu.clone().to(device).requires_grad_(self.learn_mu)

        def make_upper():
            return torch.optim.SGD(
                [
                    {"params": [logits], "lr": self.upper_lr},
                    {"params": [mu], "lr": self.upper_lr / self.mu_lr_divisor},
                ],
                lr=self.upper_lr,
                momentum=self.upper_momentum,
            )

        upper = make_upper()
        torch.manual_seed(seed)
        model = model_factory().to(device).train()
        self._use_layerwise = self._choose_formulation(model, hooks, getattr(ctx, "is_main", True))
        opt, sched = self._lower_opt(model, max(self.pretrain_steps, 1), self.pretrain_lr)
        state = {"phase": "pretrain", "step": 0, "round": 0, "j": 0, "history": [policy.probs().tolist()]}
        anchor = logits.detach().clone()

        if ckpt_path.is_file():
            ck = load_checkpoint(ckpt_path, map_location=device)
            state = ck["state"]
            if state["phase"] == "rounds" or state["phase"] == "done":
                opt, sched = self._lower_opt(model, self._round_steps())
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            with torch.no_grad():
                logits.copy_(ck["logits"])
                mu.copy_(ck["mu"])
            anchor = ck["anchor"].to(device)
            upper.load_state_dict(ck["upper"])

        def save():
            atomic_save(
                {
                    "state": state,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "logits": logits.detach(),
                    "mu": mu.detach(),
                    "anchor": anchor,
                    "upper": upper.state_dict(),
                },
                ckpt_path,
            )
            if hooks is not None:
                hooks.checkpoint(path=str(ckpt_path), step=state["step"])

        pre_policy = self.initial_policy()
        # same ops and ranges throughout: the applier does not depend on π or μ
        pre_aug = aug = MethodAugment(
            pre_policy,
            pre_policy.augmenter(),
            flip=self.flip,
            cutout_last=self.cutout_last,
            fill=channel_mean(Xtr),
            crop=self.train_crop,
        )
        theta0_path = work / f"pretrained_rank{rank}.pt"
        # batches of image files decoded ahead by the views' workers, in the order drawn below
        workers = int(getattr(Xtr, "workers", 0) or 0)
        self._ahead = Prefetcher(
            _SearchDraws(Xtr, Xva, self.batch_size, seed),
            self._plan(state) if workers > 0 else (),
            workers=workers,
            pin_memory=device.type == "cuda",
        )

        # --- pre-training with the uniform policy (line 2) --------------------------------------
        while state["phase"] == "pretrain" and state["step"] < self.pretrain_steps:
            s = state["step"]
            loss = self._plain_step(model, opt, sched, pre_policy, pre_aug, Xtr, Ytr, seed, (1, s), device)
            state["step"] = s + 1
            if hooks is not None and (s % 20 == 0):
                hooks.step(step=s, metrics={"pretrain_loss": loss}, total=self.pretrain_steps)
            if state["step"] % self.checkpoint_every == 0:
                save()
        if state["phase"] == "pretrain":
            atomic_save(model.state_dict(), theta0_path)
            state.update(phase="rounds", round=0, j=0)
            opt, sched = self._lower_opt(model, self._round_steps())
            save()
        theta0 = load_checkpoint(theta0_path, map_location=device)

        # --- rounds (lines 3-14) -------------------------------------------------------------------
        n_total = self._round_steps()
        eta = self.lower_lr
        while state["phase"] == "rounds" and state["round"] < self.rounds:
            i = state["round"]
            if state["j"] == 0:
                if self.cold_start and not self.unrolled:
                    model.load_state_dict(theta0)  # line 4: cold start
                opt, sched = self._lower_opt(model, n_total)
                anchor = torch.zeros_like(logits.detach()) if self.unrolled else logits.detach().clone()  # line 5
                upper = make_upper()  # the official code rebuilds the outer optimiser (momentum) at each anchor
                state["j"] = 0
            while state["j"] < n_total:
                j = state["j"]
                cur = Policy(self.ops, logits.detach().cpu(), mu.detach().cpu(), policy.ranges, policy.sigma)
                if j < self.retrain_steps:
                    loss = self._retrain_step(model, opt, sched, cur, aug, Xtr, Ytr, seed, (2, i, j), device)
                    metrics = {"round": i, "retrain_loss": loss}
                else:
                    metrics = self._bilevel_step(
                        model,
                        opt,
                        sched,
                        policy,
                        cur,
                        aug,
                        logits,
                        mu,
                        anchor,
                        upper,
                        Xtr,
                        Ytr,
                        Xva,
                        Yva,
                        seed,
                        (3, i, j),
                        eta,
                        device,
                        world,
                    )
                    metrics["round"] = i
                state["j"] = j + 1
                state["step"] += 1
                if j % self.history_every == 0 and j >= self.retrain_steps:
                    state["history"].append(torch.softmax(logits.detach(), -1).cpu().tolist())
                if hooks is not None and j % 20 == 0:
                    hooks.step(step=state["step"], metrics=metrics, total=self.pretrain_steps + self.rounds * n_total)
                if state["j"] % self.checkpoint_every == 0 and state["j"] < n_total:
                    save()
            state["round"] = i + 1
            state["j"] = 0
            state["history"].append(torch.softmax(logits.detach(), -1).cpu().tolist())
            save()
        if state["phase"] == "rounds":
            state["phase"] = "done"
            save()
        self.history = state["history"]
        return Policy(self.ops, logits.detach().cpu(), mu.detach().cpu(), policy.ranges, policy.sigma)

    def _plan(self, state: dict) -> list[tuple[str, int]]:
        """The keys of the images the search draws from ``state`` on, in order (what
        :meth:`_plain_step`, :meth:`_group_batch` and :meth:`_bilevel_step` take)."""
        keys: list[tuple[str, int]] = []
        if state["phase"] == "pretrain":
            keys += [("train", _step_id((1, s))) for s in range(state["step"], self.pretrain_steps)]
        if state["phase"] not in ("pretrain", "rounds"):
            return keys
        r0, j0 = (state["round"], state["j"]) if state["phase"] == "rounds" else (0, 0)
        for i in range(r0, self.rounds):
            for j in range(j0 if i == r0 else 0, self._round_steps()):
                if j < self.retrain_steps:
                    keys.append(("train", _step_id((2, i, j))))
                else:
                    keys += [("train", _step_id((3, i, j))), ("val", _step_id((3, i, j)))]
        return keys

    def _images(self, X: Any, idx: torch.Tensor, key: tuple[str, int]) -> torch.Tensor:
        """``X[idx]``: decoded ahead when the search prefetches (``key`` names the draw)."""
        ahead = getattr(self, "_ahead", None)
        return ahead.take(key) if ahead is not None and ahead.workers > 0 else X[idx]

    # ----------------------------------------------------------------------------------------------
    def _choose_formulation(self, model, hooks=None, is_main: bool = True) -> bool:
        """Whether the search steps use the layerwise formulation; an unsupported model with
        BatchNorm is an error (the joint-batch statistics of ``double_backward`` are not the
        method's), one without batch statistics falls back with one line (the same quantity)."""
        if self.formulation != "layerwise":
            return False
        from .layerwise import supports_layerwise

        if supports_layerwise(model):
            return True
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(
                f"policy_optimizers.slack: formulation=layerwise (per-group BatchNorm, the method) needs a model "
                f"made of Conv2d (zero padding), Linear and BatchNorm2d; {type(model).__name__} has other "
                "parametrised modules. Set formulation=double_backward to search with BatchNorm statistics of "
                "the joint B_aug x N_t batch instead"
            )
        if is_main:
            msg = (
                f"policy_optimizers.slack: {type(model).__name__} is not layerwise-capable and has no BatchNorm, "
                "so the search uses formulation=double_backward (the same quantity without batch statistics)"
            )
            if hooks is not None and hasattr(hooks, "message"):
                hooks.message(msg)
            else:
                print(f"[search] {msg}", flush=True)
        return False

    def _round_steps(self) -> int:
        return self.retrain_steps + self.unrolled_steps

    def _lower_opt(self, model, steps, lr=None):
        opt = torch.optim.SGD(
            model.parameters(),
            lr=self.lower_lr if lr is None else lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=False,
        )
        return opt, make_scheduler(opt, steps)

    def _plain_step(self, model, opt, sched, policy, aug, X, Y, seed, key, device) -> float:
        """One pre-training step (the evaluation's setting, §3.4.1): each image of an N_t batch gets
        its own composite augmentation."""
        step = _step_id(key)
        idx = batch_indices(X.shape[0], self.batch_size, seed, step)
        x, y = self._images(X, idx, ("train", step)).to(device), Y[idx].to(device)
        g = step_generator(seed, *key, device=device)
        op_index, mags = policy.sample(x.shape[0], g, device)
        loss = F.cross_entropy(model(aug(x, op_index, mags, g)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach())

    def _group_batch(self, cur, aug, X, Y, seed, key, device):
        """The step's N_t images, B_aug augmentations drawn from ``cur`` (one per group) and the
        ``[B_aug * N_t]`` group-major network input."""
        step = _step_id(key)
        idx = batch_indices(X.shape[0], self.batch_size, seed, step)
        x, y = self._images(X, idx, ("train", step)).to(device), Y[idx].to(device)
        g = step_generator(seed, *key, device=device)
        op_index, mags = cur.sample(self.b_aug, g, device)
        n_t = x.shape[0]
        x_aug = aug(
            x.repeat(self.b_aug, 1, 1, 1), op_index.repeat_interleave(n_t, 0), mags.repeat_interleave(n_t, 0), g
        )
        return x_aug, y.repeat(self.b_aug), op_index, mags, step, g

    def _retrain_step(self, model, opt, sched, cur, aug, X, Y, seed, key, device) -> float:
        """One re-training step (Table A.4 "8×128"): B_aug groups of the same N_t images, one
        composite augmentation per group, each group's gradient from its own forward pass (its own
        BatchNorm statistics) clipped to norm ``clip``, the clipped gradients averaged."""
        x_aug, y_aug, *_ = self._group_batch(cur, aug, X, Y, seed, key, device)
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        losses = []
        for xg, yg in zip(x_aug.chunk(self.b_aug), y_aug.chunk(self.b_aug)):
            loss = F.cross_entropy(model(xg), yg)
            gt = torch.autograd.grad(loss, params, allow_unused=True)
            c = clip_coefficient(gt, self.clip) if self.clip > 0 else None
            for t, gi in zip(total, gt):
                if gi is not None:
                    t.add_(gi if c is None else gi * c.to(gi.dtype))
            losses.append(float(loss.detach()))
        for p, t in zip(params, total):
            p.grad = t / self.b_aug
        opt.step()
        sched.step()
        return sum(losses) / len(losses)

    def _bilevel_step(
        self,
        model,
        opt,
        sched,
        policy,
        cur,
        aug,
        logits,
        mu,
        anchor,
        upper,
        Xtr,
        Ytr,
        Xva,
        Yva,
        seed,
        key,
        eta,
        device,
        world,
    ) -> dict:
        """Lines 7-11: model step on B_aug × N_t augmented images (per-group clipped gradients,
        averaged), then the policy step (validation gradient clipped)."""
        x_aug, y_aug, op_index, mags, step, g = self._group_batch(cur, aug, Xtr, Ytr, seed, key, device)
        vidx = batch_indices(Xva.shape[0], self.batch_size, seed + 1, step)
        use_layerwise = getattr(self, "_use_layerwise", None)
        if use_layerwise is None:
            use_layerwise = self._use_layerwise = self._choose_formulation(model)
        fn = hypergradient
        if use_layerwise:
            from .layerwise import layerwise_hypergradient

            fn = layerwise_hypergradient
        g_theta, g_logits, g_mu, tr_loss, va_loss = fn(
            model,
            policy,
            logits,
            mu,
            x_aug,
            y_aug,
            op_index,
            mags,
            to_input(self._images(Xva, vidx, ("val", step)).to(device)),
            Yva[vidx].to(device),
            eta,
            clip=self.clip,
            val_clip=self.val_clip,
        )
        # model step (line 8) with the gradient of the same batch
        for p, gi in zip([p for p in model.parameters() if p.requires_grad], g_theta):
            p.grad = gi
        opt.step()
        sched.step()
        # policy step (lines 10-11): averaged over processes, plus the exact KL gradient
        upper.zero_grad(set_to_none=True)
        if logits.requires_grad:
            G = g_logits if g_logits is not None else torch.zeros_like(logits)
            G = dist.all_reduce_sum(G.clone()) / world
            if self.kl_weight > 0:
                G = G + self.kl_weight * Policy.kl_grad(logits, anchor)
            logits.grad = G
        if mu.requires_grad:
            Gm = g_mu if g_mu is not None else torch.zeros_like(mu)
            mu.grad = dist.all_reduce_sum(Gm.clone()) / world
        upper.step()
        with torch.no_grad():
            mu.clamp_(0.1, 1.0)  # the method's bounds (official code: [0.1, 1])
        return {
            "search_loss": tr_loss,
            "val_loss": va_loss,
            "kl": float(Policy.kl(logits.detach(), anchor)) if self.kl else 0.0,
        }
