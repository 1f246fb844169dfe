"""graph_diffusion against a dense NumPy reference (brute-force kNN, dense A, dense power iteration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fulcra_plugins.refiners import GraphDiffusion
from fulcra_plugins.refiners.graph_diffusion._diffusion import power_iteration, power_iteration_full, reachable
from fulcra_plugins.refiners.graph_diffusion._graph import build_scene_graph, morton_order


def two_blobs(n=300, d=8, seed=0, same_features=False):
    """Two well-separated point clusters on a line-ish surface; features per cluster (+ noise)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n // 2, 3)) * [1.0, 1.0, 0.1]
    b = rng.normal(size=(n - n // 2, 3)) * [1.0, 1.0, 0.1] + [8.0, 0, 0]
    pos = np.concatenate([a, b]).astype(np.float32)
    lab = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    base = rng.normal(size=(2, d))
    if same_features:
        base[1] = base[0]
    feats = (base[lab] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    order = rng.permutation(n)
    return torch.from_numpy(pos[order]), torch.from_numpy(feats[order]), lab[order]


def dense_reference(pos, feats, k, bandwidth, anchors=None):
    """Dense symmetric kNN adjacency (with self loops) and S_f, in the caller's order (float64).

    ``s_f`` is the median feature distance over the off-diagonal edges (of the ``anchors`` rows if given)."""
    p = pos.double().numpy()
    f = feats.double().numpy()
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)
    n = len(p)
    d = ((p[:, None] - p[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    E = np.zeros((n, n), bool)
    E[np.repeat(np.arange(n), k), nn.ravel()] = True
    E = E | E.T
    np.fill_diagonal(E, True)
    fd = np.sqrt(np.clip(2 - 2 * f @ f.T, 0, None))
    off = E & ~np.eye(n, dtype=bool)
    if anchors is not None:
        off = off & anchors[:, None]
    med = np.median(fd[off])
    S = np.where(E, np.exp(-(fd**2) / (bandwidth * med**2)), 0.0)
    return E, S, f


def dense_power(S, P, g0, steps, binarize=None, normalize="none"):
    sp = np.sqrt(P)
    A = S * sp[:, None] * sp[None, :]
    if normalize == "degree":  # D^-1/2 A D^-1/2 with D the row sums (zero rows stay zero)
        d = A.sum(1)
        inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
        A = A * inv[:, None] * inv[None, :]
    if binarize is not None:
        A = (A > binarize).astype(np.float64)
    g = g0.astype(np.float64)
    for _ in range(steps):
        g = A @ (g / (np.linalg.norm(g) + 1e-12))
    return g


def test_morton_order_is_a_permutation_and_local():
    rng = np.random.default_rng(0)
    pts = rng.uniform(size=(2000, 3))
    perm = morton_order(pts)
    assert sorted(perm.tolist()) == list(range(2000))
    step = np.linalg.norm(np.diff(pts[perm], axis=0), axis=1).mean()
    rand = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()
    assert step < 0.5 * rand


def test_graph_matches_bruteforce_knn_and_rbf():
    pos, feats, _ = two_blobs(200)
    G = build_scene_graph(pos, feats, k=6, bandwidth=0.7)
    E, S, _ = dense_reference(pos, feats, 6, 0.7)
    n = len(pos)
    # back to the caller's order
    inv = G.perm.numpy()
    rows = inv[G.rows.numpy()]
    cols = inv[G.indices.numpy().astype(np.int64)]
    Eg = np.zeros((n, n), bool)
    Eg[rows, cols] = True
    assert (Eg == E).all()
    Sg = np.zeros((n, n))
    Sg[rows, cols] = G.similarity.numpy()
    np.testing.assert_allclose(Sg, S, atol=2e-5)


@pytest.mark.parametrize("binarize", [None, 0.05])
def test_power_iteration_matches_dense(binarize):
    pos, feats, lab = two_blobs(240)
    G = build_scene_graph(pos, feats, k=5)
    _, S, _ = dense_reference(pos, feats, 5, 1.0)
    rng = np.random.default_rng(3)
    n, q, steps = len(pos), 3, 7
    g0 = np.zeros((n, q))
    for j in range(q):
        g0[rng.choice(n, 4, replace=False), j] = rng.uniform(0.5, 1, 4)
    P = rng.uniform(0.05, 1.0, size=(n, q))
    ref = np.stack([dense_power(S, P[:, j], g0[:, j], steps, binarize) for j in range(q)], 1)
    perm = G.perm
    out = power_iteration(
        G, torch.from_numpy(g0).float()[perm], steps, torch.from_numpy(P).float().sqrt()[perm], binarize=binarize
    )
    got = out[G.inv].double().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6 * np.abs(ref).max())
    if binarize is None:  # restricted == whole-graph product
        full = power_iteration_full(
            G, torch.from_numpy(g0).float()[perm], steps, torch.from_numpy(P).float().sqrt()[perm]
        )
        np.testing.assert_allclose(full.numpy(), out.numpy(), rtol=1e-4, atol=1e-7)
    # support of the dense g_T == exact reachability
    for j in range(q):
        sp = torch.from_numpy(P[:, j]).float().sqrt()[perm]
        r = reachable(
            G, torch.from_numpy(g0[:, j] > 0)[perm], steps, sp, threshold=binarize if binarize is not None else 0.0
        )
        assert (r[G.inv].numpy() == (ref[:, j] > 0)).all()


@pytest.mark.parametrize("q", [1, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 30])
def test_unnormalised_iteration_matches_dense_at_every_length(q, steps):
    # the kernel iterates without per-step normalisation (rescaling every few steps, the exact norm
    # recovered at the end) and folds P into S for one prompt: check short runs, runs crossing several
    # rescalings, and both paths (q = 1 folded, q > 1 elementwise) against the normalised dense iteration
    pos, feats, lab = two_blobs(240)
    G = build_scene_graph(pos, feats, k=5)
    _, S, _ = dense_reference(pos, feats, 5, 1.0)
    rng = np.random.default_rng(steps)
    n = len(pos)
    g0 = np.zeros((n, q))
    for j in range(q):
        g0[rng.choice(n, 3, replace=False), j] = rng.uniform(0.5, 1, 3)
    P = rng.uniform(0.0, 1.0, size=(n, q)) ** 3  # wide range, with small values
    ref = np.stack([dense_power(S, P[:, j], g0[:, j], steps) for j in range(q)], 1)
    perm = G.perm
    out = power_iteration(G, torch.from_numpy(g0).float()[perm], steps, torch.from_numpy(P).float().sqrt()[perm])
    got = out[G.inv].double().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6 * np.abs(ref).max())
    plain = power_iteration(G, torch.from_numpy(g0).float()[perm], steps, None)
    refp = np.stack([dense_power(S, np.ones(n), g0[:, j], steps) for j in range(q)], 1)
    np.testing.assert_allclose(plain[G.inv].double().numpy(), refp, rtol=2e-4, atol=1e-6 * np.abs(refp).max())


def test_scribble_refine_matches_dense_reference_and_stays_on_object():
    pos, feats, lab = two_blobs(300, same_features=True)
    rng = np.random.default_rng(1)
    n = len(pos)
    scores = np.zeros(n)
    obj = np.nonzero(lab == 0)[0]
    scores[obj] = rng.uniform(0.0, 1.0, len(obj))  # a coarse uplifted scribble
    gd = GraphDiffusion(k=6, steps=30, anchor_fraction=0.1, bandwidth=1.0, unary_bandwidth=1.0)
    res = gd.run(pos, feats, torch.from_numpy(scores).float()[:, None])
    # reference: anchors = top 10 % of positives, P = RBF to the mean anchor feature, binarised A
    _, S, f = dense_reference(pos, feats, 6, 1.0)
    pos_idx = np.nonzero(scores > 0)[0]
    keep = pos_idx[np.argsort(-scores[pos_idx])[: int(round(0.1 * len(pos_idx)))]]
    anchors = np.zeros(n, bool)
    anchors[keep] = True
    assert (res.g0[:, 0].numpy() > 0).tolist() == anchors.tolist()
    _, S, f = dense_reference(pos, feats, 6, 1.0, anchors=anchors)  # s_f from the anchors' edges
    m = f[anchors].mean(0)
    m /= np.linalg.norm(m)
    d2 = np.clip(2 - 2 * f @ m, 0, None)
    s2 = np.median(np.sqrt(d2[anchors])) ** 2
    P = np.exp(-d2 / s2)
    np.testing.assert_allclose(res.unary[:, 0].numpy(), P, rtol=1e-4, atol=1e-6)
    g0 = np.where(anchors, scores, 0)
    gT = dense_power(S, P, g0, 30, binarize=1e-5, normalize="degree")
    h = np.where(gT > 0, P, 0)
    np.testing.assert_allclose(res.scores[:, 0].numpy(), h, rtol=1e-4, atol=1e-6)
    # identical features on both blobs: only 3D geometry keeps the diffusion off the other blob
    assert (res.scores[lab == 1, 0] == 0).all()
    assert (res.scores[lab == 0, 0] > 0).float().mean() > 0.9


def test_graph_is_cached_across_prompts():
    pos, feats, lab = two_blobs(200)
    gd = GraphDiffusion(k=5, steps=5)
    s = torch.from_numpy((lab == 0).astype(np.float32))
    gd.refine(pos, feats, s)
    g1 = gd._graph
    gd.refine(pos.clone(), feats.clone(), s, prompt="mask")
    assert gd._graph is g1
    gd.refine(pos + 1.0, feats, s)
    assert gd._graph is not g1


def test_many_prompts_as_columns_equal_one_by_one():
    pos, feats, lab = two_blobs(240)
    s = torch.stack([torch.from_numpy((lab == c).astype(np.float32)) * torch.rand(len(lab)) for c in (0, 1)], 1)
    gd = GraphDiffusion(k=5, steps=10, output="diffused", binarize=-1, median="edges", bandwidth=1.0)
    both = gd.refine(pos, feats, s)
    one = torch.stack([gd.refine(pos, feats, s[:, j]) for j in range(2)], 1)
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-6)


def test_mask_prompt_logreg_separates_objects():
    pos, feats, lab = two_blobs(300)
    s = torch.from_numpy((lab == 1).astype(np.float32))
    res = GraphDiffusion(k=6, steps=40).run(pos, feats, s[:, None], prompt="mask")
    pred = res.scores[:, 0] > 0.5
    truth = torch.from_numpy(lab == 1)
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou > 0.9


def test_relevancy_prompt_diffuses_from_top_relevancies():
    pos, feats, lab = two_blobs(300)
    rng = np.random.default_rng(0)
    rel = np.where(lab == 0, 0.7, 0.3) + 0.1 * rng.normal(size=len(lab))
    gd = GraphDiffusion(k=6, steps=40, prompt="relevancy", median="edges", bandwidth=1.0)
    res = gd.run(pos, feats, torch.from_numpy(rel).float()[:, None])
    assert res.scores.max() == pytest.approx(1.0)
    # initial weights only on the most relevant nodes, diffusion then covers the object
    assert (res.g0[:, 0] > 0).sum() < (lab == 0).sum() / 2
    assert (res.g0[torch.from_numpy(lab == 1), 0] == 0).all()
    truth = torch.from_numpy(lab == 0)
    assert res.scores[truth, 0].mean() > 10 * res.scores[~truth, 0].mean()
    # the diffused output equals the dense reference run with the same unary term and g0
    _, S, _ = dense_reference(pos, feats, 6, 1.0)
    ref = dense_power(S, res.unary[:, 0].double().numpy(), res.g0[:, 0].double().numpy(), 40, normalize="degree")
    np.testing.assert_allclose(res.scores[:, 0].numpy(), ref / ref.max(), rtol=1e-3, atol=1e-6)


def test_bad_inputs_name_the_field():
    pos, feats, lab = two_blobs(50)
    with pytest.raises(ValueError, match="prompt"):
        GraphDiffusion(prompt="clicks")
    with pytest.raises(ValueError, match="scores"):
        GraphDiffusion(k=4).refine(pos, feats, torch.zeros(10))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pos, feats, lab = two_blobs(400)
    s = torch.from_numpy((lab == 0).astype(np.float32))
    cpu = GraphDiffusion(k=6, steps=20).refine(pos, feats, s)
    gpu = GraphDiffusion(k=6, steps=20).refine(pos.cuda(), feats.cuda(), s.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_restricted_path_equals_whole_graph_when_few_nodes_are_reached():
    from fulcra_plugins.refiners.graph_diffusion._diffusion import _Restricted

    pos, feats, _ = two_blobs(600)
    G = build_scene_graph(pos, feats, k=5)
    g0 = torch.zeros(600, 2)
    g0[:3, 0] = 1.0
    g0[300:302, 1] = 0.5
    seeds = (g0[G.perm] > 0).any(1)
    assert _Restricted(G, seeds, 4).size < 0.5 * 600  # most rows are skipped
    sp = torch.rand(600, 2) * 0.5 + 0.5
    a = power_iteration(G, g0[G.perm], 4, sp[G.perm])
    b = power_iteration_full(G, g0[G.perm], 4, sp[G.perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_with_params_shares_the_graph_and_tuning_grid_is_official():
    pos, feats, lab = two_blobs(200)
    gd = GraphDiffusion(k=5, steps=5)
    s = torch.from_numpy((lab == 0).astype(np.float32))
    grid = gd.tuning_grid("scribble")
    assert [(p["bandwidth"], p["unary_bandwidth"]) for p in grid] == [
        (2.0**f, 2.0**g) for f in (1, 2) for g in (2, 3, 4)
    ]
    assert len(gd.tuning_grid("mask")) == 5 * 4 and gd.tuning_grid("relevancy") == []
    other = gd.with_params(**grid[-1])
    other.refine(pos, feats, s)
    g1 = gd._graph
    assert g1 is not None  # built by the copy, cached for the original too
    gd.with_params(**grid[0]).refine(pos, feats, s)
    assert gd._graph is g1
    assert other.resolved()["unary_bandwidth"] == 16.0 and gd.resolved()["unary_bandwidth"] == 8.0
    with pytest.raises(ValueError, match="unknown parameter"):
        gd.with_params(bandwith=2.0)


# --- k = 200 scale paths: grid kNN, symmetric CSR builder, hop distances, block-range diffusion ---


def _points_with_duplicates(n, seed, dup=0.2):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3)) * [2.0, 2.0, 0.2]
    m = int(dup * n)
    p[rng.choice(n, m, replace=False)] = p[rng.choice(n, m)]  # exact duplicates, some many times
    p[:30] = p[0]  # a cluster of 30 identical points
    return p.astype(np.float32)


@pytest.mark.parametrize("n,k", [(1500, 8), (1500, 60), (700, 200), (50, 49), (50, 80), (2, 1)])
def test_symmetric_csr_matches_scipy_k_plus_kt(n, k):
    import scipy.sparse as sp

    from fulcra_plugins.refiners.graph_diffusion._graph import knn_indices, symmetric_csr

    pos = _points_with_duplicates(n, n + k)
    nb = knn_indices(pos, k)
    kk = nb.shape[1]
    for self_loops in (True, False):
        indptr, indices = symmetric_csr(nb, self_loops=self_loops)
        K = sp.csr_matrix((np.ones(n * kk), nb.ravel(), np.arange(n + 1) * kk), shape=(n, n))
        A = K + K.T
        if self_loops:
            A = A + sp.identity(n)
        A = A.tocsr()
        A.sort_indices()
        assert indptr.dtype == np.int64 and indices.dtype == np.int32
        np.testing.assert_array_equal(indptr, A.indptr)
        np.testing.assert_array_equal(indices, A.indices)


def test_symmetric_union_values_are_exactly_symmetric():
    from fulcra_plugins.refiners.graph_diffusion._graph import _symmetric_union

    rng = np.random.default_rng(0)
    n, c = 400, 12
    cols = np.stack([rng.choice(n, c, replace=False) for _ in range(n)]).astype(np.int32)
    vals = rng.random((n, c)).astype(np.float32)
    indptr, indices, src = _symmetric_union(cols)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    src_rows, src_cols = np.divmod(src, c)
    # every entry comes from a kNN entry of the same pair, in either direction
    pair = {(int(r), int(cc)) for r, cc in zip(rows, indices)}
    assert all(
        (int(cols[a, b]), int(a)) in pair and (int(a), int(cols[a, b])) in pair for a, b in zip(src_rows, src_cols)
    )
    v = vals.ravel()[src]
    dense = np.zeros((n, n), np.float32)
    dense[rows, indices] = v
    np.testing.assert_array_equal(dense, dense.T)


@pytest.mark.parametrize("n,k", [(3000, 16), (3000, 200), (600, 200), (40, 39), (40, 100)])
def test_grid_knn_with_duplicates_matches_bruteforce_kth_distances(n, k):
    from fulcra_plugins.refiners.graph_diffusion import _graph as gm

    pos = _points_with_duplicates(n, k, dup=0.05)
    q, lo, scale = gm._quantise(pos, cubic=True)
    codes = gm._interleave(q)
    perm = np.argsort(codes, kind="stable")
    ps = pos[perm].astype(np.float64)
    kk = min(k, n - 1)
    nbrs, _ = gm._grid_knn_sorted(ps, q[perm], codes[perm], lo, scale, kk)
    d = ((ps[:, None] - ps[None]) ** 2).sum(-1)
    np.fill_diagonal(d, -1)
    srt = np.sort(d, 1)
    got = np.sort(np.take_along_axis(d, nbrs.astype(np.int64), 1), 1)
    # the same multiset of distances (self first); with ties at the k-th distance any tied point is valid
    np.testing.assert_array_equal(got, srt[:, : kk + 1])
    assert (nbrs == np.arange(n)[:, None]).sum(1).tolist() == [1] * n  # every row holds itself once


def test_grid_and_kdtree_graphs_agree():
    pos, feats, _ = two_blobs(3000, d=16)
    G1 = build_scene_graph(pos, feats, k=40, knn="grid")
    G2 = build_scene_graph(pos, feats, k=40, knn="kdtree")
    assert torch.equal(G1.indptr, G2.indptr) and torch.equal(G1.indices, G2.indices)
    np.testing.assert_allclose(
        G1.distance.numpy(), G2.distance.numpy(), atol=1e-3
    )  # sqrt(2 - 2 dot) near 0: rounding noise
    np.testing.assert_allclose(
        G1.similarity.numpy(), G2.similarity.numpy(), atol=1e-5
    )  # float32 dot: GEMM vs elementwise
    assert G1.median_distance == pytest.approx(G2.median_distance, rel=1e-6)
    assert torch.equal(G1.rows, G2.rows)


def test_grid_knn_exact_against_bruteforce():
    from fulcra_plugins.refiners.graph_diffusion import _graph as gm

    rng = np.random.default_rng(5)
    n, k = 4000, 200
    pos = np.concatenate([rng.normal(size=(n // 2, 3)) * [3, 3, 0.05], rng.normal(size=(n // 2, 3)) * 0.3 + 6])
    pos = pos.astype(np.float32)
    q, lo, scale = gm._quantise(pos, cubic=True)
    codes = gm._interleave(q)
    perm = np.argsort(codes, kind="stable")
    ps = pos[perm].astype(np.float64)
    f = rng.normal(size=(n, 8)).astype(np.float32)
    nbrs, dots = gm._grid_knn_sorted(ps, q[perm], codes[perm], lo, scale, k, f, budget=1 << 14)
    d = ((ps[:, None] - ps[None]) ** 2).sum(-1)
    np.fill_diagonal(d, -1)
    ref = np.sort(np.argsort(d, 1, kind="stable")[:, : k + 1], 1)
    np.testing.assert_array_equal(np.sort(nbrs, 1), ref)
    assert (np.diff(nbrs, axis=1) > 0).all()  # rows come out ascending (the CSR builder relies on it)
    np.testing.assert_allclose(dots, np.einsum("id,ikd->ik", f, f[nbrs]), atol=1e-5)


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_numpy_hops_equal_torch_hops(threshold):
    from fulcra_plugins.refiners.graph_diffusion._diffusion import _hops_numpy, _hops_torch

    pos, feats, _ = two_blobs(600)
    G = build_scene_graph(pos, feats, k=7)
    seeds = torch.zeros(600, dtype=torch.bool)
    seeds[[3, 17, 400]] = True
    sp = torch.rand(600)
    for steps in (1, 4, 50):
        a = _hops_numpy(G, seeds, steps, sp, threshold)
        b = _hops_torch(G, seeds, steps, sp, threshold)
        assert torch.equal(a, b)


@pytest.mark.parametrize("q", [1, 4])
def test_block_range_diffusion_equals_whole_graph(monkeypatch, q):
    from fulcra_plugins.refiners.graph_diffusion import _diffusion as dm

    monkeypatch.setattr(dm, "BLOCK_ROWS", 64)  # many blocks and ranges on a small graph
    rng = np.random.default_rng(2)
    n = 3000
    pos = torch.from_numpy((rng.uniform(size=(n, 3)) * [10, 10, 0.1]).astype(np.float32))
    feats = torch.randn(n, 8)
    G = build_scene_graph(pos, feats, k=12)
    g0 = torch.zeros(n, q)
    for j in range(q):
        g0[rng.choice(n, 3), j] = 1.0
    sp = torch.rand(n, q) * 0.5 + 0.5
    for steps in (1, 2, 7, 30):
        a = power_iteration(G, g0[G.perm], steps, sp[G.perm])
        b = power_iteration_full(G, g0[G.perm], steps, sp[G.perm])
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)
        if steps == 7:
            assert (a == 0).any()  # far rows untouched and exactly zero


def test_relevancy_queries_diffuse_together_with_per_node_scales():
    """Several queries at once (the official batching: each node takes the s_f of its most relevant
    query) against the dense reference built the same way, and pruning attaches every pruned node."""
    pos, feats, lab = two_blobs(300)
    rng = np.random.default_rng(0)
    rel = np.stack([np.where(lab == c, 0.7, 0.3) + 0.1 * rng.normal(size=len(lab)) for c in (0, 1)], 1)
    gd = GraphDiffusion(k=6, steps=40, prompt="relevancy", bandwidth=1.0)
    res = gd.run(pos, feats, torch.from_numpy(rel).float())
    assert res.scores.shape == (300, 2) and (res.scores.amax(0) == 1).all()
    for j, c in enumerate((0, 1)):
        truth = torch.from_numpy(lab == c)
        assert res.scores[truth, j].mean() > 5 * res.scores[~truth, j].mean()
    # dense reference: per-node s_f^2 = that of the node's most relevant query, edge = mean of its ends
    from fulcra_plugins.refiners.graph_diffusion._unary import relevancy_anchors

    positives, _ = relevancy_anchors(torch.from_numpy(rel).float())  # Otsu over r > 0.5, per query
    E, _, f = dense_reference(pos, feats, 6, 1.0)
    fd2 = np.clip(2 - 2 * f @ f.T, 0, None)
    off = E & ~np.eye(len(lab), dtype=bool)
    meds = [np.median(np.sqrt(fd2[off & positives[:, j].numpy()[:, None]])) for j in range(2)]
    s2 = np.array(meds)[rel.argmax(1)] ** 2
    S = np.where(E, np.exp(-fd2 / (0.5 * (s2[:, None] + s2[None, :]) + 1e-12)), 0.0)
    for j in range(2):
        ref = dense_power(S, res.unary[:, j].double().numpy(), res.g0[:, j].double().numpy(), 40, normalize="degree")
        np.testing.assert_allclose(res.scores[:, j].numpy(), ref / ref.max(), rtol=2e-3, atol=1e-5)


def test_pruned_nodes_are_attached_to_a_kept_one():
    pos, feats, lab = two_blobs(400)
    s = torch.from_numpy((lab == 0).astype(np.float32))
    w = torch.from_numpy(np.random.default_rng(3).uniform(0.1, 1.0, 400).astype(np.float32))
    full = GraphDiffusion(k=6, steps=30, prune=0.0).run(pos, feats, s, weights=w)
    half = GraphDiffusion(k=6, steps=30, prune=0.5).run(pos, feats, s, weights=w)
    zero = GraphDiffusion(k=6, steps=30, prune=0.5, pruned="zero").run(pos, feats, s, weights=w)
    assert int(half.kept.sum()) == 200 and bool(full.kept.all())
    # the lighter half is what gets pruned
    assert float(w[half.kept].min()) >= float(w[~half.kept].max())
    assert bool((zero.scores[~zero.kept] == 0).all())
    truth = torch.from_numpy(lab == 0)
    sel = half.scores > 0
    assert (sel & truth).sum() / truth.sum() > 0.9 and not bool((sel & ~truth).any())
    assert bool((half.reached[~half.kept] | ~truth[~half.kept]).all())


def test_grid_knn_is_identical_for_any_thread_count():
    from fulcra_plugins.refiners.graph_diffusion import _graph as G

    rng = np.random.default_rng(5)
    pos = np.concatenate([rng.normal(size=(3000, 3)), rng.normal(size=(1000, 3)) * 0.1 + 4]).astype(np.float32)
    feats = rng.normal(size=(4000, 8)).astype(np.float32)
    q, lo, scale = G._quantise(pos, cubic=True)
    codes = G._interleave(q)
    perm = np.argsort(codes, kind="stable")
    args = (pos[perm].astype(np.float64), q[perm], codes[perm], lo, scale, 20, feats[perm])
    one = G._grid_knn_sorted(*args, workers=1)
    two = G._grid_knn_sorted(*args, workers=3)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_min_weight_gate_reaches_the_pruned_nodes_too():
    pos, feats, lab = two_blobs(400)
    s = torch.from_numpy((lab == 0).astype(np.float32))
    w = torch.from_numpy(np.random.default_rng(3).uniform(0.1, 1.0, 400).astype(np.float32))
    res = GraphDiffusion(k=6, steps=30, prune=0.5, min_weight=0.5).run(pos, feats, s, weights=w)
    low = w < 0.5 * float(w[res.kept].median())
    assert bool(low.any()) and bool((res.unary[low] == 0).all())


def test_negative_prompt_cuts_off_what_looks_like_the_negatives():
    # one connected slab: x < 0 is object A, x > 0 object B, with different features; a wide unary
    # bandwidth lets the diffusion from scribbles on A spread over B (the leak a negative click fixes)
    rng = np.random.default_rng(3)
    n = 400
    pos = rng.uniform(-4, 4, size=(n, 3)) * [1.0, 1.0, 0.05]
    lab = (pos[:, 0] > 0).astype(int)
    base = rng.normal(size=(1, 8)).repeat(2, 0)
    base[1, 0] += 1.0  # B's features differ from A's, not by enough for the wide kernels below
    feats = base[lab] + 0.1 * rng.normal(size=(n, 8))
    pos_t, f_t = torch.from_numpy(pos).float(), torch.from_numpy(feats).float()
    s = torch.zeros(n)
    s[torch.from_numpy((lab == 0) & (pos[:, 0] < -2))] = 1.0  # scribbles on A only
    neg = torch.zeros(n)
    neg[torch.from_numpy((lab == 1) & (pos[:, 0] > 2))] = 1.0  # negative scribbles on B
    gd = GraphDiffusion(k=10, steps=60, bandwidth=100.0, unary_bandwidth=200.0, anchor_fraction=0.5)
    plain = gd.refine(pos_t, f_t, s) > 0
    a, b = torch.from_numpy(lab == 0), torch.from_numpy(lab == 1)
    assert plain[b].float().mean() > 0.5, "the test needs a leak onto B without negatives"
    cut = gd.refine(pos_t, f_t, s, negative=neg) > 0
    assert cut[b].float().mean() < 0.05
    assert cut[a].float().mean() > 0.9
    # negatives never add to the selection, and without overlap they leave the anchors alone
    assert not (cut & ~plain).any()
    with pytest.raises(ValueError, match="negative must have the shape"):
        gd.refine(pos_t, f_t, s, negative=neg[:10])
    with pytest.raises(ValueError, match="not relevancy"):
        gd.refine(pos_t, f_t, s, prompt="relevancy", negative=neg)
