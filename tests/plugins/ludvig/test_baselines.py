"""The geometry-only baseline (Table 5.2): the reference mask uplifted from one view, rendered elsewhere."""

from __future__ import annotations

import torch

from fulcra_plugins.ludvig import iou
from fulcra_plugins.ludvig import reference as R
from fulcra_plugins.ludvig.baselines import segment_geometry
from fulcra_plugins.ludvig.segmentation import uplift_mask


def test_geometry_reprojects_the_reference_mask(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    obj = 1
    ref = max(cams, key=lambda c: int((gt[c.name] == obj).sum()))
    truth = gt[ref.name] == obj
    seg, tuning = segment_geometry(scene, ref, truth, target=truth, reference="ground truth")
    g, w = uplift_mask(scene, ref, truth.float())
    torch.testing.assert_close(seg.scores, g)  # no features: the one-view uplift of the mask itself
    assert float(seg.scores.min()) >= 0 and float(seg.scores.max()) <= 1 + 1e-6
    assert (seg.scores[w == 0] == 0).all()  # Gaussians the reference view does not see score 0
    assert tuning.reference == "ground truth" and tuning.iou_2d > 0.9  # its own view: nearly the mask
    sel = R.mask_3d(seg.scores, tuning)
    assert iou(sel, labels == obj) > 0.5
    other = [c for c in cams if c.name != ref.name and int((gt[c.name] == obj).sum()) > 20][0]
    m = R.mask_2d(scene, seg.scores, other, tuning)
    assert 0.3 < iou(m, gt[other.name] == obj) < 1.0


def test_geometry_without_reference_uses_its_fallback(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    ref = cams[0]
    truth = gt[ref.name] == 1
    seg, tuning = segment_geometry(scene, ref, truth)
    assert tuning.reference == R.FALLBACKS["geometry"] and tuning.mode_2d == "selection"
    sel = R.mask_3d(seg.scores, tuning)
    assert torch.equal(sel, seg.scores > 0.5)  # h > 0.5 on the raw scores
