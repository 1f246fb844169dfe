"""A refiner plugin written only against fulcra's ``Refiner`` interface.

``neighbour_vote``: the primitives whose score reaches ``keep`` x the column's maximum are seeds; a
region grows from them for ``steps`` rounds over the ``k`` nearest neighbours (on the positions)
whose features have a cosine similarity of at least ``similarity``. The result is 1 on the region
and 0 elsewhere, so the workflows' ``> 0`` threshold selects the region. It accepts the workflows'
``prompt=`` and ``weights=`` and ignores them, as the interface allows.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["NeighbourVote"]


class NeighbourVote:
    """Grow a region from the strongest scores over similar neighbours.

    Args:
        k: neighbours per primitive (Euclidean, on the positions).
        steps: rounds of growth.
        keep: seeds are the scores at or above this fraction of the column's maximum.
        similarity: least cosine similarity of the features along a step.
    """

    def __init__(self, k: int = 8, steps: int = 10, keep: float = 0.5, similarity: float = 0.8):
        if k < 1 or steps < 0 or not 0.0 < keep <= 1.0 or not -1.0 <= similarity <= 1.0:
            raise ValueError(
                f"refiners 'neighbour_vote': need k >= 1, steps >= 0, 0 < keep <= 1, -1 <= similarity <= 1 "
                f"(got {k}, {steps}, {keep}, {similarity})"
            )
        self.k, self.steps, self.keep, self.similarity = int(k), int(steps), float(keep), float(similarity)

    def refine(
        self, positions: torch.Tensor, features: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        squeeze = scores.ndim == 1
        s = (scores[:, None] if squeeze else scores).float().clamp_min(0)  # [N, Q]
        pos, f = positions.float().to(s.device), features.float().to(s.device)
        mx = s.amax(0, keepdim=True)
        region = (s >= self.keep * mx) & (mx > 0)  # [N, Q] seeds
        k = min(self.k, pos.shape[0] - 1)
        if k > 0:
            nbrs = torch.cdist(pos, pos).topk(k + 1, largest=False).indices[:, 1:]  # [N, k], self excluded
            fn = torch.nn.functional.normalize(f, dim=1)
            link = (fn[:, None, :] * fn[nbrs]).sum(-1) >= self.similarity  # [N, k]
            for _ in range(self.steps):
                grown = region | (region[nbrs] & link[..., None]).any(1)
                if torch.equal(grown, region):
                    break
                region = grown
        out = region.float()
        return out[:, 0] if squeeze else out
