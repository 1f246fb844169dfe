"""GPU checks of the distillation stage (for a machine with CUDA; ~1 minute).

1. ImageMixer on tiny random diffusers components in float16 on the GPU: finite outputs in [0, 1],
   identical for a seed, close to the float32 CPU result (noise is drawn on the CPU).
2. ``distill-digits`` (shortened) with ``device=cuda``: every row trains and scores on the GPU.

    .venv/bin/python benchmarks/gpu_check_distill.py            # prints a JSON report, exit 1 on failure
    .venv/bin/python benchmarks/gpu_check_distill.py --device cpu   # the same checks on CPU (float32)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plugins" / "generators"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    report: dict = {"device": args.device, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    ok = True
    from test_generators import _tiny_imagemixer  # the tests' tiny random components

    from fulcra_plugins.generators.imagemixer import ImageMixer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _tiny_imagemixer(tmp / "mixer")
        x = torch.rand(8, 3, 32, 32)
        gpu = ImageMixer(model=str(tmp / "mixer"), steps=10, device=args.device)
        t0 = time.perf_counter()
        a = gpu.generate(x, torch.Generator().manual_seed(0))
        b = gpu.generate(x, torch.Generator().manual_seed(0))
        report["imagemixer_dtype"] = str(gpu._parts["dtype"])
        report["imagemixer_s"] = round(time.perf_counter() - t0, 3)
        ref = ImageMixer(model=str(tmp / "mixer"), steps=10, device="cpu", dtype="float32").generate(
            x, torch.Generator().manual_seed(0)
        )
        checks = {
            "imagemixer_finite_in_01": bool(torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1),
            "imagemixer_deterministic": bool(torch.equal(a, b)),
            "imagemixer_close_to_cpu_fp32": float((a.cpu() - ref).abs().mean()),
        }
        checks["imagemixer_close_to_cpu_fp32_ok"] = checks["imagemixer_close_to_cpu_fp32"] < 0.05
        report.update(checks)
        ok &= (
            checks["imagemixer_finite_in_01"]
            and checks["imagemixer_deterministic"]
            and checks["imagemixer_close_to_cpu_fp32_ok"]
        )

        from fulcra.runner import run

        t0 = time.perf_counter()
        res = run(
            "distill-digits",
            [
                f"out={tmp / 'kd'}",
                f"device={args.device}",
                "seeds=[0,1]",
                "pretrain.epochs=3",
                "pretrain.student_epochs=1",
                "probe.epochs=3",
                "train.epochs=2",
                "synthetic.factor=0.5",
            ],
            hooks=[],
        )
        report["distill_s"] = round(time.perf_counter() - t0, 1)
        report["distill_rows"] = {k: round(v["mean"], 4) for k, v in res["rows"].items()}
        ok &= len(res["rows"]) == 5
    report["ok"] = bool(ok)
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
