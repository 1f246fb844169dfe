"""Same input, same output on every machine: every op (batched, image by image, uint8 and float) and
the composite give bit-identical results under other CPU code paths and thread counts.

Each variant runs ``_digest.py`` in a fresh interpreter, because MKL reads ``MKL_CBWR`` and ATen reads
``ATEN_CPU_CAPABILITY`` once, at load time. ``MKL_CBWR`` selects MKL's GEMM kernels (the path that
made batched shears differ from single ones on AMD CPUs), ``ATEN_CPU_CAPABILITY=default`` ATen's
scalar builds without FMA.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

DIGEST = Path(__file__).with_name("_digest.py")

VARIANTS = {
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
    "mkl-sse4_2": {"MKL_CBWR": "SSE4_2"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
}


def _digest(env: dict, threads: int) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    full.update(env)
    res = subprocess.run(
        [sys.executable, str(DIGEST), str(threads)], env=full, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


@pytest.fixture(scope="module")
def reference() -> str:
    return _digest({}, 1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ops_do_not_depend_on_the_cpu_code_path(variant, reference):
    assert _digest(VARIANTS[variant], 1) == reference, f"op results change under {VARIANTS[variant]}"


def test_ops_do_not_depend_on_the_thread_count(reference):
    assert _digest({}, 2) == reference
