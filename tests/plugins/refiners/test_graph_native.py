"""The compiled kNN kernel (_knn.c through fulcra.native) against the NumPy grid path and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fulcra import native
from fulcra_plugins.refiners.graph_diffusion import _graph as gm
from fulcra_plugins.refiners.graph_diffusion._graph import build_scene_graph

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler: only the NumPy path exists")


@pytest.fixture
def kernel(monkeypatch):
    """The kernel tests exercise the kernel even in a run with FULCRA_NATIVE=0 set for the rest."""
    monkeypatch.delenv("FULCRA_NATIVE", raising=False)


def _sorted_inputs(pos, feats=None):
    q, lo, scale = gm._quantise(pos, cubic=True)
    codes = gm._interleave(q)
    perm = np.argsort(codes, kind="stable")
    f = None if feats is None else np.ascontiguousarray(feats[perm])
    return (pos[perm].astype(np.float64), q[perm], codes[perm], lo, scale), f


def _clouds():
    rng = np.random.default_rng(3)
    surf = rng.normal(size=(1800, 3)) * [3, 3, 0.05]
    blob = rng.normal(size=(600, 3)) * 0.2 + 5
    lattice = np.stack(np.meshgrid(*[np.arange(12)] * 3), -1).reshape(-1, 3)  # ties everywhere
    dup = np.repeat(rng.normal(size=(700, 3)), 3, 0)  # every point three times
    return {
        "surface+blob": np.concatenate([surf, blob]).astype(np.float32),
        "lattice": lattice.astype(np.float32),
        "duplicates": dup.astype(np.float32),
    }


@needs_cc
@pytest.mark.parametrize("name", ["surface+blob", "lattice", "duplicates"])
@pytest.mark.parametrize("k", [16, 200])
def test_kernel_equals_numpy_path_and_bruteforce(kernel, name, k):
    pos = _clouds()[name]
    n = len(pos)
    rng = np.random.default_rng(k)
    feats = rng.normal(size=(n, 12)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)  # unit rows, as build_scene_graph passes them
    args, f = _sorted_inputs(pos, feats)
    assert gm._knn_lib() is not None, native.reason(gm._KNN_C)
    fast = gm._grid_knn_sorted(*args, k, f, native=True)
    slow = gm._grid_knn_sorted(*args, k, f, native=False)
    # the same neighbour lists, index for index (ties broken the same way: lowest index first)
    np.testing.assert_array_equal(fast[0], slow[0])
    # dot products: float64 accumulation vs float32 GEMM, equal to float32 rounding
    np.testing.assert_allclose(fast[1], slow[1], rtol=0, atol=2e-6)
    ps = args[0]
    d = ((ps[:, None] - ps[None]) ** 2).sum(-1)
    np.fill_diagonal(d, -1)
    ref = np.sort(np.argsort(d, 1, kind="stable")[:, : k + 1], 1)  # exact distances, lowest index first
    np.testing.assert_array_equal(fast[0], ref)
    np.testing.assert_allclose(
        fast[1], np.einsum("id,ikd->ik", f.astype(np.float64), f[ref].astype(np.float64)), atol=1e-6
    )


@needs_cc
def test_kernel_is_bitwise_identical_for_1_and_2_threads(kernel):
    pos = _clouds()["surface+blob"]
    feats = np.random.default_rng(0).normal(size=(len(pos), 40)).astype(np.float32)
    args, f = _sorted_inputs(pos, feats)
    before = torch.get_num_threads()
    try:
        out = []
        for t in (1, 2):
            torch.set_num_threads(t)  # the kernel runs torch.get_num_threads() OpenMP threads
            out.append(gm._grid_knn_sorted(*args, 60, f, native=True))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(out[0][0], out[1][0])
    assert out[0][1].tobytes() == out[1][1].tobytes()


@pytest.mark.parametrize("env", ["1", "0"])
def test_scene_graph_same_with_and_without_the_kernel(monkeypatch, env):
    """FULCRA_NATIVE=0 forces the NumPy path; both give the same graph (structure exactly, S_f to
    float32 rounding) and the same graph as the kd-tree route."""
    if env == "1" and native.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("FULCRA_NATIVE", env)
    rng = np.random.default_rng(7)
    pos = torch.from_numpy(_clouds()["surface+blob"])
    feats = torch.from_numpy(rng.normal(size=(len(pos), 16)).astype(np.float32))
    G = build_scene_graph(pos, feats, k=50, knn="grid")
    assert (gm._knn_lib() is None) == (env == "0")
    R = build_scene_graph(pos, feats, k=50, knn="kdtree")
    assert torch.equal(G.indptr, R.indptr) and torch.equal(G.indices, R.indices)
    np.testing.assert_allclose(G.similarity.numpy(), R.similarity.numpy(), atol=1e-5)
    assert G.median_distance == pytest.approx(R.median_distance, rel=1e-5)
    G0 = build_scene_graph(pos, feats, k=50, knn="grid", self_loops=False)
    assert int(G0.nnz) == int(G.nnz) - len(pos)


def test_fallback_is_announced_once(monkeypatch, caplog):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    monkeypatch.setattr(native, "_said", set())  # as in a new process: nothing announced or cached yet
    monkeypatch.setattr(native, "_kernels", {})
    with caplog.at_level("WARNING"):
        assert gm._knn_lib() is None and gm._knn_lib() is None
    lines = [r.getMessage() for r in caplog.records if "kNN kernel" in r.getMessage()]
    assert len(lines) == 1 and "FULCRA_NATIVE=0" in lines[0]
