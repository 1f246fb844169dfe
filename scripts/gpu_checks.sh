#!/usr/bin/env bash
# GPU checks of the scenes backends, in one call on a fresh CUDA machine (issue 5).
#
#   bash scripts/gpu_wheels.sh            # here, with the package index: fills ./.whl (~18 MB)
#   bash scripts/gpu_checks.sh            # on the device tool: carry [".whl"], timeout_s 600
#
# Steps (each timed, each allowed to fail without stopping the next):
#   1. environment report (nvidia-smi, nvcc, python, torch)
#   2. Python deps: wheels from ./.whl when present (machines without network), else PyPI;
#      torch is never installed or upgraded if one is importable
#   3. fulcra made importable from this checkout: PYTHONPATH + a generated dist-info carrying the
#      entry points of pyproject.toml (no build backend needed, never a stale wheel)
#   4. gsplat's CUDA code built (JIT, for this GPU's architecture only) and a smoke render
#   5. the scenes GPU tests (the fused Triton uplift kernel against autograd first), then every
#      gpu-marked test of the repository
#   6. the GPU benchmark: 1M Gaussians at ~1 megapixel, D = 40, ms per view per feature dimension:
#      forward render, fused adjoint and autograd adjoint of the gsplat backend in one run
#   7. the CPU suites of the batched kernels on CUDA (--device cuda), ImageMixer / distill on CUDA,
#      the extractor benchmark, graph diffusion's CUDA path at k = 200 (300k Gaussians, 20 steps,
#      scipy beside it), the op library on GPU tensors vs torchvision v2 (kornia when installed), and
#      GPU training from JPEG files decoded in the loop or ahead by 2-8 worker processes
# Results go to $OUT (default ./gpu_out): 7 files (every benchmark's text in bench_gpu.txt).
set -u
set -o pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
TIMES="$OUT/step_times.txt"
: > "$TIMES"
exec > >(tee -a "$LOG") 2>&1
set -x
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
SITE=/tmp/fulcra_site
mkdir -p "$SITE"
export PYTHONPATH="$SITE:$REPO/framework:$REPO/plugins${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME COMMAND...: run, time, record status, never abort the script
  local name="$1"; shift
  local t0=$(date +%s)
  echo "=== [$name] start $(date -u +%T)"
  "$@"
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$TIMES"
  return 0
}

env_report() {
  nvidia-smi || true
  (nvcc --version || ls /usr/local/cuda*/bin/nvcc) || true
  $PY -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} 

