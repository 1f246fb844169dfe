"""The scene graph behind graph diffusion: a symmetrised kNN graph over Gaussian centres.

Built once per scene (positions + features) and reused for every prompt:

- nodes are stored along a Morton (Z-order) curve so that graph neighbours sit close in memory,
  which speeds the sparse products several-fold (see PERF-NOTES.md);
- the edge set is ``i ~ j  iff  j in kNN(i) or i in kNN(j)`` (plus self loops by default), in CSR
  form with int32 indices;
- the edge weights hold the feature similarity ``S_f`` of Eq. C.1 (RBF on l2-normalised features,
  bandwidth ``b * s_f**2`` with ``s_f`` the median feature distance over the graph's edges).

Everything prompt-specific (unary term, anchors, diffusion) lives in :mod:`.graph_diffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SceneGraph", "knn_indices", "morton_order", "symmetric_csr", "build_scene_graph"]


def morton_order(positions: np.ndarray, bits: int = 21) -> np.ndarray:
    """Permutation sorting points along a 3D Morton curve.

    Args:
        positions: ``[N, 3]`` float array.
        bits: quantisation bits per axis (21 fills a 63-bit code).

    Returns:
        ``[N]`` int64 permutation (new position -> old index).
    """
    p = np.asarray(positions, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    scale = (2**bits - 1) / np.maximum(hi - lo, 1e-12)
    q = ((p - lo) * scale).astype(np.uint64)

    def spread(v: np.ndarray) -> np.ndarray:
        # interleave two zero bits between each bit of a 21-bit integer (standard magic numbers)
        v = v & np.uint64(0x1FFFFF)
        v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
        v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
        v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
        return v

    code = spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)) | (spread(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")


def knn_indices(positions: np.ndarray, k: int, workers: int = -1) -> np.ndarray:
    """The ``k`` nearest other points of every point (exact, scipy cKDTree, all cores).

    Args:
        positions: ``[N, 3]`` float array.
        k: neighbours per point (the point itself excluded).

    Returns:
        ``[N, k]`` int32 indices (``k`` is clipped to ``N - 1``).
    """
    from scipy.spatial import cKDTree

    n = len(positions)
    k = int(min(k, n - 1))
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int32)
    pts = np.ascontiguousarray(positions, dtype=np.float32)
    tree = cKDTree(pts, leafsize=16, balanced_tree=False, compact_nodes=False)
    _, idx = tree.query(pts, k=k + 1, workers=workers)
    idx = idx.astype(np.int32, copy=False)
    # drop the point itself; with duplicated positions it may not come first, so drop it by value
    self_col = idx == np.arange(n, dtype=np.int32)[:, None]
    has_self = self_col.any(1)
    out = np.empty((n, k), dtype=np.int32)
    if has_self.all():
        keep = ~self_col
        # rows where self is absent from the k+1 list do not exist here; each row keeps exactly k
        out[:] = idx[keep].reshape(n, k)
    else:
        for i in range(n):  # rare path: many exact duplicates crowd a point out of its own list
            row = idx[i][idx[i] != i]
            out[i] = row[:k]
    return out


def symmetric_csr(nbrs: np.ndarray, self_loops: bool = True):
    """CSR structure of the symmetrised kNN graph ``A = K ∪ Kᵀ`` (optionally with the diagonal).

    Args:
        nbrs: ``[N, k]`` int neighbour indices.
        self_loops: add ``(i, i)`` for every node.

    Returns:
        ``(indptr [N+1] int64, indices [nnz] int32)`` with sorted column indices per row.
    """
    import scipy.sparse as sp

    n, k = nbrs.shape
    cols = np.sort(nbrs, axis=1).astype(np.int32).ravel()
    indptr = np.arange(n + 1, dtype=np.int64) * k
    data = np.ones(len(cols), dtype=np.int8)
    K = sp.csr_matrix((data, cols, indptr), shape=(n, n))
    K.has_sorted_indices = True
    A = K + K.T.tocsr()  # O(nnz) merges in scipy's C++; values 1 or 2, only the structure is kept
    if self_loops:
        A = A + sp.identity(n, dtype=np.int8, format="csr")
    A.sort_indices()
    return A.indptr.astype(np.int64), A.indices.astype(np.int32)


@dataclass
class SceneGraph:
    """The symmetric kNN graph of one scene, in Morton order, with feature similarities on its edges.

    Attributes:
        perm: ``[N]`` int64 (Morton position -> original index).
        inv: ``[N]`` int64 (original index -> Morton position).
        indptr: ``[N+1]`` int64 CSR row pointers (Morton order).
        indices: ``[nnz]`` int32 CSR column indices (Morton order).
        rows: ``[nnz]`` int32 row index of every edge.
        similarity: ``[nnz]`` float32 ``S_f`` of Eq. C.1 on each edge.
        distance: ``[nnz]`` float32 l2 distance of the normalised features on each edge.
        features: ``[N, D]`` float32 l2-normalised features (Morton order).
        median_distance: ``s_f``.
        bandwidth: ``b`` of Eq. C.1.
        k: neighbours per node before symmetrisation.
        fingerprint: identifies the (positions, features) the graph was built from.
    """

    perm: torch.Tensor
    inv: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor
    rows: torch.Tensor
    similarity: torch.Tensor
    distance: torch.Tensor
    features: torch.Tensor
    median_distance: float
    bandwidth: float
    k: int
    fingerprint: tuple = ()

    @property
    def num_nodes(self) -> int:
        return int(self.perm.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str) -> SceneGraph:
        d = torch.device(device)
        moved = {
            name: getattr(self, name).to(d)
            for name in ("perm", "inv", "indptr", "indices", "rows", "similarity", "distance", "features")
        }
        return SceneGraph(
            **moved,
            median_distance=self.median_distance,
            bandwidth=self.bandwidth,
            k=self.k,
            fingerprint=self.fingerprint,
        )

    def anchor_median(self, anchors: torch.Tensor) -> float:
        """Median feature distance over the edges leaving ``anchors`` ``[N]`` bool (Morton order).

        The reference implementation sets ``s_f`` of Eq. C.1 this way for a prompt: a scale of the
        feature variation *inside* the object, so that edges leaving it fall under the threshold.
        """
        sel = anchors[self.rows.long()] & (self.rows != self.indices)
        d = self.distance[sel]
        return max(float(np.median(d.cpu().numpy())), 1e-6) if d.numel() else self.median_distance

    def with_similarity_scale(self, median: float, bandwidth: float | None = None) -> SceneGraph:
        """The same graph with ``S_f`` recomputed for another ``s_f`` (and optionally ``b``)."""
        b = self.bandwidth if bandwidth is None else float(bandwidth)
        sim = torch.exp(-self.distance.square() / (b * median**2 + 1e-12))
        return SceneGraph(
            self.perm,
            self.inv,
            self.indptr,
            self.indices,
            self.rows,
            sim,
            self.distance,
            self.features,
            float(median),
            b,
            self.k,
            self.fingerprint,
        )

    def with_bandwidth(self, bandwidth: float) -> SceneGraph:
        """The same graph with ``S_f`` recomputed for another ``b`` (no neighbour search)."""
        sim = torch.exp(-self.distance.square() / (bandwidth * self.median_distance**2 + 1e-12))
        return SceneGraph(
            self.perm,
            self.inv,
            self.indptr,
            self.indices,
            self.rows,
            sim,
            self.distance,
            self.features,
            self.median_distance,
            float(bandwidth),
            self.k,
            self.fingerprint,
        )


def normalise_rows(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """l2-normalise each row. ``x``: ``[N, D]``."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def fingerprint(positions: torch.Tensor, features: torch.Tensor) -> tuple:
    """A cheap identity of a scene's (positions, features): shapes and a few exact float64 sums."""
    p = positions.detach().double()
    f = features.detach().double()
    n = p.shape[0]
    w = torch.arange(1, n + 1, dtype=torch.float64, device=p.device).remainder_(97)
    return (
        tuple(p.shape),
        tuple(f.shape),
        float((p.sum(1) * w).sum()),
        float((f.sum(1) * w).sum()),
        float(f.square().sum()),
    )


