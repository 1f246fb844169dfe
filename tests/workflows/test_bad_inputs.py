"""Every bad input of the LUDVIG and SLACK command lines ends in one line naming its cause, exit
status 2, and no output folder (inputs are checked before ``out=`` is created)."""

import json
import shutil

import pytest

from fulcra.cli import main
from fulcra_plugins.scenes.synthetic import generate_scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("bad") / "scene", seed=3, width=32, height=24, n_ring=3, n_forward=0, density=0.05
    )


def _scene(scene_dir, tmp_path, edit=None):
    """A copy of the scene with ``edit(folder)`` applied; returns the scene keys."""
    folder = tmp_path / "scene"
    shutil.copytree(scene_dir, folder)
    if edit is not None:
        edit(folder)
    return [
        f"scene.ply={folder / 'point_cloud.ply'}",
        f"scene.cameras={folder / 'cameras.json'}",
        f"scene.images={folder / 'images'}",
    ]


def _cameras(**over):
    def edit(folder):
        cams = json.loads((folder / "cameras.json").read_text())
        cams[0].update(over)
        (folder / "cameras.json").write_text(json.dumps(cams))

    return edit


def _truncate(folder):
    raw = (folder / "point_cloud.ply").read_bytes()
    (folder / "point_cloud.ply").write_bytes(raw[:-100])


def _truncate_image(folder):
    p = sorted((folder / "images").glob("*.png"))[1]
    p.write_bytes(p.read_bytes()[:-40])


def _missing_ply(folder):
    (folder / "point_cloud.ply").unlink()


def _not_png(folder):
    (folder / "scribble.png").write_text("not an image")


def _view(folder):
    return json.loads((folder / "cameras.json").read_text())[0]["img_name"]


CASES = {
    "missing ply": (_missing_ply, [], r"point_cloud\.ply: no such PLY file"),
    "truncated image": (_truncate_image, [], r"images/.*\.png: not a readable image"),
    "width abc": (_cameras(width="abc"), [], r"cameras\.json: camera 0: field 'width' must be a positive integer"),
    "width 0": (_cameras(width=0), [], r"field 'width' must be a positive integer number of pixels, got 0"),
    "fx 0": (_cameras(fx=0), [], r"cameras\.json: camera 0 .*focal lengths must be positive"),
    "truncated ply": (_truncate, [], r"point_cloud\.ply: truncated"),
    "unknown view": (None, ["prompt.view=nope", "prompt.clicks=[[3,3]]"], r"key 'prompt\.view': unknown camera 'nope'"),
    "clicks not pairs": (
        None,
        ["PROMPT_VIEW", "prompt.clicks=[1,2]"],
        r"key 'prompt\.clicks' must be \[\[x, y\], \.\.\.\]",
    ),
    "click outside": (None, ["PROMPT_VIEW", "prompt.clicks=[[500,3]]"], r"'prompt\.clicks': \[500, 3\] is outside"),
    "scribble not png": (
        _not_png,
        ["PROMPT_VIEW", "prompt.scribble=SCRIBBLE"],
        r"scribble\.png: prompt is not a readable image",
    ),
    "seed abc": (None, ["PROMPT_VIEW", "prompt.clicks=[[3,3]]", "seed=abc"], r"key 'seed': expected an integer"),
    "out number": (None, ["PROMPT_VIEW", "prompt.clicks=[[3,3]]", "out=123"], r"key 'out': expected a folder path"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, scene_dir, tmp_path, capsys):
    edit, extra, match = CASES[case]
    keys = _scene(scene_dir, tmp_path, edit)
    folder = tmp_path / "scene"
    view = (
        _view(folder) if (folder / "cameras.json").is_file() and case not in ("width abc", "width 0", "fx 0") else "v"
    )
    extra = [
        a.replace("PROMPT_VIEW", f"prompt.view={view}").replace("SCRIBBLE", str(folder / "scribble.png")) for a in extra
    ]
    if not any(a.startswith("prompt.") for a in extra):
        extra = [f"prompt.view={view}", "prompt.clicks=[[3,3]]", *extra]
    out = tmp_path / "out"
    args = ["run", "segment", *keys, "extractor=rgb", *extra]
    if not any(a.startswith("out=") for a in extra):
        args.append(f"out={out}")
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    import re

    assert re.search(match, err[0]), err[0]
    assert not out.exists() and not (tmp_path / "123").exists()


def test_uplift_warns_about_missing_images_and_strict_makes_it_an_error(scene_dir, tmp_path, capsys):
    def drop(folder):
        for p in sorted((folder / "images").glob("*.png"))[:1]:
            p.unlink()

    keys = _scene(scene_dir, tmp_path, drop)
    assert (
        main(
            [
                "run",
                "uplift",
                *keys,
                "extractor=rgb",
                "check_views=0",
                "pca=false",
                f"out={tmp_path / 'a'}",
                "hooks=[progress]",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "1 of 3 cameras have no image" in err and "strict_images=true makes this an error" in err
    assert main(["run", "uplift", *keys, "extractor=rgb", "strict_images=true", f"out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 3 cameras have no image" in err[0] and not (tmp_path / "b").exists()


def _resize_images(factor_w, factor_h):
    def edit(folder):
        from PIL import Image

        for p in (folder / "images").glob("*.png"):
            with Image.open(p) as im:
                im.resize((int(im.width * factor_w), int(im.height * factor_h))).save(p)

    return edit


def test_images_at_another_resolution_are_resized_and_said_so(scene_dir, tmp_path, capsys):
    keys = _scene(scene_dir, tmp_path, _resize_images(2, 2))
    rc = main(
        [
            "run",
            "uplift",
            *keys,
            "extractor=rgb",
            "check_views=0",
            "pca=false",
            f"out={tmp_path / 'a'}",
            "hooks=[progress]",
        ]
    )
    assert rc == 0
    assert "images are 64x48" in capsys.readouterr().err


def test_images_of_another_aspect_ratio_are_refused_before_writing(scene_dir, tmp_path, capsys):
    keys = _scene(scene_dir, tmp_path, _resize_images(2, 1))
    assert main(["run", "uplift", *keys, "extractor=rgb", f"out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is 64x24 but camera" in err[0] and "another aspect ratio" in err[0]
    assert not (tmp_path / "b").exists()
