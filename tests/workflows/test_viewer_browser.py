"""``fulcra view`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium) chooses the view of one object on the synthetic scene, clicks it, and exports;
the exported ``mask3d.npy`` equals ``fulcra run segment``'s for the same click, and a screenshot of
the page shows the selection in the highlight colour. ``FULCRA_UPDATE_DOCS_IMG=1`` also writes the
screenshot to ``docs/img/viewer.png``."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fulcra.cli import main
from fulcra_plugins.scenes.synthetic import generate_scene

ROOT = Path(__file__).resolve().parents[2]


def _chromium():
    """(chromium, chromedriver) paths, or a skip with the reason."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install 'fulcra[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1300,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    try:
        drv = webdriver.Chrome(service=Service(driver), options=opts)
    except WebDriverException as exc:
        pytest.skip(f"headless chromium does not start here: {str(exc).splitlines()[0]}")
    yield drv
    drv.quit()


def _wait(drv, script, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if drv.execute_script(script):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script!r}; page says {drv.find_element('id', 'error').text!r}")


def test_click_in_chromium_selects_as_segment_and_shows_the_highlight(browser, tmp_path):
    from scipy.ndimage import distance_transform_edt
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    import fulcra

    scene_dir = generate_scene(tmp_path / "scene", seed=2, width=64, height=48, n_ring=6, n_forward=0, density=0.2)
    keys = [
        f"scene.ply={scene_dir / 'point_cloud.ply'}",
        f"scene.cameras={scene_dir / 'cameras.json'}",
        f"scene.images={scene_dir / 'images'}",
        "scene.backend=torch",
        "extractor.patch_size=2",
        "device=cpu",
    ]
    # the view that sees the green cylinder (label 3) best, and its pixel deepest inside it
    masks = {p.stem: np.asarray(Image.open(p)) == 3 for p in sorted((scene_dir / "masks").glob("*.png"))}
    view = max(masks, key=lambda k: int(masks[k].sum()))
    depth = distance_transform_edt(masks[view])
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))

    srv = fulcra.viewer.serve([*keys, f"out={tmp_path / 'view'}"], port=0, block=False, log=lambda m: None)
    try:
        drv = browser
        drv.get(srv.url)
        _wait(drv, "return document.body.dataset.ready === '1'")
        Select(drv.find_element("id", "view-select")).select_by_value(view)
        _wait(drv, f"return S.view === {view!r} && document.body.dataset.busy !== '1' && !orbitBusy")
        canvas = drv.find_element("id", "view")
        w, h = drv.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
        # selenium offsets are from the element's centre; aim at the middle of pixel (x, y)
        ox, oy = (x + 0.5) * w / 64 - w / 2, (y + 0.5) * h / 48 - h / 2
        ActionChains(drv).move_to_element_with_offset(canvas, int(round(ox)), int(round(oy))).click().perform()
        _wait(drv, "return document.body.dataset.selected > 0 && document.body.dataset.busy === '0'", 120)
        _wait(drv, "return !orbitBusy && !orbitAgain")
        clicks = drv.execute_script("return S.clicks")
        assert clicks == [[x, y]]
        drv.find_element("id", "export").click()
        _wait(drv, "return document.body.dataset.exported === '1'")

        got = np.load(tmp_path / "view" / "mask3d.npy")
        args = ["run", "segment", *keys, f"prompt.view={view}", f"prompt.clicks=[[{x},{y}]]"]
        assert main([*args, f"out={tmp_path / 'seg'}", "hooks=[]"]) == 0
        assert np.array_equal(got, np.load(tmp_path / "seg" / "mask3d.npy")) and got.any()

        # the selection in the highlight colour (magenta) in the rendered 3D canvas
        orbit = np.asarray(Image.open(io.BytesIO(drv.find_element("id", "orbit").screenshot_as_png)).convert("RGB"))
        r, g, b = (orbit[..., i].astype(int) for i in range(3))
        highlighted = (r > 200) & (g < 80) & (b > 200)
        assert highlighted.sum() >= 20, f"{int(highlighted.sum())} highlight pixels in the 3D view"
        page = drv.get_screenshot_as_png()
        (tmp_path / "viewer.png").write_bytes(page)
        if os.environ.get("FULCRA_UPDATE_DOCS_IMG") == "1":
            (ROOT / "docs" / "img").mkdir(exist_ok=True)
            Image.open(io.BytesIO(page)).convert("RGB").quantize(256).save(
                ROOT / "docs" / "img" / "viewer.png", optimize=True
            )
    finally:
        srv.stop()