def build_scene_graph(
    positions: torch.Tensor,  # [N, 3]
    features: torch.Tensor,  # [N, D]
    k: int = 16,
    bandwidth: float = 1.0,
    self_loops: bool = True,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 20,
    fp: tuple | None = None,
) -> SceneGraph:
    """Build the scene graph: Morton order, exact kNN, symmetrisation, ``S_f`` on every edge.

    Args:
        positions: ``[N, 3]`` Gaussian centres.
        features: ``[N, D]`` per-Gaussian features (e.g. uplifted DINOv2); l2-normalised here.
        k: Euclidean neighbours per node.
        bandwidth: ``b`` of Eq. C.1.
        self_loops: keep ``A_ii = P_i`` (the lazy power iteration of the reference code).
        device: where the returned graph lives (the neighbour search runs on the CPU).
        chunk: edges per block when computing feature distances (bounds memory).
        fp: the :func:`fingerprint` of (positions, features) when the caller already has it.

    Returns:
        A :class:`SceneGraph`.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"graph_diffusion: positions must be [N, 3], got {list(positions.shape)}")
    if features.ndim != 2 or features.shape[0] != positions.shape[0]:
        raise ValueError(
            f"graph_diffusion: features must be [N, D] with N={positions.shape[0]}, got {list(features.shape)}"
        )
    dev = torch.device(device)
    fp = fingerprint(positions, features) if fp is None else fp
    pos = positions.detach().float().cpu().numpy()
    perm_np = morton_order(pos)
    inv_np = np.empty_like(perm_np)
    inv_np[perm_np] = np.arange(len(perm_np))
    nbrs = knn_indices(pos[perm_np], k)
    indptr, indices = symmetric_csr(nbrs, self_loops=self_loops)
    perm = torch.from_numpy(perm_np)
    feats = normalise_rows(features.detach().float().to(dev)[perm.to(dev)])
    indptr_t = torch.from_numpy(indptr).to(dev)
    indices_t = torch.from_numpy(indices).to(dev)
    counts = indptr_t[1:] - indptr_t[:-1]
    rows = torch.repeat_interleave(torch.arange(len(perm_np), device=dev, dtype=torch.int32), counts)
    dist = torch.empty(len(indices), dtype=torch.float32, device=dev)
    for s in range(0, len(indices), chunk):  # ||a-b|| of unit vectors = sqrt(2 - 2 a.b)
        r = rows[s : s + chunk].long()
        c = indices_t[s : s + chunk].long()
        dot = (feats[r] * feats[c]).sum(-1)
        dist[s : s + chunk] = (2.0 - 2.0 * dot).clamp_min_(0).sqrt_()
    off_diag = rows != indices_t
    d_off = dist[off_diag]
    med = float(np.median(d_off.cpu().numpy())) if d_off.numel() else 1.0
    med = max(med, 1e-6)  # identical features everywhere: every edge is maximally similar
    sim = torch.exp(-dist.square() / (bandwidth * med**2))
    return SceneGraph(
        perm=perm.to(dev),
        inv=torch.from_numpy(inv_np).to(dev),
        indptr=indptr_t,
        indices=indices_t,
        rows=rows,
        similarity=sim,
        distance=dist,
        features=feats,
        median_distance=med,
        bandwidth=float(bandwidth),
        k=int(k),
        fingerprint=fp,
    )
