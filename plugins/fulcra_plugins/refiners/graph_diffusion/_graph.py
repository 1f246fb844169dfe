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

import ctypes
from pathlib import Path

import numpy as np
import torch

__all__ = ["SceneGraph", "knn_indices", "morton_order", "symmetric_csr", "build_scene_graph"]


def _spread3(v: np.ndarray) -> np.ndarray:
    """Interleave two zero bits between the bits of 21-bit unsigned integers (standard magic numbers)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def _interleave(q: np.ndarray) -> np.ndarray:
    """Morton codes of ``[M, 3]`` unsigned integer cell coordinates."""
    return _spread3(q[:, 0]) | (_spread3(q[:, 1]) << np.uint64(1)) | (_spread3(q[:, 2]) << np.uint64(2))


def _quantise(positions: np.ndarray, bits: int = 21, cubic: bool = False):
    """``(q [N, 3] uint64, lo [3], scale [3])`` with ``q = floor((p - lo) * scale)``, ``q < 2**bits``."""
    p = np.asarray(positions, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    ext = np.maximum(hi - lo, 1e-12)
    if cubic:  # one scale for all axes: the cells of every octree level are cubes
        ext = np.full(3, ext.max())
    scale = (2**bits - 1) / ext
    q = ((p - lo) * scale).astype(np.uint64)
    return q, lo, scale


def morton_codes(positions: np.ndarray, bits: int = 21, cubic: bool = False) -> np.ndarray:
    """``[N]`` uint64 Morton (Z-order) codes of 3D points (``bits`` per axis, at most 21)."""
    q, _, _ = _quantise(positions, bits, cubic)
    return _interleave(q)


def morton_order(positions: np.ndarray, bits: int = 21, cubic: bool = False) -> np.ndarray:
    """Permutation sorting points along a 3D Morton curve.

    Args:
        positions: ``[N, 3]`` float array.
        bits: quantisation bits per axis (21 fills a 63-bit code).
        cubic: quantise every axis with the same scale (cubic octree cells, as the grid kNN of
            :func:`build_scene_graph` needs); by default each axis spans its own range.

    Returns:
        ``[N]`` int64 permutation (new position -> old index).
    """
    return np.argsort(morton_codes(positions, bits, cubic), kind="stable")


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


_OFFSETS = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1)], dtype=np.int64)


def _cell_levels(q: np.ndarray, codes: np.ndarray, bits: int, need: int) -> np.ndarray:
    """Per point, the finest octree level whose 3x3x3 block of cells around the point's cell holds
    at least ``need`` points (0, the whole space, when none does). ``codes`` sorted ascending."""
    n = len(codes)
    level = np.zeros(n, dtype=np.int8)
    alive = np.arange(n)  # points whose cell qualified at the previous level
    for L in range(1, bits + 1):
        s = np.uint64(3 * (bits - L))
        cc = codes >> s
        starts = np.flatnonzero(np.r_[True, cc[1:] != cc[:-1]])
        ucodes = cc[starts]
        counts = np.diff(np.r_[starts, n])
        # the cells of the alive points only (the neighbourhood count of a cell never grows with L)
        ac = cc[alive]
        first = np.flatnonzero(np.r_[True, ac[1:] != ac[:-1]])
        coord = (q[alive[first]] >> np.uint64(bits - L)).astype(np.int64)
        nbc = np.zeros(len(first), dtype=np.int64)
        side = 1 << L
        for d in _OFFSETS:
            nc = coord + d
            valid = ((nc >= 0) & (nc < side)).all(1)
            code = _interleave(np.clip(nc, 0, side - 1).astype(np.uint64))
            j = np.minimum(np.searchsorted(ucodes, code), len(ucodes) - 1)
            hit = valid & (ucodes[j] == code)
            nbc += np.where(hit, counts[j], 0)
        ok = nbc >= need
        if not ok.any():
            break
        seg = np.diff(np.r_[first, len(alive)])
        alive = alive[np.repeat(ok, seg)]
        level[alive] = L
    return level


def _knn_block(pos, sq, feats, qi, r_lo, r_hi, kk, margin2, budget):
    """The ``kk`` nearest candidates of query points ``qi`` among the index ranges ``[r_lo, r_hi)``.

    Squared distances go through one float32 GEMM on centred coordinates, ``[q, |q|², 1] ·
    [-2c, 1, |c|²]``, the ``kk`` smallest by ``np.partition``; a row whose ``kk``-th and
    ``(kk+1)``-th values are closer than the float32 error bound, or that has ties there, is redone
    in float64 from exact differences (lowest index first among equal distances), so the selected
    sets are those of exact float64 distances. ``margin2``: squared distance from each query to the
    outside of the candidate region (None: the candidates are every point); rows whose ``kk``-th
    distance exceeds it are returned as failed.

    Returns:
        ``([(rows, nbrs [m, kk] int32, dots [m, kk] float32 or None), ...], [failed rows, ...])``.
    """
    lens = r_hi - r_lo
    M = int(lens.sum())
    off = np.cumsum(lens) - lens
    cand = np.repeat(r_lo - off, lens) + np.arange(M)
    centre = pos[qi[0]]
    Pc = pos[cand] - centre
    Pq = pos[qi] - centre
    sqc = np.einsum("ij,ij->i", Pc, Pc)
    sqq = np.einsum("ij,ij->i", Pq, Pq)
    # float32 error bound of the expanded squared distance (a few ulps of the largest term)
    err = 4e-6 * (float(sqc.max()) + float(sqq.max()))
    B = np.empty((5, M), dtype=np.float32)
    B[:3] = (-2.0 * Pc).T
    B[3] = 1.0
    B[4] = sqc
    Aq = np.empty((len(qi), 5), dtype=np.float32)
    Aq[:, :3] = Pq
    Aq[:, 3] = sqq
    Aq[:, 4] = 1.0
    self_pos = np.searchsorted(cand, qi)
    FcT = np.ascontiguousarray(feats[cand].T) if feats is not None else None
    done, failed = [], []
    step = max(1, budget // max(M, 1))
    k = kk - 1
    for r0 in range(0, len(qi), step):
        r1 = min(len(qi), r0 + step)
        m = r1 - r0
        D = Aq[r0:r1] @ B
        rr = np.arange(m)
        D[rr, self_pos[r0:r1]] = -1.0  # the point itself first, whatever duplicates exist
        v = np.partition(D, k, axis=1)[:, k]
        rows = qi[r0:r1]
        if margin2 is not None:
            ok = v + err <= margin2[r0:r1]
            if not ok.all():
                failed.append(rows[~ok])
                D, v, rows, rr = D[ok], v[ok], rows[ok], np.flatnonzero(ok)
                m = len(rows)
                if not m:
                    continue
        else:
            rr = np.arange(m)
        mask = D <= (v + err)[:, None]
        col = np.flatnonzero(mask)
        cnt = np.bincount(col // M, minlength=m) if len(col) != m * kk else None
        if cnt is None:
            col = (col % M).reshape(m, kk)
        else:  # ambiguous rows: exact float64 distances, stable order
            col2 = np.empty((m, kk), dtype=np.int64)
            starts = np.cumsum(cnt) - cnt
            for i in range(m):
                if cnt[i] == kk:
                    col2[i] = col[starts[i] : starts[i] + kk] % M
                else:
                    d64 = ((Pc - Pq[r0 + rr[i]]) ** 2).sum(1)
                    d64[self_pos[r0 + rr[i]]] = -1.0
                    col2[i] = np.sort(np.argsort(d64, kind="stable")[:kk])
            col = col2
        nb = cand[col].astype(np.int32)
        dt = None
        if FcT is not None:  # one GEMM over the block beats gathering k feature rows per point
            dt = np.take_along_axis(feats[rows] @ FcT, col, 1)
        done.append((rows, nb, dt))
    return done, failed


_KNN_C = Path(__file__).with_name("_knn.c")


def _knn_lib():
    """The compiled kNN kernel (:mod:`fulcra.native`), or None (said once) when unavailable."""
    from fulcra import native

    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    sig = {"fulcra_knn_groups": [vp, vp, i64, vp, vp, i64, vp, vp, i64, vp, vp, i64, vp, vp, vp, ctypes.c_int]}
    return native.kernel(
        _KNN_C, sig, what="graph_diffusion: compiled kNN kernel", fallback="the NumPy path", openmp=True
    )


def _native_level(lib, pos, feats, idx, gs, r_lo, r_hi, b_lo, b_hi, kk, nbrs, dots) -> list:
    """One octree level of :func:`_grid_knn_sorted` in the compiled kernel; returns the failed rows."""
    from fulcra import native
    from fulcra.native import ptr

    idx = np.ascontiguousarray(idx, dtype=np.int64)
    gstart = np.ascontiguousarray(np.r_[gs, len(idx)], dtype=np.int64)
    r_lo = np.ascontiguousarray(r_lo, dtype=np.int64)
    r_hi = np.ascontiguousarray(r_hi, dtype=np.int64)
    G, R = r_lo.shape
    failed = np.zeros(len(idx), dtype=np.uint8)
    if b_lo is not None:
        b_lo = np.ascontiguousarray(b_lo, dtype=np.float64)
        b_hi = np.ascontiguousarray(b_hi, dtype=np.float64)
    D = feats.shape[1] if feats is not None else 0
    status = lib.fulcra_knn_groups(
        ptr(pos, np.float64, "pos"),
        ptr(feats, np.float32, "feats") if feats is not None else None,
        D,
        ptr(idx, np.int64),
        ptr(gstart, np.int64),
        G,
        ptr(r_lo, np.int64),
        ptr(r_hi, np.int64),
        R,
        ptr(b_lo, np.float64) if b_lo is not None else None,
        ptr(b_hi, np.float64) if b_hi is not None else None,
        kk,
        ptr(nbrs, np.int32, "nbrs"),
        ptr(dots, np.float32, "dots") if dots is not None else None,
        ptr(failed, np.uint8),
        native.threads(),  # 1 in a forked child (libgomp's pool does not survive fork())
    )
    if status != 0:
        raise MemoryError("graph_diffusion: the compiled kNN kernel ran out of memory")
    bad = idx[failed.astype(bool)]
    return [bad] if bad.size else []


def _grid_knn_sorted(
    pos, q, codes, lo, scale, k, feats=None, bits=21, tau=3.0, budget=1 << 20, workers=None, native=True
):
    """Exact ``k + 1`` nearest neighbours (the point itself included) of points sorted by cubic Morton code.

    Octree cells at each level are contiguous ranges of the sorted points. Points are grouped by a
    cell chosen per point (the finest level whose 3x3x3 block holds ``tau * (k+1)`` points); every
    point of a group is compared with all points of the block (squared distances in float64 via
    one small GEMM, the ``k+1`` smallest by ``np.partition``). The result is exact when the
    ``(k+1)``-th distance is at most the distance from the point to the outside of the block; points
    where it is not are redone one level coarser (level 0 is the whole set: always exact).

    Args:
        pos: ``[N, 3]`` float64 positions (sorted by ``codes``).
        q, codes, lo, scale: the cubic quantisation of :func:`_quantise` and its Morton codes (sorted).
        k: neighbours per point besides itself (``k <= N - 1``).
        feats: optional ``[N, D]`` float32 features: the dot products on the selected pairs are returned.
        native: use the compiled kernel (``_knn.c`` via :mod:`fulcra.native`) when it is available:
            the same neighbour sets (exact float64 distances, lowest index first among equal ones),
            the dot products accumulated in float64 (within float32 rounding of the NumPy path's
            float32 GEMM). ``FULCRA_NATIVE=0`` or no C compiler: the NumPy path below.

    Returns:
        ``(nbrs [N, k+1] int32, dots [N, k+1] float32 or None)``; each row holds the point itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    n = len(pos)
    lib = _knn_lib() if native else None
    workers = int(workers or max(1, min(4, torch.get_num_threads())))
    kk = k + 1
    nbrs = np.empty((n, kk), dtype=np.int32)
    dots = np.empty((n, kk), dtype=np.float32) if feats is not None else None
    level = _cell_levels(q, codes, bits, max(kk, int(tau * kk)))
    sq = np.einsum("ij,ij->i", pos, pos)
    pending = np.arange(n)
    while pending.size:
        lev = level[pending]
        failed = []
        for L in np.unique(lev)[::-1]:
            L = int(L)
            idx = pending[lev == L]
            s = np.uint64(3 * (bits - L))
            cc = codes[idx] >> s
            gs = np.flatnonzero(np.r_[True, cc[1:] != cc[:-1]])
            ge = np.r_[gs[1:], len(idx)]
            coord = (q[idx[gs]] >> np.uint64(bits - L)).astype(np.int64)  # [G, 3]
            side = 1 << L
            if L == 0:
                r_lo = np.zeros((len(gs), 1), dtype=np.int64)
                r_hi = np.full((len(gs), 1), n, dtype=np.int64)
                b_lo = b_hi = None
            else:
                nc = coord[:, None, :] + _OFFSETS[None]  # [G, 27, 3]
                valid = ((nc >= 0) & (nc < side)).all(-1)
                ncode = _interleave(np.clip(nc, 0, side - 1).reshape(-1, 3).astype(np.uint64)).reshape(nc.shape[:2])
                ncode = np.where(valid, ncode, np.uint64(0))
                order = np.argsort(ncode, axis=1)
                ncode = np.take_along_axis(ncode, order, 1)
                valid = np.take_along_axis(valid, order, 1)
                r_lo = np.searchsorted(codes, ncode << s)
                r_hi = np.where(valid, np.searchsorted(codes, (ncode + np.uint64(1)) << s), r_lo)
                # block bounds (real coordinates) for the exactness test
                cell = float(1 << (bits - L))
                b_lo = lo + (coord - 1) * cell / scale
                b_hi = lo + (coord + 2) * cell / scale

            if lib is not None:
                failed.extend(_native_level(lib, pos, feats, idx, gs, r_lo, r_hi, b_lo, b_hi, kk, nbrs, dots))
                continue

            def group(g, L=L, idx=idx, gs=gs, ge=ge, r_lo=r_lo, r_hi=r_hi, b_lo=b_lo, b_hi=b_hi):
                qi = idx[gs[g] : ge[g]]
                margin2 = None
                if L > 0:
                    mq = np.minimum(pos[qi] - b_lo[g], b_hi[g] - pos[qi]).min(1)
                    margin2 = np.where(mq > 0, mq * mq * (1 - 1e-9), -1.0)
                out = _knn_block(pos, sq, feats, qi, r_lo[g], r_hi[g], kk, margin2, budget)
                for rows, nb, dt in out[0]:  # disjoint rows per group: no two writers overlap
                    nbrs[rows] = nb
                    if dots is not None:
                        dots[rows] = dt
                return out[1]

            # groups are independent; NumPy releases the GIL in its GEMMs and partitions, so a few
            # threads share the work (results are placed by row and the failures kept in group
            # order: identical output for any thread count)
            if workers > 1 and len(gs) > 1:
                with ThreadPoolExecutor(workers) as ex:
                    for f in ex.map(group, range(len(gs))):
                        failed.extend(f)
            else:
                for g in range(len(gs)):
                    failed.extend(group(g))
        pending = np.concatenate(failed) if failed else np.zeros(0, dtype=np.int64)
        level[pending] -= 1
    return nbrs, dots


