"""The compiled diffusion kernel (_diffuse.c through fulcra.native) against torch's CSR path and a
dense float64 reference: random symmetric graphs with isolated nodes and far columns, 1 and many
prompts, with and without a unary term, bitwise the same on any thread count."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fulcra import native
from fulcra_plugins.refiners.graph_diffusion import _diffusion as dm
from fulcra_plugins.refiners.graph_diffusion._diffusion import power_iteration, symmetric_upper
from fulcra_plugins.refiners.graph_diffusion._graph import SceneGraph

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler: only the torch path exists")


@pytest.fixture
def kernel(monkeypatch):
    """Exercise the kernel even in a run with FULCRA_NATIVE=0 set for the rest."""
    monkeypatch.delenv("FULCRA_NATIVE", raising=False)


def random_graph(n=3000, seed=0, far=3, isolated=25, symmetric=True) -> SceneGraph:
    """A symmetric graph like a Morton-ordered kNN graph: mostly near columns (|i - j| <= 60), a few
    far ones anywhere, self loops on most nodes, some nodes with no edge at all."""
    rng = np.random.default_rng(seed)
    i = np.repeat(np.arange(n), 8)
    j = np.clip(i + rng.integers(-60, 61, size=i.size), 0, n - 1)
    fi = rng.integers(0, n, size=n * far // 10)
    fj = rng.integers(0, n, size=fi.size)
    r, c = np.concatenate([i, fi]), np.concatenate([j, fj])
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    keep = lo != hi
    key = np.unique(lo[keep] * n + hi[keep])
    lo, hi = key // n, key % n
    iso = rng.choice(n, size=isolated, replace=False)
    ok = ~(np.isin(lo, iso) | np.isin(hi, iso))
    lo, hi = lo[ok], hi[ok]
    v = rng.uniform(0.05, 1.0, size=lo.size).astype(np.float32)
    diag = np.setdiff1d(np.flatnonzero(rng.random(n) < 0.9), iso)
    dv = rng.uniform(0.5, 1.0, size=diag.size).astype(np.float32)
    rows = np.concatenate([lo, hi, diag])
    cols = np.concatenate([hi, lo, diag])
    vals = np.concatenate([v, v, dv])
    if not symmetric:  # one mirrored value off by one ulp
        vals[lo.size] = np.nextafter(vals[lo.size], np.float32(2))
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    A.sort_indices()
    indptr = torch.from_numpy(A.indptr.astype(np.int64))
    indices = torch.from_numpy(A.indices.astype(np.int32))
    sim = torch.from_numpy(A.data.astype(np.float32))
    ar = torch.arange(n)
    return SceneGraph(ar, ar, indptr, indices, None, sim, sim, torch.zeros(n, 1), 1.0, 1.0, 8)


def prompts(n, q, seed=1, with_p=True):
    rng = np.random.default_rng(seed)
    g0 = np.zeros((n, q), dtype=np.float32)
    for c in range(q):
        centre = rng.integers(0, n)
        idx = np.clip(centre + rng.integers(-20, 21, size=6), 0, n - 1)
        g0[idx, c] = rng.uniform(0.5, 1.0, size=idx.size)
    sqrt_p = rng.uniform(0.05, 1.0, size=(n, q)).astype(np.float32) if with_p else None
    return torch.from_numpy(g0), (torch.from_numpy(sqrt_p) if with_p else None)


def dense_reference(graph, g0, steps, sqrt_p):
    """Eq. 5.8 in float64 on the whole matrix (no restriction, no rescaling tricks):
    ``g_{t+1} = A g_t / ||g_t||`` with ``A = diag(√P) S diag(√P)``, column by column."""
    n = graph.num_nodes
    S = sp.csr_matrix((graph.similarity.double().numpy(), graph.indices.numpy(), graph.indptr.numpy()), shape=(n, n))
    out = np.zeros(g0.shape)
    for c in range(g0.shape[1]):
        d = sp.diags(sqrt_p[:, c].double().numpy() if sqrt_p is not None else np.ones(n))
        A = (d @ S @ d).tocsr()
        g = g0[:, c].double().numpy()
        for _ in range(steps):
            g = A @ (g / (np.linalg.norm(g) + 1e-12))
        out[:, c] = g
    return out


# the kernel against float64: float32 rounding of a few steps (measured 1-2e-7 after 30 steps);
# torch's CSR path drifts more (measured 3e-5 after 30 steps, 20 prompts), so the two float32
# paths are compared at the torch path's accuracy
TOL_F64 = 2e-6
TOL_TORCH = 2e-4


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@needs_cc
def test_upper_storage_holds_every_entry_exactly(kernel):
    g = random_graph()
    for window, sub in ((16384, 2048), (64, 16), (32, 32)):
        g._upper = None
        U = symmetric_upper(g, window, sub)
        assert U is not None, native.reason(dm._DIFFUSE_C)
        assert symmetric_upper(g, window, sub) is U  # cached on the graph
        n = g.num_nodes
        rows = np.repeat(np.arange(n), np.diff(U.near_ptr))
        cols = rows + U.delta.astype(np.int64)
        assert (U.delta < window).all()
        frows = np.repeat(np.arange(n), np.diff(U.far_ptr))
        assert (np.abs(U.far_col - frows) >= window).all()
        off = cols != rows
        r = np.concatenate([rows, cols[off], frows])
        c = np.concatenate([cols, rows[off], U.far_col])
        v = np.concatenate([U.near_val, U.near_val[off], U.far_val])
        B = sp.csr_matrix((v, (r, c)), shape=(n, n))
        B.sort_indices()
        np.testing.assert_array_equal(B.indptr, g.indptr.numpy())
        np.testing.assert_array_equal(B.indices, g.indices.numpy())
        np.testing.assert_array_equal(B.data, g.similarity.numpy())  # bit for bit
        if window == 64:
            assert len(U.far_col) > 100  # the escape list is exercised


@needs_cc
@pytest.mark.parametrize("q", [1, 20])
@pytest.mark.parametrize("with_p", [True, False])
@pytest.mark.parametrize("steps", [0, 1, 2, 25])
def test_kernel_matches_torch_path_and_dense(kernel, q, with_p, steps):
    g = random_graph(n=1500)
    g0, spp = prompts(g.num_nodes, q, with_p=with_p)
    fast = power_iteration(g, g0, steps, spp)
    if steps > 0:
        assert g._upper is not None and g._upper[2] is not None  # the kernel ran
    slow = power_iteration(g, g0, steps, spp, native=False)
    ref = dense_reference(g, g0, steps, spp)
    assert fast.dtype == torch.float32 and fast.shape == g0.shape
    assert _rel(fast, slow) < TOL_TORCH
    assert _rel(fast, ref) < TOL_F64
    # the support is exact: zero beyond the reach of the prompts, as in the torch path
    assert torch.equal(fast > 0, slow > 0)


@needs_cc
@pytest.mark.parametrize("q", [1, 5, 20, 40])  # 5: the generic column loop; 40: two column chunks
def test_small_partitions_escapes_and_thread_counts(kernel, q):
    g = random_graph(n=1200, seed=3)
    lib = dm._diffuse_lib()
    U = symmetric_upper(g, 64, 16)  # ~40 partitions, far columns everywhere
    g0, spp = prompts(g.num_nodes, q, seed=q)
    for steps in (1, 2, 9):
        outs = [dm._power_native(lib, U, g, g0, steps, spp, 1e-12, threads=t) for t in (1, 2, 3)]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])  # bitwise, any thread count
        ref = dense_reference(g, g0, steps, spp)
        assert _rel(outs[0], ref) < TOL_F64
        slow = power_iteration(g, g0, steps, spp, native=False)
        assert _rel(outs[0], slow) < TOL_TORCH


@needs_cc
def test_default_path_is_bitwise_the_same_on_1_and_2_threads(kernel):
    g = random_graph(n=40000, seed=5, far=1)  # more than two partitions of the default window
    g0, spp = prompts(g.num_nodes, 4, seed=7)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = power_iteration(g, g0, 20, spp)
        torch.set_num_threads(2)
        two = power_iteration(g, g0, 20, spp)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert _rel(one, power_iteration(g, g0, 20, spp, native=False)) < TOL_TORCH
    assert _rel(one, dense_reference(g, g0, 20, spp)) < TOL_F64


@needs_cc
def test_asymmetric_similarity_keeps_the_torch_path(kernel):
    g = random_graph(symmetric=False)
    assert symmetric_upper(g) is None
    g0, spp = prompts(g.num_nodes, 3)
    assert torch.equal(power_iteration(g, g0, 5, spp), power_iteration(g, g0, 5, spp, native=False))


@needs_cc
def test_graphs_symmetric_by_construction_skip_the_check(kernel):
    from fulcra_plugins.refiners.graph_diffusion._graph import build_scene_graph

    rng = np.random.default_rng(2)
    pos = torch.from_numpy(rng.normal(size=(3000, 3)).astype(np.float32))
    feats = torch.from_numpy(rng.normal(size=(3000, 6)).astype(np.float32))
    g = build_scene_graph(pos, feats, k=24)
    assert g.symmetric and g.with_bandwidth(2.0).symmetric and g.to("cpu").symmetric
    trusted = symmetric_upper(g)
    g._upper = None
    checked = symmetric_upper(g, check=True)  # built scene graphs pass the full check too
    assert checked is not None
    for name in ("near_ptr", "delta", "near_val", "far_ptr", "far_col", "far_val"):
        np.testing.assert_array_equal(getattr(trusted, name), getattr(checked, name))
    g0, spp = prompts(g.num_nodes, 2)
    out = power_iteration(g, g0, 12, spp)
    assert _rel(out, dense_reference(g, g0, 12, spp)) < TOL_F64


def test_without_native_kernels_the_torch_path_runs(monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    assert dm._diffuse_lib() is None
    g = random_graph()
    assert symmetric_upper(g) is None
    g0, spp = prompts(g.num_nodes, 2)
    out = power_iteration(g, g0, 6, spp)
    assert _rel(out, dense_reference(g, g0, 6, spp)) < TOL_TORCH


def test_window_must_fit_16_bits():
    g = random_graph(n=50)
    with pytest.raises(ValueError, match="window"):
        symmetric_upper(g, 70000, 2048)
    with pytest.raises(ValueError, match="window"):
        symmetric_upper(g, 1000, 300)


@needs_cc
@pytest.mark.parametrize("threshold,with_p", [(None, False), (0.3, False), (0.3, True), (0.0, True)])
def test_compiled_hops_equal_numpy_and_torch_hops(kernel, threshold, with_p):
    """The compiled breadth-first search gives the NumPy and torch paths' integers: isolated nodes,
    far columns, edge values on both sides of the threshold (float32 products and comparison)."""
    G = random_graph(n=2500, seed=4)
    rng = np.random.default_rng(5)
    sp_ = torch.from_numpy(rng.uniform(0.3, 1.2, size=2500).astype(np.float32)) if with_p else None
    lib = dm._diffuse_lib()
    assert lib is not None
    for seeds_at, steps in (([0, 900, 2499], 1), ([0, 900, 2499], 7), ([5], 400), ([], 3)):
        seeds = torch.zeros(2500, dtype=torch.bool)
        seeds[seeds_at] = True
        got = dm._hops_native(lib, G, seeds, steps, sp_, threshold)
        assert got.dtype == torch.int32
        assert torch.equal(got, dm._hops_numpy(G, seeds, steps, sp_, threshold))
        assert torch.equal(got, dm._hops_torch(G, seeds, steps, sp_, threshold))
        assert torch.equal(got, dm.hop_distances(G, seeds, steps, sp_, threshold))  # the CPU default
    if threshold:  # a positive threshold cuts something on this graph
        full = dm._hops_native(lib, G, seeds_all := torch.arange(2500) == 0, 400, sp_, None)
        cut = dm._hops_native(lib, G, seeds_all, 400, sp_, threshold)
        assert (cut > full).any()


def test_hops_without_native_kernels_use_numpy(monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    G = random_graph(n=500, seed=6)
    seeds = torch.zeros(500, dtype=torch.bool)
    seeds[10] = True
    calls = []
    real = dm._hops_numpy
    monkeypatch.setattr(dm, "_hops_numpy", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(dm.hop_distances(G, seeds, 20), dm._hops_torch(G, seeds, 20))
    assert calls == [1]
