"""Anchors and unary terms of graph diffusion (app. C.1.3 and C.1.4), one column per prompt.

All functions take the graph's l2-normalised features ``f`` ``[N, D]`` and return tensors in the
same node order.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["top_fraction_anchors", "rbf_unary", "logreg_unary", "relevancy_anchors", "otsu", "iterated_otsu"]


def otsu(values: np.ndarray | torch.Tensor) -> float:
    """Otsu's threshold (scikit-image) of a 1D set of values; the value itself when they are constant."""
    from skimage.filters import threshold_otsu

    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.astype(np.float64).ravel()
    if v.size == 0:
        raise ValueError("Otsu threshold of an empty set")
    if np.all(v == v[0]):
        return float(v[0])
    return float(threshold_otsu(v))


def iterated_otsu(values: torch.Tensor, times: int) -> float:
    """Apply Otsu ``times`` times, each time among the values above the previous threshold."""
    v = values
    t = float(v.min())
    for _ in range(times):
        if v.numel() < 2:
            break
        t = otsu(v)
        above = v[v > t]
        if above.numel() == 0:
            break
        v = above
    return t


def top_fraction_anchors(g0: torch.Tensor, fraction: float, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the top ``fraction`` of the positive entries of each column of ``g0`` ``[N, Q]``, zero the rest.

    C.1.3: the uplifted reference mask or scribbles, "retaining only the top 10% of Gaussians with
    positive mask values". ``fraction >= 1`` keeps every positive entry.

    Args:
        tiebreak: optional ``[N]`` values ranking equal entries (larger first), e.g. the reference
            view's rendering weights: a normalised uplifted mask is exactly 1 on every Gaussian whose
            contributions all fall inside it, the faint ones hidden behind the object as much as the
            visible surface; without it ties resolve by index.
    """
    out = torch.zeros_like(g0)
    for j in range(g0.shape[1]):
        col = g0[:, j]
        pos = torch.nonzero(col > 0, as_tuple=False).flatten()
        if pos.numel() == 0:
            continue
        keep = max(1, int(round(min(fraction, 1.0) * pos.numel())))
        # stable sorts, not topk: ties resolve by the tie-break then by index, identically on CPU
        # and CUDA, so the same anchors are chosen on every device
        if tiebreak is not None:
            pos = pos[torch.sort(tiebreak[pos], descending=True, stable=True).indices]
        top = pos[torch.sort(col[pos], descending=True, stable=True).indices[:keep]]
        out[top, j] = col[top]
    return out


def negative_gate(
    P: torch.Tensor,  # [N, Q]
    f: torch.Tensor,  # [N, D]
    anchors: torch.Tensor,  # [N, Q] bool, the positive anchors
    negatives: torch.Tensor,  # [N, Q] bool, the negative anchors
    f_eval: torch.Tensor | None = None,
    P_eval: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Negative prompts: ``P = 0`` on every node whose feature lies nearer the negative anchors' mean
    feature than the positive anchors' (columns without negatives are unchanged).

    The official code uplifts positive minus negative scribbles and scores Gaussians by their
    similarity to the positives minus their similarity to the negatives; this is that sign as a gate
    on the unary term, so the diffusion neither keeps nor crosses what looks like a negative.
    """
    P = P.clone()
    P_eval = None if P_eval is None else P_eval.clone()
    for j in range(P.shape[1]):
        a, n = anchors[:, j], negatives[:, j] & ~anchors[:, j]
        if not bool(a.any()) or not bool(n.any()):
            continue
        mp, mn = f[a].mean(0), f[n].mean(0)
        P[:, j] = torch.where(((f - mp) ** 2).sum(1) <= ((f - mn) ** 2).sum(1), P[:, j], torch.zeros_like(P[:, j]))
        if P_eval is not None and f_eval is not None and len(f_eval):
            near = ((f_eval - mp) ** 2).sum(1) <= ((f_eval - mn) ** 2).sum(1)
            P_eval[:, j] = torch.where(near, P_eval[:, j], torch.zeros_like(P_eval[:, j]))
    return P, P_eval


def rbf_unary(
    f: torch.Tensor, anchors: torch.Tensor, bandwidth: float, f_eval: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scribble unary term: ``P(f_i) = S_f(f_i, f̄)`` with ``f̄`` the mean anchor feature (C.1.3, case 1).

    ``f̄`` is l2-normalised, so ``P`` is a monotone function of the cosine similarity to it; the RBF
    bandwidth is ``bandwidth * s**2`` with ``s`` the median distance of the anchors to ``f̄``.

    Args:
        f: ``[N, D]`` l2-normalised features.
        anchors: ``[N, Q]`` bool.
        bandwidth: ``b``.

        f_eval: optional ``[M, D]`` l2-normalised features of other nodes to score with the same ``P``.

    Returns:
        ``[N, Q]`` float32 in (0, 1] (and ``[M, Q]`` for ``f_eval`` when given).
    """
    P = torch.zeros(f.shape[0], anchors.shape[1], dtype=torch.float32, device=f.device)
    Pe = (
        None if f_eval is None else torch.zeros(f_eval.shape[0], anchors.shape[1], dtype=torch.float32, device=f.device)
    )
    for j in range(anchors.shape[1]):
        a = anchors[:, j]
        if not bool(a.any()):
            continue
        mean = f[a].mean(0)
        mean = mean / (mean.norm() + 1e-8)
        d2 = (2.0 - 2.0 * (f @ mean)).clamp_min(0)
        s2 = float(np.median(d2[a].sqrt().cpu().numpy())) ** 2
        s2 = max(s2, 1e-6)  # anchors identical to their mean
        P[:, j] = torch.exp(-d2 / (bandwidth * s2))
        if Pe is not None:
            Pe[:, j] = torch.exp(-(2.0 - 2.0 * (f_eval.to(f.device) @ mean)).clamp_min(0) / (bandwidth * s2))
    return P if Pe is None else (P, Pe)


def logreg_unary(
    f: torch.Tensor,  # [N, D]
    labels: torch.Tensor,  # [N, Q] bool
    bandwidth: float,
    C: float,
    weights: torch.Tensor | None = None,  # [N]
    max_samples: int = 100_000,
    seed: int = 0,
    f_eval: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mask / relevancy unary term: ``P = L(f)^{1/b}`` with ``L`` a logistic regression (C.1.3 case 2, C.1.4).

    One scikit-learn ``LogisticRegression(C, class_weight="balanced")`` per column, trained on the
    features with the column's positive labels (sample weights: the Gaussians' rendering weight sums
    when given); at most ``max_samples`` nodes are used for fitting (all positives kept, negatives
    subsampled with a fixed seed; the balanced class weights keep the decision unbiased).

    Returns:
        ``[N, Q]`` float32 in [0, 1] (and ``[M, Q]`` for ``f_eval`` ``[M, D]`` when given: other
        nodes scored by the same models).
    """
    from sklearn.linear_model import LogisticRegression

    fn = f.detach().cpu().numpy().astype(np.float32)
    w = weights.detach().cpu().numpy().astype(np.float64) if weights is not None else None
    rng = np.random.default_rng(seed)
    out = np.zeros((fn.shape[0], labels.shape[1]), dtype=np.float32)
    fe = None if f_eval is None else f_eval.detach().cpu().numpy().astype(np.float32)
    out_e = None if fe is None else np.zeros((fe.shape[0], labels.shape[1]), dtype=np.float32)
    for j in range(labels.shape[1]):
        y = labels[:, j].detach().cpu().numpy().astype(bool)
        if y.all() or not y.any():
            out[:, j] = 1.0 if y.all() else 0.0
            if out_e is not None:
                out_e[:, j] = out[0, j]
            continue
        idx = np.arange(len(y))
        if len(idx) > max_samples:
            pos, neg = idx[y], idx[~y]
            pos = pos if len(pos) <= max_samples // 2 else rng.choice(pos, max_samples // 2, replace=False)
            neg = rng.choice(neg, min(len(neg), max_samples - len(pos)), replace=False)
            idx = np.sort(np.concatenate([pos, neg]))
        model = LogisticRegression(C=C, class_weight="balanced", max_iter=1000)
        model.fit(fn[idx], y[idx].astype(int), sample_weight=None if w is None else w[idx])
        out[:, j] = model.predict_proba(fn)[:, 1]
        if out_e is not None and len(fe):
            out_e[:, j] = model.predict_proba(fe)[:, 1]
    P = torch.from_numpy(out).to(f.device).pow(1.0 / bandwidth)
    return P if out_e is None else (P, torch.from_numpy(out_e).to(f.device).pow(1.0 / bandwidth))


def relevancy_anchors(relevancy: torch.Tensor, quantile: float = 0.999) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive set and initial weights from 3D relevancies (C.1.4, "graph construction and node initialization").

    Per column: rescale to [0, 1]; the positive set is ``r > otsu(r[r > 0.5])``; ``g_0`` keeps the
    relevancies at or above ``min(quantile_{0.999}(r), t)`` where ``t`` comes from two more Otsu
    iterations among the positive set, zero elsewhere.

    Args:
        relevancy: ``[N, Q]`` relevancy scores (any range).

    Returns:
        ``(positives [N, Q] bool, g0 [N, Q] float32)``.
    """
    n, q = relevancy.shape
    pos = torch.zeros(n, q, dtype=torch.bool, device=relevancy.device)
    g0 = torch.zeros(n, q, dtype=torch.float32, device=relevancy.device)
    for j in range(q):
        r = relevancy[:, j].float()
        lo, hi = float(r.min()), float(r.max())
        if hi <= lo:
            continue
        nr = (r - lo) / (hi - lo)
        upper = nr[nr > 0.5]
        t = otsu(upper) if upper.numel() > 1 else 0.5
        p = nr > t
        if not bool(p.any()):
            p = nr >= 1.0
        pos[:, j] = p
        t2 = iterated_otsu(nr[p], 2) if int(p.sum()) > 1 else 1.0
        thr = min(float(torch.quantile(nr, quantile)) if n <= 16_000_000 else float(nr.max()), t2)
        g0[:, j] = torch.where(nr >= thr, r - lo + 1e-12, torch.zeros_like(r))
    return pos, g0
