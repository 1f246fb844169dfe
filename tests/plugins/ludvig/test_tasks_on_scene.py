"""Localisation, segmentation, selection, removal on the synthetic scene, with relevancy and
features built from the ground-truth labels."""

import pytest
import torch

import fulcra
from fulcra_plugins.ludvig import (
    SelectionError,
    SelectionWarning,
    Selector,
    iou,
    localise,
    render_relevancy,
    sam_prompts,
    segment_3d_selection,
    segment_relevancy,
    select_3d,
)
from fulcra_plugins.ludvig.segmentation import clicks_to_mask, segment_single_view
from fulcra_plugins.refiners import GraphDiffusion
from fulcra_plugins.scenes.ply import read_ply


def label_relevancy(labels, obj, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.where(labels == obj, 0.85, 0.35) + 0.05 * torch.rand(len(labels), generator=g)


def label_features(labels, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(5, 8, generator=g)
    return base[labels] + noise * torch.randn(len(labels), 8, generator=g)


def test_localisation_and_2d_segmentation_from_label_relevancy(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    objs = [1, 2, 3, 4]
    rel = torch.stack([label_relevancy(labels, o, o) for o in objs], 1)  # [N, Q]
    cam = cams[0]
    rendered = render_relevancy(scene, rel, cam)  # [H, W, Q]
    xy = localise(rendered)
    for j, o in enumerate(objs):
        visible = (gt[cam.name] == o).sum() > 20
        if not visible:
            continue
        x, y = xy[j].tolist()
        assert gt[cam.name][y, x] == o
        mask = segment_relevancy(rendered[..., j], query=f"object {o}")
        assert iou(mask, gt[cam.name] == o) > 0.6
        pts = sam_prompts(rendered[..., j])
        assert len(pts) > 0 and all(gt[cam.name][py, px] == o for px, py in pts.tolist())


def test_3d_selection_and_degenerate_queries(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    sel = select_3d(label_relevancy(labels, 2), query="blue cube")
    assert iou(sel, labels == 2) > 0.95
    m2d = segment_3d_selection(scene, label_relevancy(labels, 2), cams[1])
    assert iou(m2d, gt[cams[1].name] == 2) > 0.8
    flat = torch.full((len(labels),), 0.5)
    with pytest.warns(SelectionWarning, match=r"selects 100.0% of the Gaussians.*threshold"):
        select_3d(flat, query="unicorn")
    with pytest.raises(SelectionError, match=r"unicorn.*max 0\.5"):
        select_3d(flat, query="unicorn", strict=True)
    with pytest.warns(SelectionWarning, match=r"selects nothing: relevancy min 0.*threshold"):
        select_3d(torch.zeros(len(labels)), query="nothing")
    with pytest.warns(SelectionWarning, match=r"'ghost' selects nothing"):
        segment_relevancy(torch.zeros(48, 64), query="ghost")
    everything = torch.ones(len(labels))
    everything[:3] = 0.0
    with pytest.warns(SelectionWarning, match=r"% of the Gaussians"):
        select_3d(everything, query="scene")


def test_selector_clicks_segment_and_remove(tiny_scene, tmp_path):
    scene, cams, labels, gt = tiny_scene
    feats = label_features(labels)
    cam = max(cams, key=lambda c: int((gt[c.name] == 3).sum()))
    ys, xs = torch.nonzero(gt[cam.name] == 3, as_tuple=True)
    mid = len(ys) // 2
    clicks = [(int(xs[mid]), int(ys[mid]))]
    # the weight sums of an uplift (pruning, anchor gating), as a Selector built from one has them
    _, weights = fulcra.uplift(scene, [(c, torch.ones(c.height, c.width)) for c in cams])
    sel = Selector(scene, feats, weights, refiner=GraphDiffusion()).click(cam, clicks, radius=3.0)
    assert iou(sel.mask3d, labels == 3) > 0.85
    assert iou(sel.render(cam), gt[cam.name] == 3) > 0.8
    # without diffusion the uplifted features find the object too, with more false positives
    up = Selector(scene, feats, weights, diffusion=False).click(cam, clicks, radius=3.0)
    obj = labels == 3
    assert (up.mask3d & obj).sum() / obj.sum() > 0.8
    assert iou(up.mask3d, obj) < iou(sel.mask3d, obj)
    # removal: a PLY without the object; where the object was, the ground now shows
    path = sel.save_removed(tmp_path / "removed.ply")
    kept = read_ply(path)
    assert len(kept) == scene.num_primitives - int(sel.mask3d.sum())
    removed = sel.remove()
    lab_kept = labels[~sel.mask3d]
    onehot = torch.nn.functional.one_hot(lab_kept, 5).float()
    was_obj = gt[cam.name] == 3
    after = removed.render(onehot, cam)[was_obj]  # [P, 5]
    covered = after.sum(-1) > 0.5
    assert covered.float().mean() > 0.5
    shown = after[covered].argmax(-1)
    # the selection misses a few of the object's Gaussians (3D IoU ~0.95): the removed scene still
    # shows the object on a minority of its former pixels, fewer when tuned on the object's mask
    assert (shown == 3).float().mean() < 0.34, shown.bincount(minlength=5)
    tuned = Selector(scene, feats, weights, refiner=GraphDiffusion()).select(
        cam, clicks_to_mask(clicks, cam.height, cam.width, 3.0), reference=gt[cam.name] == 3
    )
    assert tuned.details.tuning.params  # the bandwidths were searched on the reference mask
    after = tuned.remove().render(torch.nn.functional.one_hot(labels[~tuned.mask3d], 5).float(), cam)[was_obj]
    shown = after[after.sum(-1) > 0.5].argmax(-1)
    assert (shown == 3).float().mean() < 0.25, shown.bincount(minlength=5)
    assert iou(tuned.mask3d, labels == 3) > 0.9
    assert (shown == 0).float().mean() > 0.5, shown.bincount(minlength=5)  # mostly the ground behind it
    ext = sel.extract()
    assert ext.num_primitives == int(sel.mask3d.sum())


def test_single_view_route(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    cam = cams[0]
    onehot = torch.nn.functional.one_hot(gt[cam.name].clamp(max=4), 5).permute(2, 0, 1).float()
    onehot[:, gt[cam.name] == 255] = 0
    prompt = gt[cam.name] == 1
    masks = segment_single_view(onehot, prompt, [onehot], kind="mask", threshold=0.5)
    assert iou(masks[0], prompt) > 0.95


def test_empty_prompt_is_an_error(tiny_scene):
    scene, cams, labels, gt = tiny_scene
    with pytest.raises(ValueError, match="empty prompt"):
        Selector(scene, label_features(labels)).select(cams[0], torch.zeros(48, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        Selector(scene, label_features(labels)).click(cams[0], [(100, 5)])


def test_mask_prompt_and_sam_route(tiny_scene):
    from fulcra_plugins.ludvig.segmentation import reproject_prompt, segment_sam

    scene, cams, labels, gt = tiny_scene
    feats = label_features(labels)
    cam = max(cams, key=lambda c: int((gt[c.name] == 2).sum()))
    sel = Selector(scene, feats, refiner=GraphDiffusion(k=12, steps=60)).select(cam, gt[cam.name] == 2, kind="mask")
    assert iou(sel.mask3d, labels == 2) > 0.85
    pts = reproject_prompt(scene, cam, gt[cam.name] == 2, cams)
    # reprojected prompt pixels land on the object in nearby views; geometry alone is coarse on 360
    # scenes (Table 5.2, "geometry only": 73.1) and these 4 views are 90 degrees apart, so only the
    # best other view is checked, loosely
    prec = [
        float((gt[c.name][pts[c.name]] == 2).float().mean()) for c in cams if c.name != cam.name and pts[c.name].any()
    ]
    assert prec and max(prec) > 0.6

    class OracleSAM:  # stands in for SAM: returns the object under the prompt points
        def __call__(self, images, positive=None):
            name = next(n for n, p in pts.items() if torch.equal(p, positive[0]))
            return (gt[name] == 2).float()[None, None]

    images = {c.name: torch.zeros(3, c.height, c.width) for c in cams}
    seg = segment_sam(scene, cams, images, cam, gt[cam.name] == 2, OracleSAM())
    assert iou(seg.scores > 0.5, labels == 2) > 0.85


def test_segment_sam_real_tiny_sam_on_images_of_another_size(tiny_scene, monkeypatch):
    """segment_sam with the real ``sam`` extractor (tiny, random) on images twice the cameras' size:
    the prompt is resized to the image, every drawn point lies in it, the masks come back at the
    camera's size and the scores are a valid uplift (in [0, 1], zero where no view sees a Gaussian)."""
    pytest.importorskip("segment_anything")
    import fulcra
    import fulcra_plugins.extractors.sam as sam_mod
    from fulcra_plugins.ludvig.segmentation import segment_sam

    scene, cams, labels, gt = tiny_scene
    cam = max(cams, key=lambda c: int((gt[c.name] == 2).sum()))
    drawn = []
    real = sam_mod.sample_prompts

    def spy(points, n_points, n_repeats, generator):
        out = real(points, n_points, n_repeats, generator)
        drawn.append(out)
        return out

    monkeypatch.setattr(sam_mod, "sample_prompts", spy)
    g = torch.Generator().manual_seed(0)
    images = {c.name: torch.rand(3, 2 * c.height, 2 * c.width, generator=g) for c in cams}
    sam = fulcra.create("feature_extractors", "sam", tiny=True, n_repeats=2)
    seg = segment_sam(scene, cams, images, cam, gt[cam.name] == 2, sam)
    prompted = [c.name for c in cams if seg.prompts[c.name].any()]
    assert cam.name in prompted and len(drawn) == len(prompted)
    for name, pts in zip(prompted, drawn):
        big = (
            torch.nn.functional.interpolate(seg.prompts[name][None, None].float(), scale_factor=2, mode="nearest")[0, 0]
            > 0
        )
        xy = pts.long()
        assert bool((xy[..., 0] < 128).all() and (xy[..., 1] < 96).all()) and bool(big[xy[..., 1], xy[..., 0]].all())
    assert seg.scores.shape == labels.shape and float(seg.scores.min()) >= 0 and float(seg.scores.max()) <= 1 + 1e-5
    assert bool((seg.scores[seg.weights == 0] == 0).all())
