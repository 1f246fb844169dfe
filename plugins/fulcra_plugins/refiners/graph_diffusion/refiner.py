"""The ``graph_diffusion`` refiner: LUDVIG's graph diffusion over a scene's Gaussians (§5.3.3, app. C.1.3-C.1.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ._diffusion import power_iteration, reachable
from ._graph import SceneGraph, build_scene_graph, fingerprint
from ._unary import logreg_unary, rbf_unary, relevancy_anchors, top_fraction_anchors

__all__ = ["GraphDiffusion", "DiffusionResult"]

PROMPTS = ("scribble", "mask", "relevancy")


@dataclass
class DiffusionResult:
    """Everything :meth:`GraphDiffusion.refine` computed, in the caller's node order.

    Attributes:
        scores: ``[N, Q]`` the refined scores (what ``refine`` returns).
        unary: ``[N, Q]`` the unary term ``P``.
        g0: ``[N, Q]`` the initial weights (non-zero on the anchors).
        reached: ``[N, Q]`` bool, nodes reached within ``T`` steps.
        diffused: ``[N, Q]`` ``g_T`` (column-normalised), or None when not computed.
    """

    scores: torch.Tensor
    unary: torch.Tensor
    g0: torch.Tensor
    reached: torch.Tensor
    diffused: Optional[torch.Tensor] = None


class GraphDiffusion:
    """Refine per-Gaussian scores by diffusion on a kNN graph weighted by feature similarity (LUDVIG).

    The graph (built once per scene, cached, reused across prompts): the symmetrised ``k``-nearest
    neighbour graph of the Gaussian centres, with ``A_ij = S_f(f_i, f_j) P(f_i)^½ P(f_j)^½`` (Eq. 5.7),
    ``S_f`` the RBF of Eq. C.1 on l2-normalised features with bandwidth ``bandwidth * s_f²`` (``s_f``
    the median feature distance over the edges). Diffusion: ``T = steps`` power iterations
    ``g_{t+1} = A g_t / ||g_t||`` (Eq. 5.8), many prompts at once as columns, sparse CSR on CPU or GPU,
    only over the nodes a prompt can reach.

    Prompts (``prompt=``, one per call; ``scores`` has one column per prompt):

    - ``scribble``: ``scores`` = the uplifted scribbles; anchors = the top ``anchor_fraction`` of the
      positive Gaussians; ``P`` = RBF similarity to the mean anchor feature (bandwidth
      ``unary_bandwidth``, default 1).
    - ``mask``: ``scores`` = the uplifted full reference mask; anchors as above; ``P = L^{1/b}`` with
      ``L`` a logistic regression (C = ``logreg_c``, default 0.01) trained with the anchors as positives.
    - ``relevancy``: ``scores`` = 3D relevancies (e.g. CLIP, Eq. C.2), one column per text query;
      positives from Otsu over relevancies above 0.5, ``P = L^{1/b}`` (C = 0.001, b = 2 by default),
      ``g_0`` restricted to the top relevancies by two more Otsu iterations (C.1.4).

    Output (``output=``): ``unary_on_reachable`` (default for scribble and mask) gives
    ``h_i = P(f_i)`` on the nodes reached after ``T`` steps and 0 elsewhere, with ``A`` binarised at
    ``binarize`` (default 1e-5); ``diffused`` (default for relevancy) gives ``g_T`` rescaled to a max of 1
    per column, ``A`` not binarised unless asked.
    """

    @dataclass
    class Config:
        k: int = field(default=16, metadata={"help": "Euclidean neighbours per Gaussian (the reference code uses 200)"})
        steps: int = field(default=100, metadata={"help": "diffusion steps T of Eq. 5.8"})
        bandwidth: float = field(default=1.0, metadata={"help": "b of the RBF S_f (Eq. C.1); LERF uses 0.5"})
        prompt: str = field(default="scribble", metadata={"help": "default prompt kind: scribble | mask | relevancy"})
        unary_bandwidth: Optional[float] = field(
            default=None, metadata={"help": "b of the unary term P (None: 1 for scribble/mask, 2 for relevancy)"}
        )
        anchor_fraction: float = field(
            default=0.1, metadata={"help": "fraction of positive Gaussians kept as anchors (scribble, mask)"}
        )
        binarize: Optional[float] = field(
            default=None,
            metadata={
                "help": "binarise A at this threshold (None: 1e-5 for scribble/mask, off for relevancy; <= 0: off)"
            },
        )
        logreg_c: Optional[float] = field(
            default=None, metadata={"help": "logistic regression C (None: 0.01 for mask, 0.001 for relevancy)"}
        )
        output: Optional[str] = field(
            default=None, metadata={"help": "unary_on_reachable | diffused (None: by prompt)"}
        )
        self_loops: bool = field(default=True, metadata={"help": "keep A_ii (a lazy walk; as the reference code)"})
        device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
        max_logreg_samples: int = field(
            default=100_000, metadata={"help": "nodes used to fit each logistic regression"}
        )
        seed: int = field(default=0, metadata={"help": "seed of the logistic-regression subsampling"})
        min_weight: float = field(
            default=0.05,
            metadata={
                "help": "with weights=: P = 0 for Gaussians whose weight sum is under this fraction of the median (barely seen: their uplifted features are their occluders')"
            },
        )
        median: str = field(
            default="anchors",
            metadata={
                "help": "s_f of Eq. C.1: median feature distance over the edges of the anchors (per prompt, as the reference code) or of the whole graph ('edges')"
            },
        )

    def __init__(
        self,
        k: int = 16,
        steps: int = 100,
        bandwidth: float = 1.0,
        prompt: str = "scribble",
        unary_bandwidth: Optional[float] = None,
        anchor_fraction: float = 0.1,
        binarize: Optional[float] = None,
        logreg_c: Optional[float] = None,
        output: Optional[str] = None,
        self_loops: bool = True,
        device: str = "auto",
        max_logreg_samples: int = 100_000,
        seed: int = 0,
        median: str = "anchors",
        min_weight: float = 0.05,
    ):
        if prompt not in PROMPTS:
            raise ValueError(f"graph_diffusion: prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        if output not in (None, "unary_on_reachable", "diffused"):
            raise ValueError(f"graph_diffusion: output must be unary_on_reachable or diffused, got {output!r}")
        if median not in ("anchors", "edges"):
            raise ValueError(f"graph_diffusion: median must be anchors or edges, got {median!r}")
        self.median, self.min_weight = median, float(min_weight)
        if k < 1 or steps < 0 or bandwidth <= 0:
            raise ValueError(f"graph_diffusion: need k >= 1, steps >= 0, bandwidth > 0 (got {k}, {steps}, {bandwidth})")
        self.k, self.steps, self.bandwidth, self.prompt = int(k), int(steps), float(bandwidth), prompt
        self.unary_bandwidth, self.anchor_fraction = unary_bandwidth, float(anchor_fraction)
        self.binarize, self.logreg_c, self.output = binarize, logreg_c, output
        self.self_loops, self.device = bool(self_loops), device
        self.max_logreg_samples, self.seed = int(max_logreg_samples), int(seed)
        self._graph: SceneGraph | None = None

    # -- graph -----------------------------------------------------------------------------------
    def _device(self, like: torch.Tensor) -> torch.device:
        # "auto" follows the data: a scene on the GPU diffuses on the GPU
        return like.device if self.device == "auto" else torch.device(self.device)

    def graph(self, positions: torch.Tensor, features: torch.Tensor) -> SceneGraph:
        """The scene graph for ``positions`` ``[N, 3]`` and ``features`` ``[N, D]``, built once and cached.

        Calling again with the same scene (same tensors or equal values) returns the cached graph;
        another scene replaces it.
        """
        fp = fingerprint(positions, features)
        g = self._graph
        if g is None or g.fingerprint != fp or g.k != self.k:
            g = build_scene_graph(
                positions,
                features,
                k=self.k,
                bandwidth=self.bandwidth,
                self_loops=self.self_loops,
                device=self._device(positions),
                fp=fp,
            )
            self._graph = g
        elif g.bandwidth != self.bandwidth:
            g = self._graph = g.with_bandwidth(self.bandwidth)
        return g

    # -- refine ----------------------------------------------------------------------------------
    def refine(
        self, positions: torch.Tensor, features: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Refine ``scores`` by graph diffusion.

        Args:
            positions: ``[N, 3]`` Gaussian centres.
            features: ``[N, D]`` per-Gaussian features defining similarity (e.g. uplifted DINOv2).
            scores: ``[N]`` or ``[N, Q]`` non-negative initial scores, one column per prompt (uplifted
                scribbles or mask, or relevancies).
            prompt: ``scribble`` | ``mask`` | ``relevancy`` (default: the configured one).
            weights: optional ``[N]`` rendering-weight sums (sample weights of the logistic regression).
            anchors: optional ``[N, Q]`` bool overriding the anchor selection (``g_0`` = scores on them).

        Returns:
            ``[N, Q]`` (or ``[N]`` for a 1D input) float32 refined scores in [0, 1].
        """
        return self.run(positions, features, scores, **kwargs).scores

    def run(
        self,
        positions: torch.Tensor,
        features: torch.Tensor,
        scores: torch.Tensor,
        prompt: str | None = None,
        weights: torch.Tensor | None = None,
        anchors: torch.Tensor | None = None,
        return_diffused: bool = False,
    ) -> DiffusionResult:
        """As :meth:`refine`, returning every intermediate (see :class:`DiffusionResult`)."""
        prompt = prompt or self.prompt
        if prompt not in PROMPTS:
            raise ValueError(f"graph_diffusion: prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        squeeze = scores.ndim == 1
        s = scores[:, None] if squeeze else scores
        if s.ndim != 2 or s.shape[0] != positions.shape[0]:
            raise ValueError(
                f"graph_diffusion: scores must be [N] or [N, Q] with N={positions.shape[0]}, got {list(scores.shape)}"
            )
        G = self.graph(positions, features)
        dev = G.device
        perm = G.perm
        s_m = s.detach().float().to(dev)[perm]  # Morton order from here on
        w_m = weights.detach().float().to(dev)[perm] if weights is not None else None
        f = G.features

        if prompt == "relevancy":
            positives, g0 = relevancy_anchors(s_m)
            if anchors is not None:
                a = anchors.to(dev)[perm].reshape(g0.shape).bool()
                g0 = torch.where(a, s_m.clamp_min(1e-12), torch.zeros_like(s_m))
            b = self.unary_bandwidth if self.unary_bandwidth is not None else 2.0
            C = self.logreg_c if self.logreg_c is not None else 1e-3
            P = logreg_unary(f, positives, b, C, w_m, self.max_logreg_samples, self.seed)
            binarize = self.binarize if self.binarize is not None and self.binarize > 0 else None
            output = self.output or "diffused"
        else:
            s_pos = s_m.clamp_min(0)
            if anchors is not None:
                a = anchors.to(dev)[perm].reshape(s_pos.shape).bool()
                g0 = torch.where(a, s_pos.clamp_min(1e-12), torch.zeros_like(s_pos))
            else:
                g0 = top_fraction_anchors(s_pos, self.anchor_fraction)
            anchor_mask = g0 > 0
            b = self.unary_bandwidth if self.unary_bandwidth is not None else 1.0
            if prompt == "scribble":
                P = rbf_unary(f, anchor_mask, b)
            else:
                C = self.logreg_c if self.logreg_c is not None else 1e-2
                P = logreg_unary(f, anchor_mask, b, C, w_m, self.max_logreg_samples, self.seed)
            binarize = 1e-5 if self.binarize is None else (self.binarize if self.binarize > 0 else None)
            output = self.output or "unary_on_reachable"

        # a Gaussian no view saw has no feature (a zero row): no evidence for any prompt, P = 0
        P = P * (f.norm(dim=1, keepdim=True) > 0)
        if w_m is not None and self.min_weight > 0:
            seen = w_m[w_m > 0]
            if seen.numel():
                P = P * (w_m[:, None] >= self.min_weight * float(seen.median()))
        sqrt_p = P.clamp_min(0).sqrt()
        q = g0.shape[1]
        if self.median == "anchors":
            # one s_f per prompt when prompts are diffused one by one (binarised A), else one shared
            # scale from the union of the prompts' anchors (their edges then share S)
            src = positives if prompt == "relevancy" else g0 > 0
            if binarize is not None:
                graphs = [G.with_similarity_scale(G.anchor_median(src[:, j])) for j in range(q)]
            else:
                graphs = [G.with_similarity_scale(G.anchor_median(src.any(1)))] * q
        else:
            graphs = [G] * q
        reached = torch.zeros_like(g0, dtype=torch.bool)
        for j in range(q):
            # exact support of g_T: follow the edges with A_ij > threshold (binarised) or > 0
            reached[:, j] = reachable(
                graphs[j], g0[:, j] > 0, self.steps, sqrt_p[:, j], threshold=binarize if binarize is not None else 0.0
            )
        diffused = None
        if output == "diffused" or return_diffused:
            if binarize is not None:
                diffused = torch.cat(
                    [
                        power_iteration(
                            graphs[j], g0[:, j : j + 1], self.steps, sqrt_p[:, j : j + 1], binarize=binarize
                        )
                        for j in range(q)
                    ],
                    1,
                )
            else:
                diffused = power_iteration(graphs[0], g0, self.steps, sqrt_p, binarize=None)
        if output == "diffused":
            mx = diffused.amax(0, keepdim=True)
            out = torch.where(mx > 0, diffused / mx.clamp_min(1e-30), diffused)
        else:
            out = P * reached
        inv = G.inv

        def back(x):
            if x is None:
                return None
            x = x[inv]
            return x[:, 0] if squeeze else x

        return DiffusionResult(
            scores=back(out), unary=back(P), g0=back(g0), reached=back(reached), diffused=back(diffused)
        )
