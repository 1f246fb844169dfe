"""``fulcra view`` without a browser: its HTTP API runs the segment code (same mask as ``fulcra run
segment`` for the same clicks), the threshold slider re-binarises kept scores, exports are what segment
writes, the feature cache makes a reopening fast, bad input is one line and the server keeps running."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fulcra.cli import main
from fulcra.errors import ConfigError, FulcraError
from fulcra_plugins.scenes.synthetic import generate_scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("viewer") / "scene", seed=2, width=64, height=48, n_ring=6, n_forward=0, density=0.2
    )


def scene_keys(scene_dir):
    return [
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "scene.backend=torch",
        "extractor.patch_size=2",
        "device=cpu",
    ]


def object_click(scene_dir, obj: int = 3) -> tuple[str, list[int]]:
    """The view that sees object ``obj`` best and its pixel deepest inside the object."""
    from scipy.ndimage import distance_transform_edt

    best = None
    for p in sorted((scene_dir / "masks").glob("*.png")):
        m = np.asarray(Image.open(p)) == obj
        if best is None or m.sum() > best[1].sum():
            best = (p.stem, m)
    name, m = best
    d = distance_transform_edt(m)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return name, [int(x), int(y)]


@pytest.fixture(scope="module")
def server(scene_dir, tmp_path_factory):
    import fulcra

    out = tmp_path_factory.mktemp("view-out")
    srv = fulcra.viewer.serve([*scene_keys(scene_dir), f"out={out}"], port=0, block=False, log=lambda m: None)
    yield srv
    srv.stop()


def _get(srv, path):
    with urllib.request.urlopen(srv.url.rstrip("/") + path, timeout=60) as r:
        return r.status, r.read()


def _post(srv, path, body):
    req = urllib.request.Request(
        srv.url.rstrip("/") + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _segment(scene_dir, out, view, clicks, *extra):
    pts = ",".join(f"[{x},{y}]" for x, y in clicks)
    args = ["run", "segment", *scene_keys(scene_dir), f"prompt.view={view}", f"prompt.clicks=[{pts}]", *extra]
    assert main([*args, f"out={out}", "hooks=[]"]) == 0
    return np.load(out / "mask3d.npy")


def test_page_is_served_from_the_package_with_no_external_asset(server):
    status, html = _get(server, "/")
    assert status == 200 and b"<canvas" in html
    _, js = _get(server, "/viewer.js")
    for text in (html, js):
        assert b"http://" not in text and b"https://" not in text  # no CDN, nothing fetched from outside
    assert server.url.startswith("http://127.0.0.1:")


def test_clicks_select_as_segment_does_and_export_writes_its_files(server, scene_dir, tmp_path):
    view, click = object_click(scene_dir)
    status, st = _post(server, "/api/select", {"view": view, "clicks": [click]})
    assert status == 200 and st["selected"] > 0 and st["clicks"] == [click]
    status, exp = _post(server, "/api/export", {})
    assert status == 200
    out = server.state.out
    got = np.load(out / "mask3d.npy")
    want = _segment(scene_dir, tmp_path / "seg", view, [click])
    assert got.dtype == bool and np.array_equal(got, want)
    for name in ("mask3d.npy", "masks", "removed.ply", "selected.ply", "overlay.png", "results.json"):
        assert (out / name).exists(), name
    for p in (tmp_path / "seg" / "masks").glob("*.png"):  # every view's mask as segment writes it
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(out / "masks" / p.name))), p.name
    res = json.loads((out / "results.json").read_text())
    assert res["clicks"] == [click] and res["selected"] == int(want.sum())
    assert not list(out.glob(".export-*"))  # the temporary folder is gone
    # the page's renders: the view with its mask, the orbit with the highlight colour
    status, png = _get(server, f"/api/view/{view}.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    orbit = server.state.orbit(**{k: v for k, v in server.state.orbit_of(view).items()})
    assert orbit["image"].startswith("data:image/png;base64,") and orbit["cameras"]


def test_negative_clicks_select_as_segment_does(server, scene_dir, tmp_path):
    view, click = object_click(scene_dir)
    ground = next(
        [int(x), int(y)]
        for y, x in zip(*np.nonzero(np.asarray(Image.open(scene_dir / "masks" / f"{view}.png")) == 0))
        if y > 2 and x > 2
    )
    status, st = _post(server, "/api/select", {"view": view, "clicks": [click], "negative": [ground]})
    assert status == 200 and st["negative"] == [ground] and st["selected"] > 0
    assert "prompt.negative_clicks" in server.state.command_line()
    _post(server, "/api/export", {})
    got = np.load(server.state.out / "mask3d.npy")
    want = _segment(scene_dir, tmp_path / "seg", view, [click], f"prompt.negative_clicks=[[{ground[0]},{ground[1]}]]")
    assert np.array_equal(got, want)
    assert json.loads((server.state.out / "results.json").read_text())["negative_clicks"] == [ground]
    status, ans = _post(server, "/api/select", {"view": view, "clicks": [click], "negative": [[9999, 1]]})
    assert status == 400 and "negative click" in ans["error"] and "outside" in ans["error"]


def test_threshold_rebinarises_kept_scores_without_recomputing(server, scene_dir, tmp_path, monkeypatch):
    view, click = object_click(scene_dir)
    _post(server, "/api/select", {"view": view, "clicks": [click]})
    scores = server.state.answer.scores.clone()
    calls = []
    monkeypatch.setattr(server.state.session, "segment", lambda *a, **k: calls.append(a))
    value = float(scores[scores > 0].median())
    status, st = _post(server, "/api/threshold", {"value": value})
    assert status == 200 and not calls
    assert st["threshold"]["value"] == pytest.approx(value) and not st["threshold"]["auto"]
    assert torch.equal(server.state.mask3d.cpu(), (scores > value).cpu())
    # the same as `fulcra run segment threshold=VALUE`
    _post(server, "/api/export", {})
    want = _segment(scene_dir, tmp_path / "seg", view, [click], f"threshold={value!r}")
    assert np.array_equal(np.load(server.state.out / "mask3d.npy"), want)
    status, st = _post(server, "/api/threshold", {"value": None})
    assert st["threshold"]["auto"] and not calls


def test_bad_requests_are_one_line_and_the_server_keeps_running(server, scene_dir):
    view, _ = object_click(scene_dir)
    for body, words in [
        ({"view": view, "clicks": [[640, 10]]}, ("outside", "640")),
        ({"view": "nope", "clicks": [[1, 1]]}, ("unknown camera", "nope")),
        ({"view": view, "clicks": []}, ("no click",)),
        ({"view": view, "clicks": [["a", 1]]}, ("[x, y]",)),
    ]:
        status, ans = _post(server, "/api/select", body)
        assert status == 400 and "\n" not in ans["error"] and all(w in ans["error"] for w in words), ans
    status, ans = _post(server, "/api/threshold", {"value": "high"})
    assert status == 400
    status, _ = _get(server, "/api/state")
    assert status == 200


def test_missing_ply_and_port_in_use_are_one_line(scene_dir, tmp_path, capsys):
    import fulcra

    keys = scene_keys(scene_dir)
    with pytest.raises(FulcraError) as exc:
        fulcra.viewer.serve([f"scene.ply={tmp_path / 'missing.ply'}", *keys[1:]], port=0, block=False)
    assert "missing.ply" in str(exc.value)
    assert main(["view", f"scene.ply={tmp_path / 'missing.ply'}", *keys[1:], "port=0"]) == 2
    assert "missing.ply" in capsys.readouterr().err.strip().splitlines()[-1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port.*{port}"):
            fulcra.viewer.serve(keys, port=port, block=False)
    with pytest.raises(ConfigError, match="nope"):  # a segment key that does not exist
        fulcra.viewer.serve([*keys, "nope=1"], port=0, block=False)
    with pytest.raises(ConfigError, match=r"^fulcra view: set scene\.ply=PATH"):  # no scene at all
        fulcra.viewer.serve([], port=0, block=False)


def test_reopening_reuses_the_cached_features(server, scene_dir):
    import fulcra

    srv = fulcra.viewer.serve([*scene_keys(scene_dir), f"out={server.state.out}"], port=0, block=False, log=print)
    try:
        assert srv.state.session.resumed
    finally:
        srv.stop()


def test_missing_extra_names_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "plyfile" else real(name, *a))
    assert main(["view", "scene.synthetic=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fulcra[viewer]" in err[0]


def test_text_box_selects_as_remove_does(scene_dir, tmp_path, monkeypatch, server):
    """With a text-capable extractor (the test-only colour-word one, weight-free), the text query gives
    ``fulcra run remove extractor=E features=E prompt.text=T``'s mask; without one, a one-line 400."""
    import fulcra

    status, ans = _post(server, "/api/text", {"text": "red"})  # the rgb extractor embeds no text
    assert status == 400 and "cannot embed text" in ans["error"]
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "workflows"))
    words = "extractor=_colour_words:ColourWords"
    keys = [k for k in scene_keys(scene_dir) if not k.startswith("extractor.")]
    srv = fulcra.viewer.serve([*keys, words, f"out={tmp_path / 'view'}"], port=0, block=False, log=lambda m: None)
    try:
        status, st = _post(srv, "/api/text", {"text": "the red sphere"})
        assert status == 200 and st["selected"] > 0 and st["text"] and st["query"] == "the red sphere"
        status, ans = _post(srv, "/api/text", {"text": "purple"})
        assert status == 400 and "purple" in ans["error"] and "\n" not in ans["error"]
        _post(srv, "/api/text", {"text": "the red sphere"})
        status, _ = _post(srv, "/api/export", {})
        assert status == 200
        got = np.load(tmp_path / "view" / "mask3d.npy")
    finally:
        srv.stop()
    args = ["run", "remove", *keys, words, "features=_colour_words:ColourWords", "prompt.text=the red sphere"]
    assert main([*args, "renders=0", "figures=false", f"out={tmp_path / 'rm'}", "hooks=[]"]) == 0
    assert np.array_equal(got, np.load(tmp_path / "rm" / "mask3d.npy"))