def _csr_transpose(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int):
    """Transpose of an ``n x n`` CSR matrix by scipy's counting sort (O(nnz), int32 kept).

    The result has sorted column indices in every row (rows are visited in order)."""
    import scipy.sparse as sp

    K = sp.csr_matrix((data, indices, indptr), shape=(n, n), copy=False)
    T = K.tocsc()  # the CSC of K is the CSR of K^T
    return T.indptr, T.indices, T.data


def _symmetric_union(cols: np.ndarray, sorted_rows: bool = False):
    """``A = K ∪ Kᵀ`` for ``K`` with ``c`` distinct column indices per row (``cols`` ``[N, c]``).

    Each entry of ``A`` also tells which entry of ``K`` it comes from (for ``(i, j)`` and ``(j, i)``
    both in ``K``, the same one on both sides, so values taken from it are exactly symmetric): the
    union runs scipy's ``maximum`` of two canonical CSR matrices whose data are ``K``'s entry ids + 1,
    int32 throughout (two O(nnz) counting sorts and one O(nnz) merge, no int64 temporaries).

    Args:
        cols: ``[N, c]`` int column indices (distinct within a row).
        sorted_rows: the rows of ``cols`` are already ascending.

    Returns:
        ``(indptr [N+1], indices [nnz] int32, src [nnz])``: ``src`` indexes ``cols.ravel()``.
    """
    import scipy.sparse as sp

    n, c = cols.shape
    total = n * c
    idt = np.int32 if total < 2**31 - 1 else np.int64
    indptr = np.arange(0, total + 1, c, dtype=idt)
    ids = np.arange(1, total + 1, dtype=idt)
    ind = np.ascontiguousarray(cols, dtype=idt).ravel()
    tp, ti, td = _csr_transpose(indptr, ind, ids, n)
    if sorted_rows:
        K = sp.csr_matrix((ids, ind, indptr), shape=(n, n), copy=False)
    else:
        sp_, si, sd = _csr_transpose(tp, ti, td, n)  # transposing twice sorts every row of K
        K = sp.csr_matrix((sd, si, sp_), shape=(n, n), copy=False)
    K.has_sorted_indices = True
    T = sp.csr_matrix((td, ti, tp), shape=(n, n), copy=False)
    T.has_sorted_indices = True
    del ind
    A = K.maximum(T)  # canonical inputs: one merge per row; entries of one side keep their id
    src = A.data
    src -= 1
    return A.indptr, A.indices.astype(np.int32, copy=False), src


