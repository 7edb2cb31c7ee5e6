#!/usr/bin/env bash
# Downloads the wheels the GPU device machine lacks (Metaflow, blake3, boto3 and their
# dependencies, plus pytest to run the CUDA tests) for Python 3.12 on manylinux x86_64,
# into gpu-wheels/ (ignored by git). scripts/gpu_check.sh installs them there with
# `pip install --no-index --find-links gpu-wheels`. The device machine already has torch
# with CUDA, numpy, msgpack and cloudpickle, so those are not downloaded.
#
# Usage: scripts/fetch_gpu_wheels.sh [DESTINATION]   (default: gpu-wheels)
# WHEELS_PYTHON=3.11 fetches for another Python (e.g. to rehearse the check on a CPU
# machine whose torch is for 3.11: scripts/gpu_check.sh --rehearse).
set -euo pipefail

cd "$(dirname "$0")/.."
DESTINATION="${1:-gpu-wheels}"
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"

# The versions this checkout is tested with (constraints.txt pins the test setup).
PACKAGES=(
  "metaflow==2.19.39"
  "blake3==1.0.11"
  "boto3==1.44.8"
  "pytest>=8"
)

mkdir -p "$DESTINATION"
# --only-binary with --platform/--python-version: pip resolves for the device machine
# (CPython 3.12, glibc manylinux x86_64), not for this one.
VERSION="${WHEELS_PYTHON:-3.12}"
$PIP download --quiet --disable-pip-version-check \
  --only-binary=:all: --python-version "$VERSION" --implementation cp --abi "cp${VERSION/./}" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  --dest "$DESTINATION" "${PACKAGES[@]}"

echo "gpu wheels in $DESTINATION:"
ls -1 "$DESTINATION"
du -sh "$DESTINATION"
