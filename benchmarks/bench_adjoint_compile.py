"""Registers, spills and shared memory of the fused gsplat uplift kernel, compiled without a GPU.

    .venv/bin/python benchmarks/bench_adjoint_compile.py [--capability 90]

Compiles ``scenes/_adjoint_triton.py``'s kernel ahead of time for a CUDA compute capability
(Triton's compiler and the ``ptxas`` its wheel ships) for each step size along a tile's list
(``block_k``), channel block, dot precision and warp count, and prints what ``ptxas -v`` reports.
Spills are a hint of where to look on a GPU, not a speed: times come from
``benchmarks/bench_uplift.py --gpu``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("framework", "plugins")]


def ptxas_report(ptx: str, capability: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run(
            [get_ptxas(capability).path, f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = res.stdout + res.stderr

    def grab(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else None

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores_B": grab(r"(\d+) bytes spill stores"),
        "stack_frame_B": grab(r"(\d+) bytes stack frame"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capability", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    args = ap.parse_args(argv)
    from fulcra_plugins.scenes import _adjoint_triton as A

    print("| block_k | channel block | dot | warps | registers | spill stores (B) | stack (B) | shared (B) |")
    print("|---|---|---|---|---|---|---|---|")
    for block_k, block_c, prec, warps in [
        (16, 32, "ieee", 4),
        (16, 64, "ieee", 8),
        (32, 32, "ieee", 8),
        (32, 64, "ieee", 8),
        (64, 64, "ieee", 8),
        (32, 64, "tf32x3", 8),
    ]:
        k = A.compile_ahead(args.capability, block_k, block_c, prec, warps)
        r = ptxas_report(k.asm["ptx"], args.capability)
        print(
            f"| {block_k} | {block_c} | {prec} | {warps} | {r['registers']} | {r['spill_stores_B']} "
            f"| {r['stack_frame_B']} | {k.metadata.shared} |"
        )


if __name__ == "__main__":
    main()
