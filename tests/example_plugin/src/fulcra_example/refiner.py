"""A refiner plugin written only against fulcra's ``Refiner`` interface.

``neighbour_vote``: scores spread over the ``k`` nearest neighbours of each primitive, weighted by
the cosine similarity of their features, for ``steps`` rounds (each primitive keeps the larger of
its own score and its neighbours' weighted mean); the result, rescaled to a maximum of 1 per
column, is set to 0 under ``keep`` so that the workflows' ``> 0`` threshold selects the rest. It
accepts the workflows' ``prompt=`` and ``weights=`` and ignores them, as the interface allows.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["NeighbourVote"]


class NeighbourVote:
    """Spread scores to similar neighbours.

    Args:
        k: neighbours per primitive (Euclidean, on the positions).
        steps: rounds of spreading.
        keep: scores under this fraction of the column's maximum become 0.
    """

    def __init__(self, k: int = 8, steps: int = 3, keep: float = 0.5):
        if k < 1 or steps < 0 or not 0.0 <= keep < 1.0:
            raise ValueError(f"refiners 'neighbour_vote': need k >= 1, steps >= 0, 0 <= keep < 1 (got {k}, {steps}, {keep})")
        self.k, self.steps, self.keep = int(k), int(steps), float(keep)

    def refine(self, positions: torch.Tensor, features: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        squeeze = scores.ndim == 1
        s = (scores[:, None] if squeeze else scores).float().clamp_min(0)  # [N, Q]
        pos, f = positions.float().to(s.device), features.float().to(s.device)
        n = pos.shape[0]
        k = min(self.k, n - 1)
        if k > 0:
            nbrs = torch.cdist(pos, pos).topk(k + 1, largest=False).indices[:, 1:]  # [N, k], self excluded
            fn = torch.nn.functional.normalize(f, dim=1)
            sim = (fn[:, None, :] * fn[nbrs]).sum(-1).clamp_min(0)  # [N, k]
            for _ in range(self.steps):
                s = torch.maximum(s, (sim[..., None] * s[nbrs]).sum(1) / k)
        mx = s.amax(0, keepdim=True)
        s = torch.where(mx > 0, s / mx.clamp_min(1e-30), s)
        s = torch.where(s >= self.keep, s, torch.zeros_like(s))
        return s[:, 0] if squeeze else s
