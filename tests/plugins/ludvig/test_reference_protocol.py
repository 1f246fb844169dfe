"""The reference-view protocol (fulcra_plugins.ludvig.reference) against brute-force references:
the official threshold sweep, the grid search of a TunableRefiner, SAM's mask index, the fallback."""

import numpy as np
import pytest
import torch

from fulcra_plugins.ludvig import iou
from fulcra_plugins.ludvig import reference as R
from fulcra_plugins.ludvig.segmentation import render_scores, segment_with_reference
from fulcra_plugins.ludvig.thresholds import rescale


def test_threshold_sweep_is_the_official_one_and_first_best_wins():
    assert R.THRESHOLDS[0] == 0.99 and R.THRESHOLDS[-1] == 0.03 and len(R.THRESHOLDS) == 97
    g = torch.Generator().manual_seed(0)
    img = torch.rand(30, 40, generator=g)
    target = img > 0.615
    t, v = R.best_threshold(img, target)
    # brute force over the same sweep, first maximum in sweep order
    ious = [iou(img > s, target) for s in R.THRESHOLDS]
    assert v == max(ious) and t == R.THRESHOLDS[int(np.argmax(ious))]
    assert abs(t - 0.615) <= 0.01
    # candidate channels: channel j is the mask for grid value j
    stack = torch.stack([img > s for s in R.THRESHOLDS], -1)
    assert R.best_threshold(stack, target) == (t, v)


def test_thresholds_2d_and_3d_follow_the_reference_mask(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    cam = max(cams, key=lambda c: int((gt[c.name] == 2).sum()))
    target = gt[cam.name] == 2
    scores = (labels == 2).float() * 0.6 + 0.3 * torch.rand(len(labels), generator=torch.Generator().manual_seed(1))
    t2, v2 = R.choose_threshold_2d(scene, scores, cam, target)
    norm = rescale(render_scores(scene, scores, cam))
    assert v2 == max(iou(norm > s, target) for s in R.THRESHOLDS)
    t3, v3 = R.choose_threshold_3d(scene, scores, cam, target)
    sel = R.mask_3d(scores, t3)
    assert v3 == pytest.approx(iou(render_scores(scene, sel.float(), cam) > 0.5, target))
    assert iou(sel, labels == 2) > 0.9


class _Grid:
    """A TunableRefiner stand-in: its score is the object indicator only at one grid point."""

    def __init__(self, labels, good=None, calls=None):
        self.labels, self.good, self.calls = labels, good, calls if calls is not None else []

    def tuning_grid(self, prompt):
        return [{"width": w} for w in (0, 1, 2)]

    def fallback_params(self, prompt):
        return {"width": 1}

    def with_params(self, **p):
        return _Grid(self.labels, p["width"], self.calls)

    def refine(self, positions, features, scores, **kw):
        self.calls.append(self.good)
        obj = (self.labels == 2).float()
        noise = torch.rand(len(self.labels), generator=torch.Generator().manual_seed(0))
        out = obj if self.good == 2 else 0.5 * obj + noise  # only width=2 separates the object
        return out[:, None] if scores.ndim == 2 else out


def test_grid_search_picks_the_point_that_matches_the_reference(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    cam = max(cams, key=lambda c: int((gt[c.name] == 2).sum()))
    feats = torch.randn(len(labels), 4)
    refiner = _Grid(labels)
    prompt = gt[cam.name] == 2
    seg, tuning = segment_with_reference(
        scene, cam, prompt, "mask", "diffusion", features=feats, refiner=refiner, target=prompt
    )
    assert tuning.params == {"width": 2} and [p["width"] for p in tuning.grid] == [0, 1, 2]
    assert tuning.iou_2d > 0.9 and iou(seg.mask(), labels == 2) > 0.95
    # no reference mask: no search, the refiner's fallback_params, the reached (> 0) Gaussians
    refiner.calls.clear()
    seg, tuning = segment_with_reference(
        scene, cam, prompt, "scribble", "diffusion", features=feats, refiner=refiner, target=None
    )
    assert refiner.calls == [1] and tuning.params == {} and tuning.reference.startswith("no reference mask")
    assert tuning.mode_2d == "selection" and bool((seg.mask() == (seg.scores > 0)).all())


def test_sam_mask_index_is_chosen_on_the_reference(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    cam = max(cams, key=lambda c: int((gt[c.name] == 2).sum()))

    class ThreeMasks:  # SAM with mask="all": channel 1 is the object, the others are wrong
        dim = 3

        def __call__(self, images, positive=None):
            h, w = positive.shape[-2:]
            name = next(c.name for c in cams if (c.height, c.width) == (h, w) and torch.equal(pts[c.name], positive[0]))
            obj = (gt[name] == 2).float()
            return torch.stack([(gt[name] == 1).float(), obj, torch.ones_like(obj)])[None]

    from fulcra_plugins.ludvig.segmentation import reproject_prompt

    pts = reproject_prompt(scene, cam, gt[cam.name] == 2, cams)
    images = {c.name: torch.zeros(3, c.height, c.width) for c in cams}
    seg, tuning = segment_with_reference(
        scene,
        cam,
        gt[cam.name] == 2,
        "mask",
        "sam",
        cameras=cams,
        images=images,
        extractor=ThreeMasks(),
        target=gt[cam.name] == 2,
    )
    assert tuning.params == {"mask_index": 1} and len(tuning.grid) == 3
    assert iou(seg.mask(), labels == 2) > 0.85
