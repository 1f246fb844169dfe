"""Exact REINFORCE weights ``vᵀ ∇_θ l_τ`` for all τ from ONE ordinary backward (``formulation="layerwise"``).

With each augmentation group normalised by its own BatchNorm statistics (as if every τ had its
own forward pass, app. A.2.1), sample ``i`` of group τ influences only ``l_τ``, so the gradient of
``L = mean_τ l_τ`` splits by sample. For a layer computing ``out_i = layer_W(a_i)`` (linear in W),
``⟨∂l/∂W restricted to sample i, V⟩ = ⟨δ_i, layer_V(a_i)⟩`` with ``δ_i = ∂L/∂out_i``. Hence

    (1/B_aug) vᵀ ∇_θ l_τ = Σ_layers Σ_{i ∈ τ} ⟨δ_i, layer_{v_layer}(a_i)⟩,

computed from the saved layer inputs ``a_i`` and output gradients ``δ_i`` of the backward that
also gives the model gradient, plus a *linear* forward of the Linear and BatchNorm layers with the
validation gradient ``v`` as weights. Convolutions sum the other way round: their weight gradients
are computed per group (``⟨v_W, ∇_W l_τ⟩``), which the model gradient needs anyway, so the B_aug
weights cost about one ordinary backward instead of the double backward.

With per-group gradient clipping (``clip > 0``, the official code's norm 5) the weights need each
group's full gradient norm ``‖∇_θ l_τ‖`` before θ̂ exists, so every parameter's gradient is formed
per group (convs by their weight-only backward, Linear by one batched product, BatchNorm and
biases by reductions; B_aug parameter-sized copies); the model gradient is then
``mean_τ c_τ ∇_θ l_τ`` and the weights ``c_τ vᵀ ∇_θ l_τ``.

Supported parametrised modules: ``Conv2d`` (zero padding), ``Linear``, ``BatchNorm2d`` (affine);
any other makes :func:`supports_layerwise` false (the search then refuses ``layerwise`` for a model
with BatchNorm, and uses ``double_backward`` for one without).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

__all__ = ["supports_layerwise", "grouped_batchnorm", "layerwise_hypergradient"]

_SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def supports_layerwise(model: nn.Module) -> bool:
    """Whether every module owning parameters is a Conv2d (zero padding, numeric), Linear or
    BatchNorm2d."""
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _SUPPORTED):
            return False
        if isinstance(m, nn.Conv2d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return False
    return True


def _grouped_bn_forward(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int, store: dict | None):
    """BatchNorm2d with statistics per group of ``x.shape[0] // groups`` consecutive samples.

    Each group is a contiguous slice along the batch axis, so torch's native (fused forward and
    backward) batch-norm kernel runs on it without any layout copy; the outputs are concatenated
    once. (Moving the groups onto the channel axis cost two full copies per layer, and a
    ``var_mean`` over a ``[G, n, C, H·W]`` view is a slow strided reduction on CPU.) Running
    statistics are left alone: during the search the network is only ever evaluated in training
    mode (batch statistics).
    """
    N = x.shape[0]
    n = N // groups
    x = x.contiguous()
    w = bn.weight if bn.affine else None
    b = bn.bias if bn.affine else None
    outs, means, invstds = [], [], []
    # split (not slicing): its backward concatenates the group gradients once, where each slice's
    # backward would zero-fill and scatter into a full-size gradient
    for xg in torch.split(x, n):
        out, mean, invstd = torch.native_batch_norm(xg, w, b, None, None, True, 0.0, bn.eps)
        outs.append(out)
        means.append(mean)
        invstds.append(invstd)
    if store is not None:
        # x̂ is only ever needed contracted with an output gradient (see _xhat_dot)
        store[bn] = (x.detach(), torch.stack(means).detach(), torch.stack(invstds).detach())
    return torch.cat(outs)


def _xhat_dot(stored, d: torch.Tensor) -> torch.Tensor:
    """``Σ_hw x̂ · d`` per sample and channel, ``[N, C]``, for a grouped BatchNorm's normalised input
    x̂ = (x − mean_g) · invstd_g, without materialising x̂: invstd_g (Σ x d − mean_g Σ d)."""
    x, mean, invstd = stored  # [N, C, H, W], [G, C], [G, C]
    N, C = x.shape[:2]
    G = mean.shape[0]
    xd = (x * d).sum(dim=(2, 3)).view(G, N // G, C)
    ds = d.sum(dim=(2, 3)).view(G, N // G, C)
    return ((xd - mean.unsqueeze(1) * ds) * invstd.unsqueeze(1)).view(N, C)


@contextmanager
def grouped_batchnorm(model: nn.Module, groups: int, store: dict | None = None):
    """Within the context, every BatchNorm2d of ``model`` normalises each of ``groups`` consecutive
    sample groups with its own statistics (and records its normalised input in ``store``)."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            saved.append((m, m.forward))
            m.forward = (lambda bn: lambda x: _grouped_bn_forward(bn, x, groups, store))(m)
    try:
        yield
    finally:
        for m, fwd in saved:
            m.forward = fwd


