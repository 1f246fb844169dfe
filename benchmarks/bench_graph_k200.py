"""Graph diffusion at the official default k = 200: graph construction and diffusion beside scipy, one run.

Measures in one process, on the scene-like points of :func:`bench_graph.scene_points` (D = 40
features):

1. graph construction — fulcra's :func:`build_scene_graph` (Morton order, exact kNN, symmetrised
   CSR, feature distances on every edge, ``s_f``; the compiled kNN kernel when a C compiler is
   there, and again with ``FULCRA_NATIVE=0``, the NumPy path) against scipy
   ``cKDTree(pts).query(pts, k+1, workers=threads)`` alone (the query only — the tree build is timed
   apart — on the shuffled float32 points, with as many threads as fulcra);
2. diffusion, T steps of Eq. 5.8 with a unary term, 1 prompt and Q prompts as columns — fulcra's
   :func:`power_iteration` (the ``S_f`` values computed first, as every prompt needs them; the
   compiled kernel on ``S`` stored once, whose structure build is timed and added to the
   construction figure, and again the previous torch CSR path, ``native=False``) against
   scipy's float32 ``csr_matrix @ x`` running the same iteration on the whole graph, in the input
   (shuffled) order as a PLY stores it and in fulcra's Morton order. scipy's sparse product has no
   threads, so fulcra's one prompt is also timed on one thread (the same-threads ratio; the kernel's
   output must be bitwise the same on 1 and 2 threads).

Peak memory: ``VmHWM`` of the process after each phase (fulcra's phases run first).
scipy's Q-prompt iteration can take minutes at k = 200; ``--scipy-steps`` runs fewer steps of it and
scales the time to T steps (printed as such).

Run:  .venv/bin/python benchmarks/bench_graph_k200.py --n 600000 --k 200 --steps 100 --prompts 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_graph import scene_points  # noqa: E402


def hwm_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def bench(
    n: int,
    k: int,
    steps: int,
    prompts: int,
    threads: int,
    scipy_steps: int | None,
    compare_numpy: bool = True,
    segmentation: bool = True,
) -> dict:
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from fulcra_plugins.refiners.graph_diffusion._diffusion import power_iteration
    from fulcra_plugins.refiners.graph_diffusion._graph import build_scene_graph

    torch.set_num_threads(threads)
    pts, labels, feats = scene_points(n)
    res: dict = {"n": n, "k": k, "steps": steps, "prompts": prompts, "threads": threads, "torch": torch.__version__}
    res["hwm_inputs_gb"] = hwm_gb()

    from fulcra import native
    from fulcra_plugins.refiners.graph_diffusion._graph import _KNN_C, _knn_lib

    res["native_knn"] = _knn_lib() is not None
    res["native_reason"] = native.reason(_KNN_C)
    t0 = time.perf_counter()
    graph = build_scene_graph(torch.from_numpy(pts), torch.from_numpy(feats), k=k)
    res["fulcra_graph_s"] = time.perf_counter() - t0
    res["nnz"] = graph.nnz
    res["hwm_after_graph_gb"] = hwm_gb()
    if compare_numpy and res["native_knn"]:  # the same graph without the compiled kernel
        os.environ["FULCRA_NATIVE"] = "0"
        t0 = time.perf_counter()
        g_np = build_scene_graph(torch.from_numpy(pts), torch.from_numpy(feats), k=k)
        res["fulcra_graph_numpy_path_s"] = time.perf_counter() - t0
        del os.environ["FULCRA_NATIVE"]
        res["numpy_path_same_graph"] = bool(
            torch.equal(g_np.indptr, graph.indptr) and torch.equal(g_np.indices, graph.indices)
        )
        res["numpy_path_max_abs_distance_diff"] = float((g_np.distance - graph.distance).abs().max())
        del g_np

    # prompts: 200 anchors on one object each, RBF unary term (the scribble case of C.1.3)
    rng = np.random.default_rng(1)
    lab_m = torch.from_numpy(labels)[graph.perm]
    f = graph.features
    objs = rng.choice(np.arange(2, labels.max() + 1), size=prompts, replace=True)
    g0 = torch.zeros(n, prompts)
    sqrt_p = torch.zeros(n, prompts)
    for j, o in enumerate(objs):
        idx = torch.nonzero(lab_m == int(o)).flatten()
        pick = idx[torch.from_numpy(rng.choice(len(idx), size=min(200, len(idx)), replace=False))]
        g0[pick, j] = 1.0
        mean = f[pick].mean(0)
        mean = mean / mean.norm()
        d2 = (f - mean).square().sum(1)
        med = d2[pick].sqrt().median()
        sqrt_p[:, j] = torch.exp(-d2 / (2 * med**2 + 1e-12)).sqrt()

    t0 = time.perf_counter()
    sim = graph.similarity  # S_f on every edge (lazy: computed on first use)
    res["fulcra_similarity_s"] = time.perf_counter() - t0
    # S stored once for the compiled diffusion kernel (upper triangle, 16-bit deltas): built once per
    # graph, part of the construction figure
    from fulcra_plugins.refiners.graph_diffusion._diffusion import _DIFFUSE_C, symmetric_upper

    t0 = time.perf_counter()
    upper = symmetric_upper(graph)
    res["fulcra_upper_build_s"] = time.perf_counter() - t0
    res["native_diffusion"] = upper is not None
    res["native_diffusion_reason"] = native.reason(_DIFFUSE_C)
    if upper is not None:
        res["upper_near_entries"] = int(len(upper.delta))
        res["upper_far_entries"] = int(len(upper.far_col))
        res["upper_mb"] = upper.nbytes / 1e6
    res["fulcra_construction_s"] = res["fulcra_graph_s"] + res["fulcra_upper_build_s"]
    res["hwm_after_upper_gb"] = hwm_gb()
    outs = {}
    # fulcra with the compiled kernel (the default on the CPU), then the previous torch CSR path
    for label, nat in (("fulcra", True), ("torch_path", False)):
        for q, tag in ((1, "one"), (prompts, "many")):
            gq, sq = g0[:, :q].contiguous(), sqrt_p[:, :q].contiguous()
            t0 = time.perf_counter()
            o = power_iteration(graph, gq, steps, sq, native=nat)
            res[f"{label}_diffusion_{tag}_s"] = time.perf_counter() - t0
            if nat:
                outs[tag] = o
            else:
                res[f"max_rel_err_{tag}_kernel_vs_torch_path"] = float(
                    (o - outs[tag]).abs().max() / (o.abs().max() + 1e-30)
                )
            del o
    res["hwm_after_fulcra_gb"] = hwm_gb()
    # scipy's sparse product runs on one thread whatever the machine has: fulcra's one prompt on one
    # thread too, for a same-threads ratio (and the kernel's output must not change with it)
    torch.set_num_threads(1)
    for label, nat in (("fulcra", True), ("torch_path", False)):
        t0 = time.perf_counter()
        one_1t = power_iteration(graph, g0[:, :1].contiguous(), steps, sqrt_p[:, :1].contiguous(), native=nat)
        res[f"{label}_diffusion_one_1thread_s"] = time.perf_counter() - t0
        if nat:
            res["one_1thread_equal_bitwise"] = bool(torch.equal(one_1t, outs["one"]))
    torch.set_num_threads(threads)
    del one_1t

    # --- scipy references -------------------------------------------------------------------------
    # cKDTree on the same float32 points (it computes in float64, as fulcra's exact search does),
    # the same number of threads as fulcra (workers=threads), the build timed apart from the query
    t0 = time.perf_counter()
    tree = cKDTree(pts)
    res["scipy_ckdtree_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tree.query(pts, k=k + 1, workers=threads)
    res["scipy_ckdtree_query_s"] = time.perf_counter() - t0
    del tree

    perm = graph.perm.numpy()
    inv = graph.inv.numpy()
    indptr = graph.indptr.numpy()
    A_m = sp.csr_matrix((sim.numpy(), graph.indices.numpy(), indptr), shape=(n, n))
    rows_in = perm[graph.rows.numpy()]
    A_in = sp.csr_matrix(
        (sim.numpy(), (rows_in, perm[graph.indices.numpy().astype(np.int64)])), shape=(n, n), dtype=np.float32
    )
    A_in.indices = A_in.indices.astype(np.int32)
    A_in.indptr = A_in.indptr.astype(np.int32)
    del rows_in, graph._rows
    graph._rows = None

    def scipy_power(A, g, s, t_steps):
        g = g.copy()
        for _ in range(t_steps):
            g = g / (np.linalg.norm(g, axis=0, keepdims=True) + 1e-12)
            g = s * (A @ (s * g))
        return g

    for q, tag in ((1, "one"), (prompts, "many")):
        ts = steps if (q == 1 or scipy_steps is None) else min(steps, scipy_steps)
        for order, A, ix in (("input", A_in, inv), ("morton", A_m, None)):
            g_ = g0[:, :q].numpy()
            s_ = sqrt_p[:, :q].numpy()
            if ix is not None:
                g_, s_ = g_[ix], s_[ix]
            t0 = time.perf_counter()
            ref = scipy_power(A, g_, s_, ts)
            dt = time.perf_counter() - t0
            res[f"scipy_diffusion_{tag}_{order}_s"] = dt * steps / ts
            res[f"scipy_diffusion_{tag}_{order}_steps_run"] = ts
            if ts == steps:
                got = outs[tag].numpy()
                if ix is not None:
                    got = got[ix]
                res[f"max_rel_err_{tag}_vs_scipy_{order}"] = float(
                    np.abs(got - ref).max() / (np.abs(ref).max() + 1e-30)
                )
    res["hwm_end_gb"] = hwm_gb()
    if not segmentation:
        return _ratios(res)
    # --- the segmentation route (scribbles, masks): the thesis binarises A at 1e-5 and keeps the nodes
    # with g_T > 0. fulcra computes that set exactly by breadth-first hops (reachable); the official
    # code runs T float products of the binarised matrix. One prompt, the same T.
    from fulcra_plugins.refiners.graph_diffusion._diffusion import reachable

    seeds = g0[:, 0] > 0
    t0 = time.perf_counter()
    reached = reachable(graph, seeds, steps, sqrt_p[:, 0].contiguous(), threshold=1e-5)
    res["fulcra_segmentation_one_s"] = time.perf_counter() - t0
    s_in = sqrt_p[:, 0].numpy()[inv]
    coo = A_in.tocoo()
    keep = (coo.data * s_in[coo.row] * s_in[coo.col]) > 1e-5
    A_bin = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (coo.row[keep], coo.col[keep])), shape=(n, n), dtype=np.float32
    )
    del coo, keep
    g_ = g0[:, :1].numpy()[inv].astype(np.float64)
    t0 = time.perf_counter()
    for _ in range(steps):
        g_ = A_bin @ (g_ / (np.linalg.norm(g_) + 1e-300))
    res["scipy_segmentation_one_input_s"] = time.perf_counter() - t0
    res["segmentation_reached_equal"] = bool(np.array_equal(g_[:, 0] > 0, reached.numpy()[inv]))
    res["segmentation_reached"] = int(reached.sum())
    del A_bin
    res["hwm_end_gb"] = hwm_gb()
    res["speedup_segmentation_one_vs_scipy_input"] = (
        res["scipy_segmentation_one_input_s"] / res["fulcra_segmentation_one_s"]
    )
    return _ratios(res)


def _ratios(r: dict) -> dict:
    r["ratio_graph_vs_ckdtree_query"] = r["fulcra_graph_s"] / r["scipy_ckdtree_query_s"]
    r["ratio_construction_vs_ckdtree_query"] = r["fulcra_construction_s"] / r["scipy_ckdtree_query_s"]
    for label in ("fulcra", "torch_path"):
        for tag in ("one", "many"):
            for order in ("input", "morton"):
                r[f"speedup_{label}_{tag}_vs_scipy_{order}"] = (
                    r[f"scipy_diffusion_{tag}_{order}_s"] / r[f"{label}_diffusion_{tag}_s"]
                )
        r[f"speedup_{label}_one_1thread_vs_scipy_morton"] = (
            r["scipy_diffusion_one_morton_s"] / r[f"{label}_diffusion_one_1thread_s"]
        )
        r[f"{label}_many_over_one"] = r[f"{label}_diffusion_many_s"] / r[f"{label}_diffusion_one_s"]
    r["speedup_kernel_vs_torch_path_one"] = r["torch_path_diffusion_one_s"] / r["fulcra_diffusion_one_s"]
    r["speedup_kernel_vs_torch_path_many"] = r["torch_path_diffusion_many_s"] / r["fulcra_diffusion_many_s"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600_000)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--scipy-steps", type=int, default=None, help="steps of scipy's Q-prompt run (time scaled to --steps)"
    )
    ap.add_argument("--no-compare-numpy", action="store_true", help="skip the graph built without the C kernel")
    ap.add_argument("--no-segmentation", action="store_true", help="skip the segmentation-route comparison")
    a = ap.parse_args()
    out = bench(a.n, a.k, a.steps, a.prompts, a.threads, a.scipy_steps, not a.no_compare_numpy, not a.no_segmentation)
    out["loadavg"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
