"""Distillation losses (thesis Eq. 4.2-4.4, Table B.9).

All losses take raw logits: ``[B, K]`` for classification or ``[B, K, H, W]`` for dense prediction,
where they are computed per pixel and averaged over the valid pixels.

- :func:`kd_loss` — Hinton et al. (2015): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``. Eq. 4.4 writes
  the two arguments as (student, teacher); the quantity minimised is the usual one, the KL from the
  teacher's tempered distribution (the soft target) to the student's, which equals the soft-target
  cross-entropy up to a term constant in the student. ``T²`` keeps gradient magnitudes comparable
  to the task loss when ``T`` changes.
- :func:`hard_kd_loss` — DeiT's hard-label distillation: cross-entropy to ``argmax`` of the teacher.
- :func:`dkd_loss` — Decoupled KD (Zhao et al., 2022): ``α·TCKD + β·NCKD`` (needs labels).
- :func:`crd_loss` — Contrastive Representation Distillation (Tian et al., 2020) on embeddings:
  the student's and the teacher's features, each through a linear embedding (:class:`CRDEmbed`) and
  L2-normalised, must pick their own image among the batch's (softmax over ``cos/τ``, both
  directions). Table B.9 evaluates CRD *with* KD and ``τ = 0.5``; the workflow's ``distill.loss=crd``
  is ``KD + β·CRD``. fulcra draws the negatives from the batch (the official CRD keeps a memory
  bank of 16384 features with NCE): same objective family, no state outside the step.
- :func:`combine` — ``(1 − α)·task + α·distill`` (Eq. 4.2) with α = 0.5 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "hard_kd_loss", "dkd_loss", "crd_loss", "CRDEmbed", "combine", "distill_loss", "LOSSES"]


def _flatten(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` -> itself; ``[B, K, H, W]`` -> ``[B·H·W, K]`` (one row per pixel)."""
    if logits.ndim == 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


def _valid_mask(student: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    return mask.reshape(-1).to(torch.bool) if student.ndim > 2 else mask.to(torch.bool)


def _mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Hinton KD: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` averaged over samples (pixels).

    Args:
        student: ``[B, K]`` or ``[B, K, H, W]`` logits (gradients flow here).
        teacher: same shape, logits (detached by the caller or here).
        temperature: ``T`` (2 in the thesis).
        mask: optional ``[B]`` / ``[B, H, W]`` bool of samples/pixels to count (e.g. not ignore_index).

    Returns:
        scalar tensor.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    t = float(temperature)
    s = _flatten(student).float() / t
    q = _flatten(teacher.detach()).float() / t
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(q, -1)
    per = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # [N]
    return t * t * _mean(per, _valid_mask(student, mask))


def hard_kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None, **_: object
) -> torch.Tensor:
    """Cross-entropy of the student to the teacher's arg-max class (per pixel for dense logits)."""
    s = _flatten(student).float()
    target = _flatten(teacher.detach()).argmax(-1)
    per = F.cross_entropy(s, target, reduction="none")
    return _mean(per, _valid_mask(student, mask))


def dkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    mask: torch.Tensor | None = None,
    **_: object,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., 2022), ``α·TCKD + β·NCKD`` with their defaults (T=4, α=1, β=8).

    TCKD: ``T²·KL`` between the binary (target, non-target) distributions of teacher and student;
    NCKD: ``T²·KL`` between the distributions over the non-target classes only.

    Args:
        labels: ``[B]`` (or ``[B, H, W]``) int64 ground-truth classes; ignored pixels must be masked.
    """
    t = float(temperature)
    s = _flatten(student).float() / t
    q = _flatten(teacher.detach()).float() / t
    y = labels.reshape(-1).clamp(0, s.shape[-1] - 1)
    gt = F.one_hot(y, s.shape[-1]).to(torch.bool)
    ps, pt = F.softmax(s, -1), F.softmax(q, -1)
    # binary target / non-target probabilities
    bs = torch.stack([(ps * gt).sum(-1), (ps * ~gt).sum(-1)], -1).clamp_min(1e-12)
    bt = torch.stack([(pt * gt).sum(-1), (pt * ~gt).sum(-1)], -1).clamp_min(1e-12)
    tckd = (bt * (bt.log() - bs.log())).sum(-1)
    # non-target distributions: softmax with the target logit removed (-inf)
    big = torch.finfo(s.dtype).max
    log_ns = F.log_softmax(s.masked_fill(gt, -big), -1)
    log_nt = F.log_softmax(q.masked_fill(gt, -big), -1)
    nckd = (log_nt.exp() * (log_nt - log_ns)).masked_fill(gt, 0).sum(-1)
    per = t * t * (alpha * tckd + beta * nckd)
    return _mean(per, _valid_mask(student, mask))


class CRDEmbed(torch.nn.Module):
    """CRD's embedding heads: linear maps of student ``[B, d_s]`` and teacher ``[B, d_t]`` features
    to ``dim`` (128, as the official CRD), L2-normalised. Trained with the student."""

    def __init__(self, d_student: int, d_teacher: int, dim: int = 128):
        super().__init__()
        self.student = torch.nn.Linear(int(d_student), int(dim))
        self.teacher = torch.nn.Linear(int(d_teacher), int(dim))

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.student(fs.float()), dim=-1), F.normalize(self.teacher(ft.detach().float()), dim=-1)


def crd_loss(zs: torch.Tensor, zt: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Contrastive representation distillation over a batch of embeddings.

    Args:
        zs: ``[B, d]`` student embeddings; zt: ``[B, d]`` teacher embeddings (row ``i`` of both is
            image ``i``); both L2-normalised (:class:`CRDEmbed`).
        temperature: ``τ`` (0.5 in Table B.9).

    Returns:
        scalar: ``½·(CE(zs·ztᵀ/τ, i) + CE(zt·zsᵀ/τ, i))``, the positive pair of each row against the
        batch's other images as negatives.
    """
    if zs.shape != zt.shape or zs.ndim != 2:
        raise ValueError(f"crd_loss needs two [B, d] embeddings of one shape, got {tuple(zs.shape)}, {tuple(zt.shape)}")
    logits = zs @ zt.t() / float(temperature)
    target = torch.arange(zs.shape[0], device=zs.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


LOSSES = {"kd": kd_loss, "hard": hard_kd_loss, "dkd": dkd_loss, "crd": kd_loss}


def distill_loss(
    name: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch by name on logits: ``kd`` (Hinton), ``hard`` (hard-label KD) or ``dkd`` (needs ``labels``);
    ``crd`` gives its KD part here (the contrastive part needs features: :func:`crd_loss`)."""
    if name in ("kd", "crd"):
        return kd_loss(student, teacher, temperature, mask=mask)
    if name == "hard":
        return hard_kd_loss(student, teacher, mask=mask)
    if name == "dkd":
        if labels is None:
            raise ValueError("dkd needs labels")
        return dkd_loss(student, teacher, labels, mask=mask)
    raise ValueError(f"unknown distillation loss {name!r} (choose kd, hard, dkd or crd)")


def combine(task: torch.Tensor, distill: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Eq. 4.2: ``(1 − α)·task + α·distill``."""
    return (1.0 - alpha) * task + alpha * distill
