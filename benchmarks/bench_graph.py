"""Benchmark of the graph-diffusion refiner: kNN graph construction and diffusion at scene scale.

Measures, in one run and on the same points, fulcra's path beside plain scipy/NumPy baselines:

1. the symmetric kNN graph over N Gaussian centres (fulcra: Morton order + cKDTree + O(nnz)
   symmetrisation; baseline: scipy ``cKDTree(points).query(points, k+1, workers=-1)`` alone);
2. one prompt, T power-iteration steps of Eq. 5.8 with a unary term (fulcra: restricted to reachable
   nodes, int32 CSR in torch; baselines: scipy ``csr_matrix`` float32 over the whole graph in the
   input order, and fulcra's own whole-graph torch product);
3. Q prompts at once as columns (same comparison).

The points are a generated scene-like set (see :func:`scene_points`): Gaussian centres on surfaces —
a ground plane, walls, boxes, spheres, cylinders — with a thin normal jitter and denser sampling on
small objects, shuffled (a trained 3DGS PLY stores Gaussians in densification order, not spatially).
Features are per-object base vectors plus smooth spatial variation and noise (D = 40, like the
thesis's PCA-reduced DINOv2 features).

Run:  .venv/bin/python benchmarks/bench_graph.py --n 600000 --k 16 --steps 100 --prompts 20
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def scene_points(n: int, seed: int = 0, dim: int = 40):
    """A scene-like set of ``n`` surface points with object labels and features.

    Returns:
        ``(points [n,3] float32, labels [n] int64, features [n,dim] float32)``.
    """
    rng = np.random.default_rng(seed)
    parts = []  # (points, label)
    # fractions: ground 35 %, two walls 20 %, 12 objects share the rest
    n_ground, n_walls = int(0.35 * n), int(0.20 * n)
    g = rng.uniform([-10, -10], [10, 10], size=(n_ground, 2))
    parts.append((np.c_[g, 0.02 * rng.standard_normal(n_ground)], 0))
    w = rng.uniform([-10, 0], [10, 6], size=(n_walls, 2))
    half = n_walls // 2
    parts.append((np.c_[w[:half, 0], np.full(half, 10.0), w[:half, 1]], 1))
    parts.append((np.c_[np.full(n_walls - half, -10.0), w[half:, 0], w[half:, 1]], 1))
    n_obj = n - n_ground - n_walls
    sizes = rng.dirichlet(np.full(12, 2.0)) * n_obj
    sizes = np.floor(sizes).astype(int)
    sizes[-1] += n_obj - sizes.sum()
    for i, m in enumerate(sizes):
        c = rng.uniform([-7, -7, 0], [7, 7, 0])
        r = rng.uniform(0.4, 1.5)
        kind = i % 3
        if kind == 0:  # sphere resting on the ground
            v = rng.standard_normal((m, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            p = c + np.array([0, 0, r]) + r * v
        elif kind == 1:  # box surface
            u = rng.uniform(-1, 1, size=(m, 3))
            ax = rng.integers(0, 3, m)
            u[np.arange(m), ax] = np.sign(u[np.arange(m), ax])
            p = c + np.array([0, 0, r]) + r * u
        else:  # cylinder (trunk-like)
            th = rng.uniform(0, 2 * np.pi, m)
            h = rng.uniform(0, 3 * r, m)
            p = c + np.c_[0.4 * r * np.cos(th), 0.4 * r * np.sin(th), h]
        parts.append((p, 2 + i))
    pts = np.concatenate([p for p, _ in parts]).astype(np.float32)
    labels = np.concatenate([np.full(len(p), lab) for p, lab in parts]).astype(np.int64)
    pts += 0.01 * rng.standard_normal(pts.shape).astype(np.float32)
    base = rng.standard_normal((labels.max() + 1, dim)).astype(np.float32)
    proj = rng.standard_normal((3, dim)).astype(np.float32) * 0.15
    feats = base[labels] + np.sin(pts) @ proj + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    order = rng.permutation(n)
    return pts[order], labels[order], feats[order]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(n: int, k: int, steps: int, prompts: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from fulcra_plugins.refiners.graph_diffusion._diffusion import power_iteration, power_iteration_full
    from fulcra_plugins.refiners.graph_diffusion._graph import (
        build_scene_graph,
        knn_indices,
        morton_order,
        symmetric_csr,
    )

    torch.set_num_threads(threads)
    pts, labels, feats = scene_points(n)
    res: dict = {
        "n": n,
        "k": k,
        "steps": steps,
        "prompts": prompts,
        "threads": threads,
        "torch": torch.__version__,
        "device": device,
    }

    # 1. kNN graph
    t_base, _ = _time(lambda: cKDTree(pts).query(pts, k=k + 1, workers=-1), repeats)

    def ours_knn():
        perm = morton_order(pts)
        nb = knn_indices(pts[perm], k)
        return symmetric_csr(nb)

    t_ours, (indptr, indices) = _time(ours_knn, repeats)
    res["knn_scipy_query_s"] = t_base
    res["knn_fulcra_symmetric_s"] = t_ours
    res["nnz"] = int(len(indices))

    t_graph, graph = _time(lambda: build_scene_graph(torch.from_numpy(pts), torch.from_numpy(feats), k=k), 1)
    res["scene_graph_total_s"] = t_graph  # kNN + S_f on every edge (Table C.1 "Scene")

    # a prompt = anchors on one object (the few Gaussians a scribble uplifts to), unary term
    # = RBF similarity to the object's mean feature (the scribble variant of C.1.3)
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

    # scipy baseline over the whole graph in input (shuffled) order, like a PLY
    perm = graph.perm.numpy()
    inv = graph.inv.numpy()
    rows_in = perm[graph.rows.numpy()]
    cols_in = perm[graph.indices.numpy().astype(np.int64)]
    A_sp = sp.csr_matrix((graph.similarity.numpy(), (rows_in, cols_in)), shape=(n, n), dtype=np.float32)

    def scipy_power(g, s):
        g = g.copy()
        for _ in range(steps):
            g = g / (np.linalg.norm(g, axis=0, keepdims=True) + 1e-12)
            g = s * (A_sp @ (s * g))
        return g

    gd = graph.to(device)
    for q, tag in ((1, "one"), (prompts, "many")):
        g_in = g0[:, :q].numpy()[inv]
        s_in = sqrt_p[:, :q].numpy()[inv]
        gq, sq = g0[:, :q].contiguous().to(device), sqrt_p[:, :q].contiguous().to(device)
        t_sp, ref = _time(lambda: scipy_power(g_in, s_in), 1)
        t_full, g_full = _time(lambda: power_iteration_full(gd, gq, steps, sq), 1)
        t_r, g_r = _time(lambda: power_iteration(gd, gq, steps, sq), repeats)
        err = float(np.abs(g_r.cpu().numpy()[inv] - ref).max() / (np.abs(ref).max() + 1e-30))
        res[f"diffusion_{tag}_scipy_full_s"] = t_sp
        res[f"diffusion_{tag}_torch_full_morton_s"] = t_full
        res[f"diffusion_{tag}_fulcra_s"] = t_r
        res[f"diffusion_{tag}_max_rel_err_vs_scipy"] = err
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the diffusion runs (cpu, cuda); baselines stay on the CPU")
    a = ap.parse_args()
    res = bench(a.n, a.k, a.steps, a.prompts, a.repeats, a.threads, a.device)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
