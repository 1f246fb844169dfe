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
- :func:`combine` — ``(1 − α)·task + α·distill`` (Eq. 4.2) with α = 0.5 by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "hard_kd_loss", "dkd_loss", "combine", "distill_loss", "LOSSES"]


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


LOSSES = {"kd": kd_loss, "hard": hard_kd_loss, "dkd": dkd_loss}


def distill_loss(
    name: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch by name: ``kd`` (Hinton), ``hard`` (hard-label KD) or ``dkd`` (needs ``labels``)."""
    if name == "kd":
        return kd_loss(student, teacher, temperature, mask=mask)
    if name == "hard":
        return hard_kd_loss(student, teacher, mask=mask)
    if name == "dkd":
        if labels is None:
            raise ValueError("dkd needs labels")
        return dkd_loss(student, teacher, labels, mask=mask)
    raise ValueError(f"unknown distillation loss {name!r} (choose kd, hard or dkd)")


def combine(task: torch.Tensor, distill: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Eq. 4.2: ``(1 − α)·task + α·distill``."""
    return (1.0 - alpha) * task + alpha * distill
