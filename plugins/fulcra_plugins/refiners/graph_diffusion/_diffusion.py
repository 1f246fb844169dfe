"""Sparse kernels of graph diffusion (Eq. 5.8) on a :class:`~._graph.SceneGraph`, CPU or GPU.

The product ``A g`` with ``A = diag(√P) · S · diag(√P)`` (Eq. 5.7) never forms ``A``: the shared
similarity ``S`` is one CSR matrix and the per-prompt unary term enters as elementwise scalings, so
many prompts diffuse at once as the columns of ``g``.

Work is restricted to the nodes a prompt can reach. After ``t`` steps ``g_t`` is zero outside the
nodes within ``t`` hops of the initial support, so nodes are renumbered by hop distance (Morton order
kept inside each hop layer) and step ``t`` multiplies only the leading ``n_{t+1}`` rows of the
renumbered matrix: exact, and most of the graph is never touched.

On the CPU the float iteration runs in a compiled kernel (``_diffuse.c`` through
:mod:`fulcra.native`) on ``S`` stored once (:func:`symmetric_upper`: the upper triangle with
16-bit column deltas, 6 bytes per stored entry instead of 8 bytes per directed entry), with the
unary term, the restriction and the rescaling fused into its passes; the torch CSR path below is
its reference, and runs on CUDA, with ``FULCRA_NATIVE=0`` or without a C compiler. The hop
distances that drive the restriction (and the reached sets of the segmentation route) come from a
compiled breadth-first search in the same file (``fulcra_hops``), with NumPy as its fallback.
"""

from __future__ import annotations

import ctypes
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ._graph import SceneGraph

log = logging.getLogger(__name__)

__all__ = [
    "hop_distances",
    "reachable",
    "power_iteration",
    "power_iteration_full",
    "edge_values",
    "symmetric_upper",
    "UpperS",
]


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on mm only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _gather_edges(graph: SceneGraph, nodes: torch.Tensor) -> torch.Tensor:
    """Edge ids (positions in ``indices``) of all rows in ``nodes`` ``[M]`` int64."""
    starts = graph.indptr[nodes]
    counts = graph.indptr[nodes + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long, device=nodes.device)
    offsets = torch.cumsum(counts, 0) - counts  # exclusive scan
    return torch.repeat_interleave(starts - offsets, counts) + torch.arange(total, device=nodes.device)


