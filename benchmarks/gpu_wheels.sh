#!/usr/bin/env bash
# Fetch the wheels that benchmarks/gpu_check.sh installs on a GPU machine whose Python has torch but not PyAV or
# faiss, and that cannot reach a package registry: into wheels/ of the repository root (git ignores it).
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the lent H200 machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
# The versions pinned in pyproject.toml; both wheels use the stable ABI, so one file serves every CPython >= 3.11.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d wheels "av==18.1.0" "faiss-cpu==1.15.1"
ls -l wheels
