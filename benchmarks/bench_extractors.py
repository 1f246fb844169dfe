"""Cost per image of the bundled feature extractors, on the real architectures with random weights.

No pretrained weights exist offline, so each real architecture (timm DINOv2, open_clip CLIP, SAM,
SAM 2) is built with random weights directly on the device and swapped into the extractor
(``--via-weights-file``: saved to a temporary file and loaded back through ``weights=``): the
arithmetic, and hence the time, is that of the real model. ``--tiny`` times the tiny test models.

For the CLIP crop grid, which runs hundreds of crops per image, ``--clip-crops N`` times only the
first N crops of the grid and reports the per-crop time and the grid's crop count (the per-image
cost is their product; the run says so). Everything else is timed end to end on whole images.

Run:  .venv/bin/python benchmarks/bench_extractors.py --device cpu --height 480 --width 640 \
          --which rgb dinov2_vits14_reg clip_vitb16_dense sam_vit_b
      .venv/bin/python benchmarks/bench_extractors.py --device cuda --which all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))


def _save_random(model: torch.nn.Module, path: Path, wrap: str | None = None) -> str:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({wrap: sd} if wrap else sd, path)
    return str(path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _random_model(name: str, device: str) -> torch.nn.Module:
    """The real architecture of ``name`` with random weights, initialised directly on ``device``."""
    from fulcra_plugins.backbones import BACKBONES

    with torch.device(device):
        if name.startswith("dinov2_"):
            import timm

            return timm.create_model(BACKBONES[name].arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        if name.startswith("clip_"):
            import open_clip
            from open_clip.model import CLIP

            return CLIP(**open_clip.get_model_config(BACKBONES["clip_" + name.split("_")[1]].arch), quick_gelu=True)
        if name.startswith("sam_"):
            from segment_anything import sam_model_registry

            return sam_model_registry[name[len("sam_") :]](checkpoint=None)
        if name.startswith("sam2_"):
            from hydra.utils import instantiate
            from omegaconf import OmegaConf

            from fulcra_plugins.extractors.sam2 import SAM2_VARIANTS, _config

            cfg = _config(SAM2_VARIANTS[("2.1", name[len("sam2_hiera_") :])][0])
            return instantiate(OmegaConf.to_container(cfg.model, resolve=True), _recursive_=True, _convert_="all")
    raise SystemExit(f"unknown extractor {name!r}")


def build(name: str, device: str, tmp: Path, tiny: bool, via_file: bool = False):
    """An extractor of preset-like ``name``: tiny random, or the real architecture with random weights
    (swapped into a tiny-built extractor in place, or with ``via_file`` saved and loaded back through
    the extractor's ``weights=`` path)."""
    from fulcra_plugins.extractors.clip import CLIPExtractor
    from fulcra_plugins.extractors.dinov2 import DINOv2Extractor
    from fulcra_plugins.extractors.rgb import RGBExtractor
    from fulcra_plugins.extractors.sam import SAMExtractor

    if name == "rgb":
        return RGBExtractor(device=device), {}
    if name.startswith("sam2_"):
        from fulcra_plugins.extractors.sam2 import SAM2Extractor
    prompted = name.startswith("sam")
    variant = {
        "dinov2": lambda: name[len("dinov2_") :],
        "clip": lambda: name.split("_")[1],
        "sam": lambda: name[len("sam_") :],
        "sam2": lambda: name[len("sam2_hiera_") :],
    }[name.split("_")[0]]()
    kw = {"mode": "dense" if name.endswith("_dense") else "crops"} if name.startswith("clip_") else {}
    cls = {"dinov2": DINOv2Extractor, "clip": CLIPExtractor, "sam": SAMExtractor}.get(
        name.split("_")[0]
    ) or SAM2Extractor
    if tiny:
        return cls(variant=variant, tiny=True, device=device, **kw), {"prompted": prompted}
    model = _random_model(name, device)
    if via_file:
        path = tmp / f"{name}.pt"
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save({"model": sd} if name.startswith("sam2_") else sd, path)
        del model, sd
        return cls(variant=variant, weights=str(path), device=device, **kw), {"prompted": prompted}
    ext = cls(variant=variant, tiny=True, device=device, **kw)
    model = model.to(ext.device).eval().requires_grad_(False)  # the random model replaces the tiny one, on its device
    if name.startswith("dinov2_"):
        from fulcra_plugins.backbones import BACKBONES, TimmBackbone

        spec = BACKBONES[name]
        ext.backbone = TimmBackbone.from_model(name, model, spec.patch_size, spec.mean, spec.std)
        ext.embed_dim = ext.backbone.embed_dim
    elif name.startswith("clip_"):
        from fulcra_plugins.backbones import BACKBONES, ClipBackbone

        spec = BACKBONES[f"clip_{variant}"]
        import open_clip

        ext.backbone = ClipBackbone.from_model(
            spec.arch, model, open_clip.get_tokenizer(spec.arch), spec.mean, spec.std
        )
        ext.dim, size = ext.backbone.clip_embed_dim, model.visual.image_size
        ext.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    elif name.startswith("sam_"):
        from segment_anything import SamPredictor

        ext.model, ext.predictor = model, SamPredictor(model)
    else:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        ext.model, ext.predictor = model, SAM2ImagePredictor(model)
        s = model.image_size
        ext.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return ext, {"prompted": prompted}


ALL = [
    "rgb",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
    "clip_vitb16",
    "clip_vitb16_dense",
    "sam_vit_b",
    "sam_vit_h",
    "sam2_hiera_tiny",
    "sam2_hiera_large",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--which", nargs="+", default=["rgb", "dinov2_vits14_reg", "clip_vitb16_dense", "sam_vit_b"])
    ap.add_argument("--repeats", type=int, default=2, help="timed images after one warm-up image")
    ap.add_argument("--clip-crops", type=int, default=64, help="crops timed for the CLIP crop grid (0 = all)")
    ap.add_argument("--tiny", action="store_true", help="time the tiny random test models instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--via-weights-file", action="store_true", help="save the random weights and load them through weights="
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    which = ALL if args.which == ["all"] else args.which
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, args.height, args.width, generator=g).to(args.device)
    pos = torch.zeros(1, args.height, args.width, dtype=torch.bool)
    pos[:, args.height // 3 : args.height // 2, args.width // 3 : args.width // 2] = True
    results = []
    with tempfile.TemporaryDirectory() as td:
        for name in which:
            t0 = time.perf_counter()
            ext, info = build(name, args.device, Path(td), args.tiny, args.via_weights_file)
            build_s = time.perf_counter() - t0
            kw = {"positive": pos} if info.get("prompted") else {}
            row = {
                "extractor": name,
                "device": args.device,
                "image": [args.height, args.width],
                "tiny": args.tiny,
                "build_s": round(build_s, 2),
            }
            if name.startswith("clip_") and getattr(ext, "mode", "") == "crops":
                windows = ext.windows(args.height, args.width)
                n_crops = sum(len(b) for b in windows.values())
                crops = torch.rand(
                    min(n_crops, args.clip_crops or n_crops), 3, ext.input_size, ext.input_size, generator=g
                ).to(args.device)
                with torch.inference_mode():
                    ext._embed_crops(crops[: min(8, len(crops))])  # warm-up
                    _sync(args.device)
                    t0 = time.perf_counter()
                    ext._embed_crops(crops)
                    _sync(args.device)
                per_crop = (time.perf_counter() - t0) / len(crops)
                row.update(
                    crops_per_image=n_crops,
                    crops_timed=len(crops),
                    s_per_crop=round(per_crop, 5),
                    s_per_image=round(per_crop * n_crops, 3),
                    note="s_per_image = s_per_crop x crops_per_image (crop resizing not included)",
                )
            else:
                out = ext(img, **kw)  # warm-up (and DINOv2's PCA fit)
                _sync(args.device)
                times = []
                for r in range(args.repeats):
                    x = img + (r + 1) * 1e-3  # a different image: no cache, no reuse
                    _sync(args.device)
                    t0 = time.perf_counter()
                    ext(x.clamp(0, 1), **kw)
                    _sync(args.device)
                    times.append(time.perf_counter() - t0)
                row.update(out_shape=list(out.shape[1:]), s_per_image=round(min(times), 3))
                if name.startswith("dinov2_"):
                    row["crops_per_image"] = len(ext.boxes(args.height, args.width))
            print(json.dumps(row), flush=True)
            results.append(row)
            del ext
    if os.environ.get("BENCH_OUT"):
        Path(os.environ["BENCH_OUT"]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
