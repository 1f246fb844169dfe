"""Pictures: the diffusion at a few steps (Fig. C.3), relevancy heat maps, localisation plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fulcra
from fulcra_plugins.ludvig.figures import colormap, diffusion_steps, localisation_plot, relevancy_heatmaps
from fulcra_plugins.ludvig.synthetic_benchmark import scribble_from_mask


def _features(labels):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.one_hot(labels, 5).float() + 0.05 * torch.randn(len(labels), 5, generator=g)


def test_diffusion_steps_spread_from_the_scribble_over_the_object(tiny_scene, tmp_path):
    scene, cams, labels, gt = tiny_scene
    obj = 2
    ref = max(cams, key=lambda c: int((gt[c.name] == obj).sum()))
    truth = gt[ref.name] == obj
    scribble = scribble_from_mask(truth, erode=1)
    refiner = fulcra.create("refiners", "graph_diffusion", k=16)
    pics = diffusion_steps(scene, ref, scribble, _features(labels), refiner, steps=(0, 1, 5, 30), out=tmp_path / "fig")
    assert list(pics) == [0, 1, 5, 30]
    black = colormap(torch.zeros(1, 1), "inferno")[0, 0]
    lit = {t: (p - black).abs().sum(-1) > 0.05 for t, p in pics.items()}  # pixels g_t reaches
    assert all(p.shape == (ref.height, ref.width, 3) for p in pics.values())
    counts = [int(lit[t].sum()) for t in (0, 1, 5, 30)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert lit[30][truth].float().mean() > 0.7 and lit[30][~truth].float().mean() < 0.15  # on the object
    for t in (0, 1, 5, 30):
        png = np.asarray(Image.open(tmp_path / "fig" / f"diffusion_t{t}.png"))
        assert png.shape[1] >= 480 and png.std() > 10  # enlarged for a person, not blank
    # over the image: the unreached pixels show the (dimmed) image, the reached ones the colour map
    img = torch.rand(3, ref.height, ref.width, generator=torch.Generator().manual_seed(1))
    over = diffusion_steps(scene, ref, scribble, _features(labels), refiner, steps=(30,), image=img)[30]
    plain = torch.isclose(over, 0.6 * img.permute(1, 2, 0), atol=1e-5).all(-1)
    assert plain[~lit[30]].float().mean() > 0.99 and not plain[lit[30]].any()


def test_diffusion_steps_needs_a_snapshot_refiner(tiny_scene):
    scene, cams, labels, gt = tiny_scene

    class Plain:
        def refine(self, positions, features, scores, **kwargs):
            return scores

    with pytest.raises(TypeError, match="SnapshotRefiner"):
        diffusion_steps(scene, cams[0], gt[cams[0].name] == 1, _features(labels), Plain())


def test_relevancy_heatmaps_are_hot_on_the_queried_object(tiny_scene, tmp_path):
    scene, cams, labels, gt = tiny_scene
    cam = max(cams, key=lambda c: int((gt[c.name] == 1).sum()))
    rel = torch.stack([(labels == 1).float() * 0.8 + 0.1, (labels == 3).float() * 0.8 + 0.1], 1)
    pics = relevancy_heatmaps(scene, rel, cam, ["red sphere", "green/cylinder"], out=tmp_path)
    assert set(pics) == {"red sphere", "green/cylinder"}
    assert (tmp_path / "relevancy_red_sphere.png").is_file() and (tmp_path / "relevancy_green_cylinder.png").is_file()
    hot = colormap(torch.ones(1, 1))[0, 0]
    for q, o in (("red sphere", 1), ("green/cylinder", 3)):
        d = (pics[q] - hot).abs().sum(-1)  # distance to the colour map's top
        m = gt[cam.name] == o
        if int(m.sum()) > 5:
            assert d[m].mean() < 0.5 * d[~m].mean()
    with pytest.raises(ValueError, match="queries"):
        relevancy_heatmaps(scene, rel, cam, ["one"])


def test_localisation_plot_draws_points_and_boxes(tmp_path):
    img = torch.full((3, 48, 64), 0.5)
    path = tmp_path / "loc.png"
    localisation_plot(img, [[10, 12]], boxes=[[[4, 6, 20, 24]]], queries=["cup"], path=path, dpi=100)
    png = np.asarray(Image.open(path).convert("RGB")).astype(float)
    h, w = png.shape[:2]
    assert (h, w) == (300, 400)
    blue = np.array([31, 119, 180])  # tab10's first colour: the query's star and box
    near = np.abs(png - blue).sum(-1) < 40
    ys, xs = np.nonzero(near)
    assert near.sum() > 100
    sx, sy = w / 64, h / 48
    star = (np.abs(xs - 10.5 * sx) < 12) & (np.abs(ys - 12.5 * sy) < 12)
    assert star.sum() > 30  # the filled star (a hit) at the arg-max pixel
    assert ((np.abs(xs - 4 * sx) < 3) & (ys > 8 * sy) & (ys < 22 * sy)).sum() > 20  # the box's left edge
    grey = np.abs(png - 127.5).sum(-1) < 6
    assert grey.mean() > 0.5  # the image itself fills the rest