#: memory allowed for the per-group conv weight gradients (B_aug copies of the conv weights)
GROUP_GRAD_BYTES = 512 * 2**20


def _split_convs(model: nn.Module, conv_out: dict, n_aug: int, force: bool = False) -> list:
    """The convs whose weight gradient is computed per group (all trainable zero-padded convs that
    ran once with a grad-requiring output), or ``[]`` when that would exceed ``GROUP_GRAD_BYTES``
    (unless ``force``: per-group clipping needs them whatever their size)."""
    convs = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        and m.weight.requires_grad
        and m in conv_out
        and conv_out[m].requires_grad
        and not isinstance(m.padding, str)
        and m.padding_mode == "zeros"
    ]
    size = sum(m.weight.numel() * m.weight.element_size() for m in convs) * n_aug
    return convs if force or size <= GROUP_GRAD_BYTES else []


def _group_weight_grads(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, n_aug: int) -> torch.Tensor:
    """``[n_aug, *W.shape]``: the conv's weight gradient from each group of consecutive samples
    (input ``a``, output gradient ``d``), by torch's own convolution backward, weight only."""
    W = m.weight.detach()
    out = []
    for a_g, d_g in zip(a.split(a.shape[0] // n_aug), d.split(d.shape[0] // n_aug)):
        out.append(
            torch.ops.aten.convolution_backward(
                d_g,
                a_g,
                W,
                None,
                list(m.stride),
                list(m.padding),
                list(m.dilation),
                False,
                [0, 0],
                m.groups,
                [False, True, False],
            )[1]
        )
    return torch.stack(out)


def _group_param_grads(model, pname, inputs, grads_out, bn_out, xhats, group_grads, n_aug) -> dict:
    """``{name: [n_aug, *shape]}``: each parameter's gradient of ``L = mean_τ l_τ`` restricted to
    each group's samples (= ∇ l_τ / n_aug), from the saved layer inputs and output gradients."""
    out: dict = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m in grads_out:
            d = grads_out[m]
            if m in group_grads and pname.get(m.weight) is not None:
                out[pname[m.weight]] = group_grads[m]
            if m.bias is not None and pname.get(m.bias) is not None:
                out[pname[m.bias]] = d.sum(dim=(2, 3)).view(n_aug, -1, d.shape[1]).sum(1)
        elif isinstance(m, nn.Linear) and m in grads_out:
            d = grads_out[m].reshape(n_aug, -1, m.out_features)
            a = inputs[m].reshape(n_aug, -1, m.in_features)
            if pname.get(m.weight) is not None:
                out[pname[m.weight]] = torch.bmm(d.transpose(1, 2), a)
            if m.bias is not None and pname.get(m.bias) is not None:
                out[pname[m.bias]] = d.sum(1)
        elif isinstance(m, nn.BatchNorm2d) and m.affine and m in bn_out:
            d = bn_out[m]
            C = d.shape[1]
            if pname.get(m.weight) is not None:
                out[pname[m.weight]] = _xhat_dot(xhats[m], d).view(n_aug, -1, C).sum(1)
            if pname.get(m.bias) is not None:
                out[pname[m.bias]] = d.sum(dim=(2, 3)).view(n_aug, -1, C).sum(1)
    return out


def layerwise_hypergradient(
    model,
    policy,
    logits,
    mu,
    x_aug,
    y_aug,
    op_index,
    magnitude,
    x_val,
    y_val,
    eta,
    loss_fn=F.cross_entropy,
    clip: float = 0.0,
    val_clip: float = 0.0,
):
    """Same contract as :func:`fulcra_plugins.slack.slack.hypergradient` (``clip``, ``val_clip``
    included), per-group BatchNorm."""
    from .slack import clip_each

    n_aug = op_index.shape[0]
    N = x_aug.shape[0]
    per_group = N // n_aug
    inputs: dict = {}
    grads_out: dict = {}
    handles = []

    conv_out: dict = {}

    def fwd_hook(mod, args, out):
        inputs[mod] = args[0].detach()
        if isinstance(mod, nn.Conv2d):
            conv_out[mod] = out
        if out.requires_grad:
            out.register_hook(lambda g, mod=mod: grads_out.__setitem__(mod, g.detach()))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(fwd_hook))
    xhats: dict = {}
    bn_out: dict = {}
    try:
        with grouped_batchnorm(model, n_aug, xhats):

            def bn_hook(mod, args, out):
                if out.requires_grad:
                    out.register_hook(lambda g, mod=mod: bn_out.__setitem__(mod, g.detach()))

            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    handles.append(m.register_forward_hook(bn_hook))
            per = loss_fn(model(x_aug), y_aug, reduction="none").view(n_aug, -1).mean(1)
            L = per.mean()
            names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
            split = _split_convs(model, conv_out, n_aug, force=clip > 0)
            if split:
                # conv weight gradients per augmentation group (below) instead of inside the backward:
                # their sum is the model gradient and their dot with v the conv part of w_τ, which
                # spares the linear forward of every conv with v as weights. The backward is asked for
                # the conv outputs' gradients so that it reaches every conv but skips their weights.
                skip = {id(m.weight) for m in split}
                ask = [p for p in params if id(p) not in skip]
                res = torch.autograd.grad(L, ask + [conv_out[m] for m in split])
                by_id = {id(p): gi for p, gi in zip(ask, res[: len(ask)])}
                group_grads = {}
                for m, d in zip(split, res[len(ask) :]):
                    group_grads[m] = _group_weight_grads(m, inputs[m], d.detach(), n_aug)
                    by_id[id(m.weight)] = group_grads[m].sum(0)
                g = tuple(by_id[id(p)] for p in params)
            else:
                group_grads = {}
                g = torch.autograd.grad(L, params)
    finally:
        for h in handles:
            h.remove()
        conv_out.clear()
    pname = {p: n for n, p in model.named_parameters()}
    coef = None
    if clip > 0:
        # each group's full gradient ∇ l_τ = n_aug · (its share of ∇L): norms, then the clipped mean
        shares = _group_param_grads(model, pname, inputs, grads_out, bn_out, xhats, group_grads, n_aug)
        missing = [n for n in names if n not in shares]
        if missing:
            raise NotImplementedError(f"layerwise: no per-group gradient for parameter(s) {missing[:3]}")
        sq = sum(shares[n].double().pow(2).flatten(1).sum(1) for n in names) * float(n_aug) ** 2
        coef = torch.clamp(clip / (sq.sqrt() + 1e-6), max=1.0).to(x_aug.dtype)  # c_τ, [n_aug]
        g = tuple((shares[n] * coef.view(-1, *[1] * (shares[n].dim() - 1))).sum(0) for n in names)
    theta_hat = {n: (p.detach() - eta * gi).requires_grad_(True) for n, p, gi in zip(names, params, g)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    val_loss = loss_fn(functional_call(model, {**theta_hat, **buffers}, (x_val,)), y_val, reduction="mean")
    v = dict(zip(names, clip_each(torch.autograd.grad(val_loss, list(theta_hat.values())), val_clip)))

    w = torch.zeros(N, dtype=x_aug.dtype, device=x_aug.device)  # per-sample contributions
    w_groups = torch.zeros(n_aug, dtype=x_aug.dtype, device=x_aug.device)  # per-group contributions
    with torch.no_grad():
        if coef is not None:
            # (1/B_aug) c_τ vᵀ ∇ l_τ straight from the per-group gradients
            for n in names:
                w_groups += shares[n].flatten(1) @ v[n].flatten()
            w_groups *= coef
        for m in model.modules() if coef is None else ():
            if isinstance(m, nn.Conv2d) and m in grads_out:
                vw = v.get(pname.get(m.weight))
                d = grads_out[m]
                if vw is not None and m in group_grads:
                    w_groups += group_grads[m].flatten(1) @ vw.flatten()
                elif vw is not None:
                    z = F.conv2d(inputs[m], vw, None, m.stride, m.padding, m.dilation, m.groups)
                    # per-sample dot products as one batched GEMV, no [N, C, H, W] product tensor
                    w += torch.bmm(z.reshape(N, 1, -1), d.reshape(N, -1, 1)).view(N)
                if m.bias is not None and pname.get(m.bias) in v:
                    w += (d.sum(dim=(2, 3)) * v[pname[m.bias]]).sum(1)
            elif isinstance(m, nn.Linear) and m in grads_out:
                d = grads_out[m].reshape(N, -1, m.out_features)
                a = inputs[m].reshape(N, -1, m.in_features)
                if pname.get(m.weight) in v:
                    w += ((a @ v[pname[m.weight]].t()) * d).sum(dim=(1, 2))
                if m.bias is not None and pname.get(m.bias) in v:
                    w += (d * v[pname[m.bias]]).sum(dim=(1, 2))
            elif isinstance(m, nn.BatchNorm2d) and m.affine and m in bn_out:
                d = bn_out[m]
                # Σ_hw (x̂ v_w + v_b) d per sample, without materialising z: v_w Σ x̂ d + v_b Σ d
                w += _xhat_dot(xhats[m], d) @ v[pname[m.weight]] + d.sum(dim=(2, 3)) @ v[pname[m.bias]]
    w_tau = w.view(n_aug, per_group).sum(1) + w_groups  # = (1/B_aug) vᵀ ∇θ l_τ
    leaves = [t for t in (logits, mu) if t.requires_grad]
    g_logits = g_mu = None
    if leaves:
        logp = policy.log_prob(op_index, magnitude, logits, mu)
        grads = torch.autograd.grad((w_tau.detach() * logp).sum(), leaves, allow_unused=True)
        it = iter(grads)
        g_logits = next(it) if logits.requires_grad else None
        g_mu = next(it) if mu.requires_grad else None
        g_logits = None if g_logits is None else -eta * g_logits
        g_mu = None if g_mu is None else -eta * g_mu
    return list(g), g_logits, g_mu, float(per.detach().mean()), float(val_loss.detach())
