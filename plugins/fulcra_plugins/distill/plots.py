"""PCA feature plots of Fig. 4.1 (classification) and Fig. 4.4 (segmentation), app. B.1.5.

Classification: the penultimate features of the first ``max_classes`` classes, PCA fitted on the
original images' features, the two main components coloured by class; the teacher's panel also
shows the synthetic images' features in grey. Segmentation: patch embeddings, labels pooled to the
patch grid (one-hot average), patches kept when one class covers more than 90% of them, the
``max_classes`` classes whose patch counts are closest to the median.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["pca_2d", "patch_points", "pca_figure", "distill_pca_plot"]


def pca_2d(features: torch.Tensor, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Project ``features`` ``[M, D]`` (and ``extra`` ``[M', D]`` with the same basis) on their two
    main principal components (PCA fitted on ``features`` only)."""
    x = features.double()
    mean = x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:2].T  # [D, 2]
    proj = ((x - mean) @ basis).float()
    return proj, (None if extra is None or extra.numel() == 0 else ((extra.double() - mean) @ basis).float())


def patch_points(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    purity: float = 0.9,
    max_classes: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch embeddings ``[N, D, h, w]`` + label maps ``[N, H, W]`` -> points ``[M, D]`` and classes ``[M]``."""
    N, D, h, w = feats.shape
    lab = labels.clone().long()
    valid = lab != ignore_index
    onehot = F.one_hot(lab.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid[:, None]
    frac = F.adaptive_avg_pool2d(onehot, (h, w))  # [N, K, h, w]: class share of each patch
    p, cls = frac.max(1)
    keep = p > purity
    pts = feats.permute(0, 2, 3, 1)[keep]
    cls = cls[keep]
    counts = torch.bincount(cls, minlength=num_classes).float()
    present = torch.nonzero(counts > 0).flatten()
    if present.numel() > max_classes:
        med = counts[present].median()
        present = present[(counts[present] - med).abs().argsort()[:max_classes]]
    sel = torch.isin(cls, present)
    return pts[sel], cls[sel]


def pca_figure(
    panels: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]], path: str | Path, max_points: int = 4000
) -> Path:
    """One scatter per panel ``(title, features [M, D], classes [M], synthetic features or None)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    g = torch.Generator().manual_seed(0)
    for ax, (title, feats, cls, syn) in zip(axes[0], panels):
        if feats.shape[0] > max_points:
            idx = torch.randperm(feats.shape[0], generator=g)[:max_points]
            feats, cls = feats[idx], cls[idx]
        if syn is not None and syn.shape[0] > max_points:
            syn = syn[torch.randperm(syn.shape[0], generator=g)[:max_points]]
        proj, sproj = pca_2d(feats, syn)
        if sproj is not None:
            ax.scatter(sproj[:, 0], sproj[:, 1], s=3, c="lightgray", label="synthetic")
        cmap = plt.get_cmap("tab20")
        vmax = max(19, int(cls.max()) if cls.numel() else 19)
        ax.scatter(proj[:, 0], proj[:, 1], s=3, c=cls.numpy(), cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_xticks([]), ax.set_yticks([])
    # one legend for the figure: a marker per class (and the synthetic images when shown)
    classes = sorted({int(c) for _, _, cl, _ in panels for c in cl.unique().tolist()})
    handles = [
        plt.Line2D([], [], ls="", marker="o", ms=4, color=cmap(c / max(vmax, 1)), label=f"class {c}")
        for c in classes[:20]
    ]
    if any(syn is not None for *_, syn in panels):
        handles.append(plt.Line2D([], [], ls="", marker="o", ms=4, color="lightgray", label="synthetic"))
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("test features, first two principal components (per model), coloured by true class")
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class _SquareView:
    """Dense items resized to ``size`` x ``size`` (image bilinear, labels nearest), so evaluation
    images of varied sizes (ADE20K, Cityscapes, VOC) stack into one batch for the PCA."""

    def __init__(self, dataset: Any, size: int):
        self.dataset, self.size = dataset, int(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import torch.nn.functional as F

        x, y = self.dataset[i]
        y = torch.as_tensor(y)
        if y.ndim != 2 or tuple(x.shape[-2:]) == tuple(y.shape) == (self.size, self.size):
            return x, y
        s = (self.size, self.size)
        xf = F.interpolate(x[None].float(), size=s, mode="bilinear", align_corners=False, antialias=True)[0]
        x = xf.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else xf
        y = F.interpolate(y[None, None].float(), size=s, mode="nearest")[0, 0].long()
        return x, y


def _points(model, dataset, device, num_classes, ignore_index, max_classes, limit=500):
    from .training import collect_features

    size = getattr(model, "image_size", None)
    if size:
        dataset = _SquareView(dataset, size)
    feats, ys = collect_features(model, dataset, device, limit=limit)
    if feats.ndim == 4:
        return patch_points(feats, ys, num_classes, ignore_index, max_classes=max_classes)
    keep = ys < max_classes
    return feats[keep], ys[keep]


def distill_pca_plot(
    workflow: Any,
    ctx: Any,
    tnode: dict,
    snode: dict,
    K: int,
    test: Any,
    train: Any,
    synthetic: torch.Tensor | None,
    rows: list,
    max_classes: int = 20,
) -> Path | None:
    """Teacher / finetuned / distilled panels for the first seed, written to ``OUT/pca.png``."""
    from .training import images_features

    seed = workflow.cfg.seeds[0]
    ignore = getattr(fulcra_task(workflow), "ignore_index", 255)
    panels = []
    head = Path(ctx.out) / f"seed{seed}" / "teacher_head.pt"
    if head.is_file():
        from fulcra.engine import load_checkpoint

        teacher = workflow._teacher(tnode, K).to(ctx.device)
        teacher.head.load_state_dict(load_checkpoint(head, map_location=ctx.device))
        pts, cls = _points(teacher.eval(), test, ctx.device, K, ignore, max_classes)
        syn = None
        if synthetic is not None and pts.ndim == 2 and synthetic.shape[0] and teacher.task == "classification":
            syn = images_features(teacher, synthetic[:1000], ctx.device)
        panels.append(("teacher (probed)", pts, cls, syn))
    for row, title in (
        ("student_finetuned", "student finetuned"),
        ("student_alone", "student alone"),
        ("distilled_synthetic", "student distilled (+synthetic)"),
        ("distilled", "student distilled"),
    ):
        if (
            row not in rows
            or (row == "student_alone" and "student_finetuned" in rows)
            or (row == "distilled" and "distilled_synthetic" in rows)
        ):
            continue
        model = workflow.load_row_model(ctx, row, snode, K, seed)
        if model is not None:
            pts, cls = _points(model, test, ctx.device, K, ignore, max_classes)
            panels.append((title, pts, cls, None))
    if not panels:
        return None
    return pca_figure(panels, Path(ctx.out) / "pca.png")


def fulcra_task(workflow):
    import fulcra

    return fulcra.create("tasks", workflow._node("task"))
