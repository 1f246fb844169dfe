"""``fulcra view`` on the embedded synthetic scene (issue 18): time from a click to the highlight
on the page, with the weight-free ``rgb`` extractor on CPU.

    .venv/bin/python benchmarks/bench_viewer.py --threads 2 --out bench_viewer.json

Measured through the HTTP API the page uses, in the order the page asks: ``POST /api/select`` (the
segment session: uplifted prompt, graph diffusion, reference-view protocol, 3D binarisation, every
view's mask), then the orbit render with the highlight and every view's PNG. ``first click`` includes
building the refiner's kNN graph; ``next click`` reuses it. ``open`` is the start-up (scene, uplift of
every view), ``reopen`` the same with the features cached in ``out=``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _get(url):
    with urllib.request.urlopen(url, timeout=600) as r:
        return r.read()


def click_to_highlight(srv, view: str, clicks) -> float:
    """Seconds from the click's request to the last image of the page that shows the selection."""
    base = srv.url.rstrip("/")
    t = time.perf_counter()
    st = _post(base + "/api/select", {"view": view, "clicks": clicks})
    o = st["orbit"]
    _get(f"{base}/api/orbit?azimuth={o['azimuth']}&elevation={o['elevation']}&radius={o['radius']}")
    for v in st["views"]:
        _get(f"{base}/api/view/{v['name']}.png")
    assert st["selected"] > 0, st["message"]
    return time.perf_counter() - t


def main() -> None:
    import torch

    import fulcra

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keys = ["scene.synthetic=true", "scene.backend=torch", "device=cpu"]  # extractor: rgb, patch 4 (the default)
    res = {"threads": a.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as d:
        for label in ("open", "reopen"):
            t = time.perf_counter()
            srv = fulcra.viewer.serve([*keys, f"out={d}"], port=0, block=False, log=lambda m: None)
            res[f"{label}_s"] = round(time.perf_counter() - t, 2)
            if label == "open":
                res["num_gaussians"] = srv.state.session.scene.num_primitives
                res["views"] = len(srv.state.cams)
                # the blue cube on ring_000 (docs/ludvig.md's worked example), then the green cylinder
                res["first_click_s"] = round(click_to_highlight(srv, "ring_000", [[52, 80]]), 2)
                res["next_click_s"] = round(click_to_highlight(srv, "ring_000", [[52, 80], [60, 86]]), 2)
                res["selected"] = srv.state.state()["selected"]
            srv.stop()
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
