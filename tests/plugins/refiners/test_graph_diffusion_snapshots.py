"""graph_diffusion's snapshots (the SnapshotRefiner protocol behind the Fig. C.3 pictures): g_0, the
support of g_t growing with t, g_T equal to the diffusion refine runs, and refine unchanged."""

from __future__ import annotations

import numpy as np
import torch

from fulcra.interfaces import SnapshotRefiner
from fulcra_plugins.refiners import GraphDiffusion

from .test_graph_diffusion import two_blobs


def test_snapshots_are_g_t_of_the_refine_diffusion():
    pos, feats, lab = two_blobs(300, same_features=True)
    rng = np.random.default_rng(1)
    scores = np.zeros(len(pos), np.float32)
    obj = np.nonzero(lab == 0)[0]
    scores[obj] = rng.uniform(0.0, 1.0, len(obj))
    s = torch.from_numpy(scores)
    gd = GraphDiffusion(k=6, steps=30, bandwidth=1.0, unary_bandwidth=1.0)
    assert isinstance(gd, SnapshotRefiner)
    before = gd.refine(pos, feats, s)
    snaps = gd.snapshots(pos, feats, s, steps=(30, 0, 1, 5))
    assert list(snaps) == [0, 1, 5, 30] and all(v.shape == (len(pos),) for v in snaps.values())
    res = gd.run(pos, feats, s, return_diffused=True)
    torch.testing.assert_close(snaps[0], res.g0)  # t = 0: the anchors' initial weights
    torch.testing.assert_close(snaps[30], res.diffused)  # t = T: what refine diffused
    support = [int((snaps[t] > 0).sum()) for t in (0, 1, 5, 30)]
    assert support == sorted(support) and support[0] < support[1] < support[-1]
    # the support of g_T is what refine keeps; nothing leaks onto the other blob
    assert torch.equal(snaps[30] > 0, before > 0)
    assert (snaps[30][torch.from_numpy(lab == 1)] == 0).all()
    torch.testing.assert_close(gd.refine(pos, feats, s), before)  # refine is unchanged
    assert gd.steps == 30