def symmetric_csr(nbrs: np.ndarray, self_loops: bool = True):
    """CSR structure of the symmetrised kNN graph ``A = K ∪ Kᵀ`` (optionally with the diagonal).

    Args:
        nbrs: ``[N, k]`` int neighbour indices (distinct within a row, the point itself excluded).
        self_loops: add ``(i, i)`` for every node.

    Returns:
        ``(indptr [N+1] int64, indices [nnz] int32)`` with sorted column indices per row.
    """
    n = nbrs.shape[0]
    cols = np.asarray(nbrs)
    if self_loops:
        cols = np.concatenate([cols, np.arange(n, dtype=cols.dtype)[:, None]], 1)
    indptr, indices, _ = _symmetric_union(cols)
    return indptr.astype(np.int64), indices


def _blas_single_thread():
    """Context keeping NumPy's BLAS on one thread (the kNN blocks are small GEMMs: on a busy
    2-core machine, threaded BLAS spin-waits and ran them 10-20x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


class SceneGraph:
    """The symmetric kNN graph of one scene, in Morton order, with feature similarities on its edges.

    Attributes:
        perm: ``[N]`` int64 (Morton position -> original index).
        inv: ``[N]`` int64 (original index -> Morton position).
        indptr: ``[N+1]`` int64 CSR row pointers (Morton order).
        indices: ``[nnz]`` int32 CSR column indices (Morton order).
        rows: ``[nnz]`` int32 row index of every edge (computed from ``indptr`` on first use, cached).
        similarity: ``[nnz]`` float32 ``S_f`` of Eq. C.1 on each edge (computed from ``distance``
            on first use, cached).
        distance: ``[nnz]`` float32 l2 distance of the normalised features on each edge.
        features: ``[N, D]`` float32 l2-normalised features (Morton order).
        median_distance: ``s_f``.
        bandwidth: ``b`` of Eq. C.1.
        k: neighbours per node before symmetrisation.
        fingerprint: identifies the (positions, features) the graph was built from.
        symmetric: ``S`` is exactly symmetric by construction (both directions of an edge take
            their value from one kNN entry, as in graphs :func:`build_scene_graph` returns): the
            compiled diffusion kernel then skips its symmetry check. False: it checks.

    ``rows`` and ``similarity`` may be passed as None (the default for graphs built here): at
    k = 200 each is ~0.5 GB per 600k nodes, and ``similarity`` is recomputed per prompt anyway.
    """

    _FIELDS = ("perm", "inv", "indptr", "indices", "rows", "similarity", "distance", "features")

    def __init__(
        self,
        perm: torch.Tensor,
        inv: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        rows: torch.Tensor | None,
        similarity: torch.Tensor | None,
        distance: torch.Tensor,
        features: torch.Tensor,
        median_distance: float,
        bandwidth: float,
        k: int,
        fingerprint: tuple = (),
        symmetric: bool = False,
    ):
        self.perm, self.inv, self.indptr, self.indices = perm, inv, indptr, indices
        self.symmetric = bool(symmetric)
        self._rows, self._similarity = rows, similarity
        self.distance, self.features = distance, features
        self.median_distance, self.bandwidth, self.k = float(median_distance), float(bandwidth), int(k)
        self.fingerprint = fingerprint
        self._sim_eps = 0.0  # with_bandwidth / with_similarity_scale add 1e-12 to the RBF denominator
        self._upper = None  # S stored once for the compiled diffusion kernel (_diffusion.symmetric_upper)

    def __repr__(self) -> str:
        return (
            f"SceneGraph(num_nodes={self.num_nodes}, nnz={self.nnz}, k={self.k}, "
            f"median_distance={self.median_distance:.4g}, bandwidth={self.bandwidth:g}, device={self.device})"
        )

    @property
    def rows(self) -> torch.Tensor:
        if self._rows is None:
            counts = self.indptr[1:] - self.indptr[:-1]
            ar = torch.arange(self.num_nodes, device=self.device, dtype=torch.int32)
            self._rows = torch.repeat_interleave(ar, counts)
        return self._rows

    @property
    def similarity(self) -> torch.Tensor:
        if self._similarity is None:
            self._similarity = _rbf(self.distance, self.bandwidth * self.median_distance**2 + self._sim_eps)
        return self._similarity

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
        mv = {n: getattr(self, n if n not in ("rows", "similarity") else "_" + n) for n in self._FIELDS}
        mv = {n: (v.to(d) if v is not None else None) for n, v in mv.items()}
        g = SceneGraph(
            **mv,
            median_distance=self.median_distance,
            bandwidth=self.bandwidth,
            k=self.k,
            fingerprint=self.fingerprint,
            symmetric=self.symmetric,
        )
        g._sim_eps = self._sim_eps
        return g

    def anchor_median(self, anchors: torch.Tensor) -> float:
        """Median feature distance over the edges leaving ``anchors`` ``[N]`` bool (Morton order).

        The reference implementation sets ``s_f`` of Eq. C.1 this way for a prompt: a scale of the
        feature variation *inside* the object, so that edges leaving it fall under the threshold.
        """
        nodes = torch.nonzero(anchors, as_tuple=False).flatten()
        if nodes.numel() == 0:
            return self.median_distance
        e = _gather_rows(self.indptr, nodes)  # the anchors' edges only, no pass over all nnz
        rows = torch.repeat_interleave(nodes, self.indptr[nodes + 1] - self.indptr[nodes])
        d = self.distance[e][self.indices[e].long() != rows]
        return max(float(np.median(d.cpu().numpy())), 1e-6) if d.numel() else self.median_distance

    def _rescaled(self, median: float, bandwidth: float, sim: torch.Tensor | None) -> SceneGraph:
        return SceneGraph(
            self.perm,
            self.inv,
            self.indptr,
            self.indices,
            self._rows,
            sim,
            self.distance,
            self.features,
            float(median),
            float(bandwidth),
            self.k,
            self.fingerprint,
            symmetric=self.symmetric,  # S_f from the same symmetric distances
        )

    def with_similarity_scale(self, median: float, bandwidth: float | None = None) -> SceneGraph:
        """The same graph with ``S_f`` for another ``s_f`` (and optionally ``b``), computed on first use."""
        b = self.bandwidth if bandwidth is None else float(bandwidth)
        g = self._rescaled(median, b, None)
        g._sim_eps = 1e-12
        return g

    def with_bandwidth(self, bandwidth: float) -> SceneGraph:
        """The same graph with ``S_f`` for another ``b`` (no neighbour search), computed on first use."""
        g = self._rescaled(self.median_distance, bandwidth, None)
        g._sim_eps = 1e-12
        return g


def _rbf(distance: torch.Tensor, denom: float) -> torch.Tensor:
    """``exp(-d² / denom)`` in float32, in blocks (no nnz-sized float temporaries besides the output)."""
    out = torch.empty_like(distance)
    step = 1 << 22
    for s in range(0, distance.numel(), step):
        torch.exp(distance[s : s + step].square().div_(-denom), out=out[s : s + step])
    return out


def _gather_rows(indptr: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Edge ids (positions in ``indices``) of all rows in ``nodes`` ``[M]`` int64."""
    starts = indptr[nodes]
    counts = indptr[nodes + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long, device=nodes.device)
    offsets = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(starts - offsets, counts) + torch.arange(total, device=nodes.device)


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
    knn: str = "grid",
) -> SceneGraph:
    """Build the scene graph: Morton order, exact kNN, symmetrisation, ``S_f`` on every edge.

    Args:
        positions: ``[N, 3]`` Gaussian centres.
        features: ``[N, D]`` per-Gaussian features (e.g. uplifted DINOv2); l2-normalised here.
        k: Euclidean neighbours per node.
        bandwidth: ``b`` of Eq. C.1.
        self_loops: keep ``A_ii = P_i`` (the lazy power iteration of the reference code).
        device: where the returned graph lives (the neighbour search runs on the CPU).
        chunk: edges per block when computing feature distances (``knn="kdtree"``; bounds memory).
        fp: the :func:`fingerprint` of (positions, features) when the caller already has it.
        knn: ``grid`` (exact octree-block search that also yields the feature dot products of the
            selected pairs, see :func:`_grid_knn_sorted`) or ``kdtree`` (scipy cKDTree, then the
            feature distances edge by edge); both give the same graph (up to ties at the k-th
            distance) and the same ``S_f`` up to float32 rounding.

    Returns:
        A :class:`SceneGraph` (``rows`` and ``similarity`` are computed on first use).
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"graph_diffusion: positions must be [N, 3], got {list(positions.shape)}")
    if features.ndim != 2 or features.shape[0] != positions.shape[0]:
        raise ValueError(
            f"graph_diffusion: features must be [N, D] with N={positions.shape[0]}, got {list(features.shape)}"
        )
    if knn not in ("grid", "kdtree"):
        raise ValueError(f"graph_diffusion: knn must be grid or kdtree, got {knn!r}")
    dev = torch.device(device)
    fp = fingerprint(positions, features) if fp is None else fp
    pos = positions.detach().float().cpu().numpy()
    n = len(pos)
    q, lo, scale = _quantise(pos, cubic=True)
    codes = _interleave(q)
    perm_np = np.argsort(codes, kind="stable")
    inv_np = np.empty_like(perm_np)
    inv_np[perm_np] = np.arange(n)
    perm = torch.from_numpy(perm_np)
    feats = normalise_rows(features.detach().float().cpu()[perm])
    kk = int(min(k, n - 1))
    if kk <= 0:  # a single node: at most its self loop
        cols = np.zeros((n, 1 if self_loops else 0), dtype=np.int32)
        dist_k = np.zeros(cols.shape, dtype=np.float32)
    elif knn == "grid":
        ps = pos[perm_np]
        with _blas_single_thread():
            cols, dots = _grid_knn_sorted(
                ps.astype(np.float64), q[perm_np], codes[perm_np], lo, scale, kk, feats.numpy()
            )
        del ps
        # ||a-b|| of unit vectors = sqrt(2 - 2 a.b), in place on the [N, k+1] dot products
        dist_k = dots
        np.multiply(dist_k, -2.0, out=dist_k)
        dist_k += 2.0
        np.maximum(dist_k, 0, out=dist_k)
        np.sqrt(dist_k, out=dist_k)
        if not self_loops:
            keep = cols != np.arange(n, dtype=np.int32)[:, None]
            cols, dist_k = cols[keep].reshape(n, kk), dist_k[keep].reshape(n, kk)
    else:
        nb = knn_indices(pos[perm_np], kk)
        cols = np.concatenate([nb, np.arange(n, dtype=np.int32)[:, None]], 1) if self_loops else nb
        rr = np.repeat(np.arange(n), cols.shape[1])
        flat = cols.ravel()
        dist_k = np.empty(flat.shape, dtype=np.float32)
        fn = feats.numpy()
        for s in range(0, len(flat), chunk):
            dot = np.einsum("ij,ij->i", fn[rr[s : s + chunk]], fn[flat[s : s + chunk]])
            dist_k[s : s + chunk] = np.sqrt(np.maximum(2.0 - 2.0 * dot, 0))
        dist_k = dist_k.reshape(cols.shape)
        del rr
    sorted_rows = knn == "grid"  # the grid search returns every row in ascending index order
    indptr, indices, src = _symmetric_union(cols, sorted_rows=sorted_rows)
    flat_d = dist_k.ravel()
    dist = flat_d[src]
    # s_f: median over the off-diagonal edges. Both (i, j) and (j, i) take their value from one
    # entry of the kNN lists, so every off-diagonal value appears exactly twice: the median over
    # the distinct source entries is the same number, over half the values
    used = np.zeros(flat_d.shape, dtype=bool)
    used[src] = True
    del src
    used &= (cols != np.arange(n, dtype=cols.dtype)[:, None]).ravel()
    d_off = flat_d[used]
    del used
    med = float(np.median(d_off)) if d_off.size else 1.0
    med = max(med, 1e-6)  # identical features everywhere: every edge is maximally similar
    del d_off, flat_d, dist_k, cols
    return SceneGraph(
        perm=perm.to(dev),
        inv=torch.from_numpy(inv_np).to(dev),
        indptr=torch.from_numpy(indptr.astype(np.int64)).to(dev),
        indices=torch.from_numpy(indices).to(dev),
        rows=None,
        similarity=None,
        distance=torch.from_numpy(dist).to(dev),
        features=feats.to(dev),
        median_distance=med,
        bandwidth=float(bandwidth),
        k=int(k),
        fingerprint=fp,
        symmetric=True,  # (i, j) and (j, i) take their distance from one kNN entry
    )