def edge_values(
    graph: SceneGraph, edges: torch.Tensor, sqrt_p: torch.Tensor | None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``A_e = S_e √P_row √P_col`` for edge ids ``edges`` ``[E]``; ``sqrt_p`` ``[N]`` or None.

    ``rows``: the row of every edge when the caller has it (spares materialising ``graph.rows``)."""
    v = graph.similarity[edges]
    if sqrt_p is not None:
        r = graph.rows[edges] if rows is None else rows
        v = v * sqrt_p[r.long()] * sqrt_p[graph.indices[edges].long()]
    return v


def _hops_numpy(graph: SceneGraph, seeds: torch.Tensor, steps: int, sqrt_p, threshold) -> torch.Tensor:
    """:func:`hop_distances` on the CPU in NumPy (int32 gathers, one mark array): O(edges of each
    frontier) per hop plus a few passes over a bool array of N."""
    import numpy as np

    n = graph.num_nodes
    indptr = graph.indptr.numpy()
    indices = graph.indices.numpy()
    sim = graph.similarity.numpy() if threshold is not None else None
    sp = sqrt_p.detach().float().contiguous().numpy() if (threshold is not None and sqrt_p is not None) else None
    dist = np.full(n, steps + 1, dtype=np.int32)
    frontier = np.flatnonzero(seeds.cpu().numpy())
    dist[frontier] = 0
    visited = np.zeros(n, dtype=bool)
    visited[frontier] = True
    nxt = np.zeros(n, dtype=bool)
    for t in range(1, steps + 1):
        if frontier.size == 0:
            break
        starts = indptr[frontier]
        lens = indptr[frontier + 1] - starts
        total = int(lens.sum())
        e = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        cand = indices[e]
        if threshold is not None:
            v = sim[e]
            if sp is not None:
                v = v * sp[np.repeat(frontier, lens)] * sp[cand]
            cand = cand[v > threshold]
        nxt[cand] = True
        nxt &= ~visited
        frontier = np.flatnonzero(nxt)
        nxt[frontier] = False
        visited[frontier] = True
        dist[frontier] = t
    return torch.from_numpy(dist)


def hop_distances(
    graph: SceneGraph,
    seeds: torch.Tensor,  # [N] bool
    steps: int,
    sqrt_p: torch.Tensor | None = None,  # [N]
    threshold: float | None = None,
) -> torch.Tensor:
    """Breadth-first hop distance from ``seeds``, up to ``steps`` hops.

    An edge is followed when its value ``A_e`` (see :func:`edge_values`) is ``> threshold``; with
    ``threshold=None`` every edge of the graph is followed (the structural reach, a superset of the
    support of any diffusion on it).

    Returns:
        ``[N]`` int32 hop distances; ``steps + 1`` where unreached.
    """
    if graph.device.type == "cpu":
        lib = _diffuse_lib()
        if lib is not None:
            return _hops_native(lib, graph, seeds, steps, sqrt_p, threshold)
        return _hops_numpy(graph, seeds, steps, sqrt_p, threshold)
    return _hops_torch(graph, seeds, steps, sqrt_p, threshold)


def _hops_native(lib, graph: SceneGraph, seeds, steps: int, sqrt_p, threshold) -> torch.Tensor:
    """:func:`hop_distances` in the compiled kernel (``fulcra_hops`` in ``_diffuse.c``): one pass
    over the edges of the reached nodes, no per-hop array passes; the same integers as
    :func:`_hops_numpy` (float32 edge values and comparison, as there)."""
    from fulcra.native import ptr

    n = graph.num_nodes
    indptr = np.ascontiguousarray(graph.indptr.numpy(), dtype=np.int64)
    indices = np.ascontiguousarray(graph.indices.numpy(), dtype=np.int32)
    use = threshold is not None
    sim = np.ascontiguousarray(graph.similarity.detach().numpy(), dtype=np.float32) if use else None
    sp = None
    if use and sqrt_p is not None:
        sp = np.ascontiguousarray(sqrt_p.detach().float().cpu().numpy(), dtype=np.float32)
        if sp.shape != (n,):
            raise ValueError(f"graph_diffusion: sqrt_p must have shape [{n}], got {tuple(sp.shape)}")
    sd = np.ascontiguousarray(seeds.detach().cpu().numpy(), dtype=np.uint8)
    if sd.shape != (n,):
        raise ValueError(f"graph_diffusion: seeds must have shape [{n}], got {tuple(sd.shape)}")
    dist = np.empty(n, dtype=np.int32)
    work = np.empty((2, n), dtype=np.int32)
    lib.fulcra_hops(
        n, ptr(indptr, np.int64), ptr(indices, np.int32), ptr(sim, np.float32) if use else None,
        ptr(sp, np.float32) if sp is not None else None, float(threshold) if use else 0.0, int(use),
        ptr(sd, np.uint8, "seeds"), int(steps), ptr(dist, np.int32), ptr(work[0], np.int32), ptr(work[1], np.int32),
    )  # fmt: skip
    return torch.from_numpy(dist)


def _hops_torch(graph, seeds, steps, sqrt_p=None, threshold=None) -> torch.Tensor:
    """:func:`hop_distances` in torch ops (any device)."""
    n = graph.num_nodes
    dev = graph.device
    dist = torch.full((n,), steps + 1, dtype=torch.int32, device=dev)
    frontier = torch.nonzero(seeds, as_tuple=False).flatten()
    dist[frontier] = 0
    # per hop only O(edges of the frontier) work, no pass over all N nodes (100 hops x N was most
    # of the cost): candidates not yet reached are deduplicated by a scatter of their positions —
    # whichever duplicate wins, exactly one copy of each node keeps its own position
    owner = torch.empty(n, dtype=torch.long, device=dev)
    for t in range(1, steps + 1):
        if frontier.numel() == 0:
            break
        e = _gather_edges(graph, frontier)
        if threshold is not None:
            e = e[edge_values(graph, e, sqrt_p) > threshold]
        cand = graph.indices[e].long()
        cand = cand[dist[cand] > t]
        pos = torch.arange(cand.numel(), device=dev)
        owner[cand] = pos
        frontier = cand[owner[cand] == pos]
        dist[frontier] = t
    return dist


def reachable(
    graph: SceneGraph, seeds: torch.Tensor, steps: int, sqrt_p: torch.Tensor | None = None, threshold: float = 0.0
) -> torch.Tensor:
    """Nodes reached from ``seeds`` ``[N]`` bool within ``steps`` hops over edges with ``A_e > threshold``.

    This is exactly the support of ``g_T`` in Eq. 5.8 (non-negative ``A`` and ``g_0``), computed
    without floating point, so it cannot lose nodes whose ``g_T`` underflows after many steps.
    Returns ``[N]`` bool.
    """
    return hop_distances(graph, seeds, steps, sqrt_p, threshold) <= steps


class _Restricted:
    """The graph renumbered by hop distance from a seed set, restricted to ``<= steps`` hops."""

    def __init__(self, graph: SceneGraph, seeds: torch.Tensor, steps: int):
        dev = graph.device
        dist = hop_distances(graph, seeds, steps)
        reached = torch.nonzero(dist <= steps, as_tuple=False).flatten()
        # stable sort by hop distance: Morton order survives inside each layer
        order = reached[torch.sort(dist[reached].long(), stable=True).indices]
        self.nodes = order  # new -> Morton index
        m = int(order.numel())
        # neighbours beyond `steps` hops (met only by the outermost layer) all map to one extra
        # column m, a row of x that stays zero: no filtering pass over the gathered edges
        new_id = torch.full((graph.num_nodes,), m, dtype=torch.int32, device=dev)
        new_id[order] = torch.arange(m, dtype=torch.int32, device=dev)
        e = _gather_edges(graph, order)
        self.edges = e
        self.col = new_id[graph.indices[e].long()]
        self.counts = graph.indptr[order + 1] - graph.indptr[order]  # rows in the new order
        self.crow = torch.zeros(m + 1, dtype=torch.long, device=dev)
        self.crow[1:] = torch.cumsum(self.counts, 0)
        layer_sizes = torch.bincount(dist[order].long(), minlength=steps + 1)[: steps + 1]
        self.n_upto = torch.cumsum(layer_sizes, 0).tolist()  # nodes within t hops, t = 0..steps
        self.nnz_upto = self.crow[self.n_upto].tolist()  # nnz of the leading rows
        self.crow32 = self.crow.to(torch.int32)
        self.size = m

    def matrix(self, values: torch.Tensor, rows_upto: int) -> torch.Tensor:
        """CSR view of the leading ``rows_upto`` rows (a prefix of the renumbered matrix)."""
        n = rows_upto
        nnz = int(self.crow[n])
        return _csr(self.crow32[: n + 1], self.col[:nnz], values[:nnz], (n, self.size + 1))


TINY = 1e-30


def _flush_tiny(g: torch.Tensor) -> None:
    """Zero the entries under ``TINY`` in place (``g >= 0``, columns of norm ~1 before the product).

    Far from the anchors ``g_t`` decays geometrically into denormal floats, which slow CPU arithmetic
    10-100×; such values carry no information (the reachable set is computed exactly by
    :func:`reachable`, not from the float support).
    """
    torch.nn.functional.threshold_(g, TINY, 0.0)


def _spmm(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``A @ x`` for ``x`` ``[M, Q]``; one column goes through the matrix-vector kernel (~25 % faster)."""
    if x.shape[1] == 1:
        return torch.mv(A, x[:, 0])[:, None]
    return A @ x


def power_iteration(
    graph: SceneGraph,
    g0: torch.Tensor,  # [N, Q] (Morton order)
    steps: int,
    sqrt_p: torch.Tensor | None = None,  # [N, Q]
    binarize: float | None = None,
    eps: float = 1e-12,
    native: bool = True,
) -> torch.Tensor:
    """``T`` steps of ``g_{t+1} = A g_t / ||g_t||`` (Eq. 5.8), restricted to reachable nodes.

    Args:
        graph: the scene graph (``S`` on its edges).
        g0: ``[N, Q]`` non-negative initial weights, one column per prompt.
        steps: ``T``.
        sqrt_p: ``[N, Q]`` square root of the unary term ``P`` per prompt, or None (``P = 1``).
        binarize: if set, ``A_ij := 1[S_ij √(P_i P_j) > binarize]`` (then each prompt has its own
            matrix and columns are diffused one by one).
        eps: guards the column normalisation.
        native: on the CPU, run the float route (``binarize=None``) in the compiled kernel
            (:func:`symmetric_upper`, ``_diffuse.c``) when it is available and ``S`` is exactly
            symmetric; False keeps torch's CSR product (the reference). Equal to float32 rounding.

    Returns:
        ``[N, Q]`` float32 ``g_T`` (Morton order).
    """
    n, q = g0.shape
    out = torch.zeros(n, q, dtype=torch.float32, device=g0.device)
    if binarize is not None:
        for j in range(q):  # A depends on the column through the threshold
            sp = sqrt_p[:, j] if sqrt_p is not None else None
            out[:, j] = _power_restricted(graph, g0[:, j : j + 1], steps, None, binarize, sp, eps)[:, 0]
        return out
    return _power_restricted(graph, g0, steps, sqrt_p, None, None, eps, native)


def _mm_into(A: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = A @ x`` into a preallocated buffer on the CPU (fresh buffers page-fault every step)."""
    if x.is_cuda:
        out.copy_(_spmm(A, x))
    elif x.shape[1] == 1:  # the matrix-vector kernel is ~25 % faster for one column
        out[:, 0].addmv_(A, x[:, 0], beta=0)
    else:
        # in-place addmm with beta=0 calls MKL straight into `out`; torch.mm(out=) zero-fills a
        # temporary and copies it back, which doubled the cost of the product (36 -> 17 ms, 600k x 20)
        out.addmm_(A, x, beta=0)
    return out


def _rescale_(x: torch.Tensor) -> None:
    """Divide each column of ``x >= 0`` by its sum and zero the entries under ``TINY`` (in place).

    The iteration runs unnormalised between rescalings (a per-column scalar commutes with ``A``), so
    only the range needs keeping: values grow by at most the largest row sum of ``A`` per step. The
    column sums come from a matrix-vector product (BLAS), far faster than a column-wise ``amax``.
    """
    s = torch.mv(x.t(), torch.ones(x.shape[0], dtype=x.dtype, device=x.device))
    x.div_(torch.where(s > 0, s, torch.ones_like(s)))
    _flush_tiny(x)


RESCALE_EVERY = 4


BLOCK_ROWS = 2048


class _Blocks:
    """Row ranges of the Morton-ordered matrix that a diffusion from ``seeds`` touches, step by step.

    Rows are cut into fixed blocks of :data:`BLOCK_ROWS`; a block is active for the product that
    yields ``x_{t+1}`` once any of its rows is within ``t + 1`` hops of the seeds. Runs of active
    blocks are multiplied as CSR slices of the graph itself (views: nothing nnz-sized is copied or
    renumbered). Rows of an active block beyond the reach come out exactly zero (their neighbours are
    all still zero), and the active set only grows, so rows never multiplied stay zero: exact.
    """

    def __init__(self, graph: SceneGraph, seeds: torch.Tensor, steps: int, values: torch.Tensor):
        n = graph.num_nodes
        dist = hop_distances(graph, seeds, steps).to(graph.device)
        nb = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
        pad = torch.full((nb * BLOCK_ROWS,), steps + 1, dtype=torch.int32, device=dist.device)
        pad[:n] = dist
        self.block_hop = pad.view(nb, BLOCK_ROWS).amin(1).cpu().tolist()
        self.n, self.nb, self.steps = n, nb, steps
        self.indptr = graph.indptr
        self.crow32 = graph.indptr.to(torch.int32)
        self.indptr_list = None
        self.col, self.values = graph.indices, values
        self._ranges: dict = {}
        self._mats: dict = {}

    def ranges(self, hop: int) -> list:
        """``[(row_start, row_end), ...]``: the runs of blocks with a row within ``hop`` hops."""
        if hop not in self._ranges:
            out, start = [], None
            for b, h in enumerate(self.block_hop + [self.steps + 2]):
                on = h <= hop and b < self.nb
                if on and start is None:
                    start = b
                elif not on and start is not None:
                    out.append((start * BLOCK_ROWS, min(b * BLOCK_ROWS, self.n)))
                    start = None
            self._ranges[hop] = out
        return self._ranges[hop]

    def matrix(self, a: int, b: int) -> torch.Tensor:
        """Rows ``[a, b)`` as a CSR tensor over all ``N`` columns (index and value views)."""
        if (a, b) not in self._mats:
            if self.indptr_list is None:
                self.indptr_list = self.indptr.cpu()
            e0, e1 = int(self.indptr_list[a]), int(self.indptr_list[b])
            crow = self.crow32[a : b + 1] - int(e0)
            self._mats[(a, b)] = _csr(crow, self.col[e0:e1], self.values[e0:e1], (b - a, self.n))
        return self._mats[(a, b)]

    def product(self, x: torch.Tensor, y: torch.Tensor, hop: int) -> tuple[int, int]:
        """``y[rows] = S[rows] @ x`` for the rows active at ``hop``; returns the span ``(lo, hi)``."""
        rs = self.ranges(hop)
        for a, b in rs:
            _mm_into(self.matrix(a, b), x, y[a:b])
        return (rs[0][0], rs[-1][1]) if rs else (0, 0)


# --- the compiled kernel (_diffuse.c) ---------------------------------------------------------------

_DIFFUSE_C = Path(__file__).with_name("_diffuse.c")
UPPER_WINDOW = 16384
"""Rows per partition of the compiled kernel, and the largest column distance ``j - i`` stored as a
16-bit delta (entries farther apart are kept in both directions as a small CSR). A constant, not a
function of the machine: the summation order of every output element depends on it."""
UPPER_SUB = BLOCK_ROWS
"""Rows per sub-block of the restriction in the compiled kernel (divides :data:`UPPER_WINDOW`)."""


def _diffuse_lib():
    """The compiled diffusion kernel (:mod:`fulcra.native`), or None (said once) when unavailable."""
    from fulcra import native

    c = ctypes
    vp, i64, f32 = c.c_void_p, c.c_int64, c.c_float
    sig = {
        "fulcra_sym_count": [i64, vp, vp, i64, vp, vp, vp, c.c_int],
        "fulcra_sym_fill": [i64, vp, vp, vp, i64, vp, vp, vp, vp, vp, vp, c.c_int, c.c_int],
        "fulcra_sym_power": [i64] * 4 + [vp] * 9 + [i64, i64, f32, f32, vp, vp, c.c_int],
        "fulcra_hops": [i64, vp, vp, vp, vp, f32, c.c_int, vp, i64, vp, vp, vp],
    }
    return native.kernel(
        _DIFFUSE_C,
        sig,
        what="graph_diffusion: compiled diffusion kernel",
        fallback="torch's CSR product",
        openmp=True,
    )


class UpperS:
    """``S`` stored once: the entries ``(i, j)`` with ``0 <= j - i < window`` row by row (uint16
    delta ``j - i``, float32 value, the diagonal included), and the "far" entries
    (``|j - i| >= window``) in both directions as a CSR with int32 columns. Values are the float32
    values of the full CSR, bit for bit.

    Attributes (NumPy arrays): ``near_ptr [N+1]`` int64, ``delta [M]`` uint16, ``near_val [M]``
    float32, ``far_ptr [N+1]`` int64, ``far_col [F]`` int32, ``far_val [F]`` float32; ``window``,
    ``sub``; ``build_s`` (seconds to build).
    """

    def __init__(self, near_ptr, delta, near_val, far_ptr, far_col, far_val, window, sub, build_s):
        self.near_ptr, self.delta, self.near_val = near_ptr, delta, near_val
        self.far_ptr, self.far_col, self.far_val = far_ptr, far_col, far_val
        self.window, self.sub, self.build_s = int(window), int(sub), float(build_s)

    @property
    def num_nodes(self) -> int:
        return len(self.near_ptr) - 1

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.near_ptr, self.delta, self.near_val, self.far_ptr, self.far_col, self.far_val)
        )

    def __repr__(self) -> str:
        return (
            f"UpperS(num_nodes={self.num_nodes}, near={len(self.delta)}, far={len(self.far_col)}, "
            f"window={self.window}, {self.nbytes / 1e6:.1f} MB)"
        )


def symmetric_upper(
    graph: SceneGraph,
    window: int = UPPER_WINDOW,
    sub: int = UPPER_SUB,
    threads: int | None = None,
    check: bool | None = None,
) -> UpperS | None:
    """The :class:`UpperS` storage of ``graph.similarity`` for the compiled kernel, built on first use
    and cached on the graph (like ``rows``).

    ``check``: verify that ``S`` is exactly symmetric (pattern and values, bit for bit; a bisection
    per entry below the diagonal, most of the build time). Default: unless ``graph.symmetric`` says
    it is by construction (graphs :func:`~._graph.build_scene_graph` returns and those derived from
    them): their construction is trusted (only the counts of entries below and above the diagonal
    are compared) and the upper triangle's values serve both directions.

    Returns None when the kernel is unavailable, the graph is not on the CPU, or ``S`` is not
    symmetric or not a valid CSR with ascending columns; the caller then keeps torch's CSR product.
    """
    if check is None:
        check = not getattr(graph, "symmetric", False)
    if window < 1 or window > 65536 or sub < 1 or window % sub:
        raise ValueError(f"graph_diffusion: window must be in [1, 65536] and a multiple of sub, got {window}, {sub}")
    if graph.device.type != "cpu":
        return None
    vals = graph.similarity
    cached = graph._upper
    if cached is not None and cached[0] is vals and cached[1] == (window, sub) and (cached[3] or not check):
        return cached[2]
    lib = _diffuse_lib()
    if lib is None:
        return None
    from fulcra import native
    from fulcra.native import ptr

    t0 = time.perf_counter()
    nt = max(1, int(threads or native.threads()))  # 1 in a forked child
    n = graph.num_nodes
    indptr = np.ascontiguousarray(graph.indptr.numpy(), dtype=np.int64)
    indices = np.ascontiguousarray(graph.indices.numpy(), dtype=np.int32)
    values = np.ascontiguousarray(vals.detach().numpy(), dtype=np.float32)
    near_cnt = np.empty(n, dtype=np.int64)
    far_cnt = np.empty(n, dtype=np.int64)
    lu = np.zeros(2, dtype=np.int64)
    st = lib.fulcra_sym_count(
        n, ptr(indptr, np.int64), ptr(indices, np.int32), window, ptr(near_cnt, np.int64),
        ptr(far_cnt, np.int64), ptr(lu, np.int64), nt,
    )  # fmt: skip
    out = None
    if st == 0 and lu[0] == lu[1]:
        near_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(near_cnt, out=near_ptr[1:])
        far_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(far_cnt, out=far_ptr[1:])
        del near_cnt, far_cnt
        m, f = int(near_ptr[-1]), int(far_ptr[-1])
        delta = np.empty(m, dtype=np.uint16)
        near_val = np.empty(m, dtype=np.float32)
        far_col = np.empty(f, dtype=np.int32)
        far_val = np.empty(f, dtype=np.float32)
        asym = lib.fulcra_sym_fill(
            n, ptr(indptr, np.int64), ptr(indices, np.int32), ptr(values, np.float32), window,
            ptr(near_ptr, np.int64), ptr(far_ptr, np.int64), delta.ctypes.data, ptr(near_val, np.float32),
            ptr(far_col, np.int32), ptr(far_val, np.float32), int(check), nt,
        )  # fmt: skip
        if not asym:
            out = UpperS(near_ptr, delta, near_val, far_ptr, far_col, far_val, window, sub, time.perf_counter() - t0)
    if out is None:
        why = {2: "a column index out of range", 3: "columns not ascending within a row"}.get(st, "S is not symmetric")
        log.debug("graph_diffusion: compiled diffusion kernel not used (%s)", why)
    graph._upper = (vals, (window, sub), out, bool(check))
    return out


def _block_hops(dist: torch.Tensor, n: int, rows: int, steps: int) -> torch.Tensor:
    """Per block of ``rows`` consecutive nodes, the smallest hop distance in it ``[ceil(n / rows)]``."""
    nb = (n + rows - 1) // rows
    pad = torch.full((nb * rows,), steps + 1, dtype=torch.int32, device=dist.device)
    pad[:n] = dist
    return pad.view(nb, rows).amin(1)


def _power_native(lib, U: UpperS, graph, g0, steps, sqrt_p, eps, threads=None) -> torch.Tensor:
    """:func:`_power_restricted` (float route) in the compiled kernel; ``steps >= 1``, CPU tensors."""
    from fulcra import native
    from fulcra.native import ptr

    n, q = g0.shape
    seeds = (g0 > 0).any(1)
    sub_hop = _block_hops(hop_distances(graph, seeds, steps), n, U.sub, steps).numpy()
    sub_hop = np.ascontiguousarray(sub_hop, dtype=np.int32)
    g = g0.detach().float().contiguous()
    sp = sqrt_p.detach().float().contiguous() if sqrt_p is not None else None
    # the two iterates in one allocation, the second 2 KiB off the first modulo 4 KiB (the kernel
    # puts its scatter buffer 1 KiB off both): the product stores into y[j] and soon loads x[j] for
    # the same j's, which equal 4 KiB offsets could make falsely dependent ("4K aliasing"). A
    # precaution: no difference was measurable on this machine
    m = n * q
    store = torch.zeros(2 * m + 2048, dtype=torch.float32)
    o0 = (-(store.data_ptr() // 4)) % 1024  # floats to the next 4 KiB boundary
    o1 = o0 + m + (512 - m) % 1024  # ≡ o0 + 512 floats (2 KiB) modulo 1024
    bufs = [store[o0 : o0 + m].view(n, q), store[o1 : o1 + m].view(n, q)]
    nt = max(1, int(threads or native.threads()))  # 1 in a forked child
    st = lib.fulcra_sym_power(
        n, q, U.window, U.sub, ptr(U.near_ptr, np.int64), U.delta.ctypes.data, ptr(U.near_val, np.float32),
        ptr(U.far_ptr, np.int64), ptr(U.far_col, np.int32), ptr(U.far_val, np.float32), ptr(sub_hop, np.int32),
        ptr(g, np.float32, "g0"), ptr(sp, np.float32, "sqrt_p") if sp is not None else None, steps,
        RESCALE_EVERY, eps, TINY, ptr(bufs[0], np.float32), ptr(bufs[1], np.float32), nt,
    )  # fmt: skip
    if st != 0:
        raise MemoryError("graph_diffusion: the compiled diffusion kernel ran out of memory")
    return bufs[steps % 2].clone()


def _power_restricted(graph, g0, steps, sqrt_p, binarize, sp_bin, eps, native=True):
    n, q = g0.shape
    seeds = (g0 > 0).any(1)
    out = torch.zeros(n, q, dtype=torch.float32, device=g0.device)
    if not bool(seeds.any()) or steps <= 0:
        return g0.float().clone() if steps <= 0 else out
    if native and binarize is None and g0.device.type == "cpu" and graph.device.type == "cpu":
        lib = _diffuse_lib()
        U = symmetric_upper(graph) if lib is not None else None
        if U is not None:
            return _power_native(lib, U, graph, g0, steps, sqrt_p, eps)
    if binarize is not None:
        values = (edge_values(graph, torch.arange(graph.nnz, device=g0.device), sp_bin) > binarize).to(torch.float32)
        sp = None
    else:
        values = graph.similarity
        sp = sqrt_p.float().contiguous() if sqrt_p is not None else None
    R = _Blocks(graph, seeds, steps, values)
    # Eq. 5.8 with A = D S D (D = diag √P): g_T = A^T g_0 / ||A^{T-1} g_0||, every intermediate
    # normalisation being a per-column scalar. So iterate x_t = D A^t g_0 (up to a per-column scale),
    # x_{t+1} = P ⊙ (S x_t): one product and one elementwise pass (over the active span) per step,
    # with a rescaling every few steps for range; the last two steps recover the exact norm
    # ||A^{T-1} g_0|| in x's scale.
    P = sp.square() if sp is not None else None
    dev = g0.device
    bufs = [torch.zeros(n, q, dtype=torch.float32, device=dev) for _ in range(2)]
    x = bufs[0]
    g_init = g0.float()
    norm = torch.linalg.vector_norm(g_init, dim=0)  # ||A^0 g_0||
    if sp is not None:
        torch.mul(g_init, sp, out=x)
    else:
        x.copy_(g_init)
    for t in range(steps - 1):  # x_t -> x_{t+1}
        y = bufs[(t + 1) % 2]
        last = t == steps - 2
        lo, hi = R.product(x, y, t + 1)  # x_{t+1} is zero beyond the nodes within t+1 hops
        z = y[lo:hi]
        if last:  # ||A^{T-1} g_0|| in x's scale: A^{T-1} g_0 ∝ D z
            norm = torch.linalg.vector_norm(z * sp[lo:hi] if sp is not None else z, dim=0)
        if P is not None:
            z.mul_(P[lo:hi])
        x = y
        if t % RESCALE_EVERY == RESCALE_EVERY - 1 and not last:
            _rescale_(x[lo:hi])
    g = bufs[steps % 2]
    lo, hi = R.product(x, g, steps)
    if sp is not None:
        g[lo:hi].mul_(sp[lo:hi])
    g.div_(norm.add_(eps) if steps > 0 else norm)
    _flush_tiny(g)
    return g


def power_iteration_full(
    graph: SceneGraph, g0: torch.Tensor, steps: int, sqrt_p: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """Eq. 5.8 on the whole graph every step (no restriction): the baseline for the restricted path."""
    A = _csr(graph.indptr.to(torch.int32), graph.indices, graph.similarity, (graph.num_nodes, graph.num_nodes))
    g = g0.float()
    x = torch.empty_like(g)
    for t in range(steps):
        norm = torch.linalg.vector_norm(g, dim=0).add_(eps)
        if sqrt_p is not None:
            torch.mul(g, sqrt_p, out=x).div_(norm)
        else:
            torch.div(g, norm, out=x)
        g = _spmm(A, x)
        if sqrt_p is not None:
            g.mul_(sqrt_p)
        if t % 4 == 3:
            _flush_tiny(g)
    return g