install_deps() {
  $PY -c "import torch" || { echo "no torch on this machine: install a CUDA build of torch first (this script downloads nothing)"; return 1; }
  local need=""
  for mod in omegaconf plyfile safetensors PIL yaml pluggy pytest scipy; do
    $PY -c "import $mod" 2>/dev/null || need="$need $mod"
  done
  echo "missing before install:$need"
  if ls .whl/*.whl >/dev/null 2>&1; then
    # only the wheels that are not fulcra itself (fulcra comes from this checkout, step 3), one at a
    # time, so that a wheel this platform refuses (another glibc, another Python) loses only itself;
    # a package the machine already has is kept (its own build may match its torch better)
    for whl in $(ls .whl/*.whl | grep -v '/fulcra-'); do
      mod=$(basename "$whl" | cut -d- -f1 | tr 'A-Z' 'a-z')
      case "$mod" in pillow) mod=PIL;; pyyaml) mod=yaml;; antlr4_python3_runtime) mod=antlr4;; markdown_it_py) mod=markdown_it;; esac
      $PY -c "import $mod" 2>/dev/null && continue
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$whl" \
        || echo "wheel install failed: $whl"
    done
  fi
  $PY -c "import gsplat" 2>/dev/null || $PY -m pip install -q --retries 0 --timeout 10 gsplat || echo "gsplat: no wheel and no network"
  for pkg in omegaconf plyfile safetensors pillow pyyaml pluggy pytest scipy; do
    mod=$pkg; [ $pkg = pillow ] && mod=PIL; [ $pkg = pyyaml ] && mod=yaml
    $PY -c "import $mod" 2>/dev/null || $PY -m pip install -q --retries 0 --timeout 10 "$pkg" || echo "could not install $pkg"
  done
  $PY -c "import omegaconf, plyfile, safetensors, gsplat; print('deps ok, gsplat', gsplat.__version__)"
  # the fused uplift kernel needs triton (CUDA Linux torch wheels bring it); without it the
  # gsplat backend falls back to autograd and the fused-adjoint tests are skipped
  $PY -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable (the fused adjoint will fall back to autograd)"
}

install_fulcra() {
  # entry points are needed for plugin discovery: write a minimal dist-info from pyproject.toml
  $PY - "$SITE" <<'PYEOF'
import sys, tomllib, pathlib
site = pathlib.Path(sys.argv[1])
meta = tomllib.loads(pathlib.Path("pyproject.toml").read_text())
d = site / f"fulcra-{meta['project']['version']}.dist-info"
d.mkdir(parents=True, exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fulcra\nVersion: {meta['project']['version']}\n")
lines = []
for group, eps in meta["project"].get("entry-points", {}).items():
    lines.append(f"[{group}]")
    lines += [f"{k} = {v}" for k, v in eps.items()]
    lines.append("")
(d / "entry_points.txt").write_text("\n".join(lines))
print("wrote", d)
PYEOF
  $PY -c "import fulcra, fulcra_plugins.scenes; print('fulcra from', fulcra.__file__)"
}

build_gsplat() {
  # build only for this GPU (Hopper: 9.0) with all cores; gsplat compiles on first use
  export TORCH_CUDA_ARCH_LIST="$($PY -c 'import torch; c=torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')"
  export MAX_JOBS="$(nproc)"
  $PY - <<'PYEOF'
import time, torch
t = time.time()
from gsplat import rasterization
N = 1000
means = torch.randn(N, 3, device="cuda") + torch.tensor([0, 0, 5.0], device="cuda")
quats = torch.randn(N, 4, device="cuda")
scales = torch.rand(N, 3, device="cuda") * 0.1
opac = torch.rand(N, device="cuda")
cols = torch.rand(N, 40, device="cuda")
K = torch.tensor([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]], device="cuda")
out, alpha, _ = rasterization(means, quats, scales, opac, cols, torch.eye(4, device="cuda")[None], K[None], 128, 96,
                              rasterize_mode="classic")
torch.cuda.synchronize()
print("gsplat built and rendered", tuple(out.shape), "in", round(time.time() - t, 1), "s")
PYEOF
}

gpu_tests() {
  # the scenes GPU tests first (by path), then every gpu-marked test of the repo; a module that
  # cannot be collected here (a missing optional package) must not stop the others
  $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests/plugins/scenes/test_gsplat_adjoint.py 2>&1 | tee "$OUT/pytest_gpu.txt"
  $PY -m pytest -q -rs -p no:cacheprovider tests/plugins/scenes/test_gsplat_backend.py 2>&1 | tee -a "$OUT/pytest_gpu.txt"
  $PY -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tee -a "$OUT/pytest_gpu.txt"
}

cuda_device_tests() {  # the CPU suites of the batched kernels, run on the GPU through --device cuda
  timeout 240 $PY -m pytest --device cuda -q -rs -p no:cacheprovider --continue-on-collection-errors \
    tests/plugins/augment tests/plugins/refiners tests/plugins/scenes tests/core/test_uplift_adjoint.py 2>&1 | tail -60 > "$OUT/pytest_cuda_device.txt"
}

gpu_bench() {  # every benchmark's text output goes to one file (the device tool returns at most 8)
  $PY benchmarks/bench_uplift.py --gpu --out "$OUT/bench_uplift_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
}

graph_gpu() {  # graph diffusion's CUDA path at the official k = 200 (300k Gaussians), beside scipy on the CPU
  echo "=== bench_graph k=200 cuda" >> "$OUT/bench_gpu.txt"
  timeout 240 $PY benchmarks/bench_graph.py --n 300000 --k 200 --steps 20 --prompts 20 --repeats 2 --threads 8 \
    --device cuda >> "$OUT/bench_gpu.txt" 2>&1
}

augment_gpu() {  # the op library on GPU tensors vs torchvision v2 (and kornia when it is installed)
  echo "=== bench_augment cuda" >> "$OUT/bench_gpu.txt"
  timeout 180 $PY benchmarks/bench_augment.py --device cuda >> "$OUT/bench_gpu.txt" 2>&1
}

distill_gpu() {  # ImageMixer in float16 on the GPU + a short distill-digits run on cuda
  timeout 180 $PY benchmarks/gpu_check_distill.py > "$OUT/gpu_distill.txt" 2>&1
}

extractors_gpu() {  # cost per image of the real extractor architectures (random weights) on the GPU
  echo "=== bench_extractors cuda" >> "$OUT/bench_gpu.txt"
  timeout 150 $PY benchmarks/bench_extractors.py --device cuda --which all --clip-crops 0 >> "$OUT/bench_gpu.txt" 2>&1
}

prefetch_gpu() {  # training on the GPU from JPEG files: decoding in the loop vs ahead in 2-8 workers
  echo "=== bench_prefetch cuda" >> "$OUT/bench_gpu.txt"
  timeout 120 $PY benchmarks/bench_prefetch.py --n 1024 --size 224 --batch 128 --steps 32 --repeats 2 \
    --device cuda --workers 2 4 8 >> "$OUT/bench_gpu.txt" 2>&1
}

step env env_report
step deps install_deps
step fulcra install_fulcra
step gsplat_build build_gsplat
step gpu_tests gpu_tests
step gpu_bench gpu_bench
step cuda_device_tests cuda_device_tests
step distill_gpu distill_gpu
step extractors_gpu extractors_gpu
step graph_gpu graph_gpu
step augment_gpu augment_gpu
step prefetch_gpu prefetch_gpu
cat "$TIMES"
exit 0
