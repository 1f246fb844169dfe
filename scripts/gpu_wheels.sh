#!/usr/bin/env bash
# Fill ./.whl with the wheels scripts/gpu_checks.sh installs on a GPU machine that has torch but no
# network (the device tool's machines: Python 3.12, a CUDA torch, nothing reachable). Run it here,
# where the package index is reachable, then carry the folder:
#
#   bash scripts/gpu_wheels.sh              # or PYVER=3.11 bash scripts/gpu_wheels.sh
#   run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=600)
#
# Only what fulcra's GPU checks import and a CUDA torch image may lack; never torch, torchvision or
# triton (they must match the machine's CUDA build). Binary wheels are fetched for PYVER on
# manylinux x86-64; the folder stays well under the 64 MiB a carry may hold (scipy is left out
# unless WITH_SCIPY=1: ~35 MB, and most CUDA images have it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PYVER="${PYVER:-3.12}"
DEST=.whl
mkdir -p "$DEST"
pure="gsplat==1.5.3 jaxtyping wadler_lindig omegaconf==2.3.1 plyfile pluggy iniconfig pytest packaging rich markdown-it-py mdurl pygments"
binary="ninja pyyaml safetensors pillow"  # not numpy: torch's own must not be shadowed
[ "${WITH_SCIPY:-0}" = 1 ] && binary="$binary scipy"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps -d "$DEST" $pure
# omegaconf's parser runtime is published as an sdist only: build its (pure-Python) wheel here
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
rm -f "$DEST"/*.tar.gz
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" $binary
ls -1 "$DEST"
du -sh "$DEST"
