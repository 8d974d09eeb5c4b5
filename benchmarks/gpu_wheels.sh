#!/usr/bin/env bash
# Fetch the wheels that benchmarks/gpu_check.sh installs on a GPU machine whose Python has torch but not PyAV or
# faiss, and that cannot reach a package registry: into wheels/ of the repository root (git ignores it).
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the lent H200 machine's Python
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
# The versions pinned in pyproject.toml; both wheels use the stable ABI, so one file serves every CPython >= 3.11.
mapfile -t pins < <(grep -oE '"(av|faiss-cpu)==[^"]+"' pyproject.toml | tr -d '"')
[ ${#pins[@]} -eq 2 ] || { echo "gpu_wheels.sh: no exact pins of av and faiss-cpu in pyproject.toml" >&2; exit 1; }
# a wheel of an earlier pin left beside the new one would make the lent machine's install refuse both
rm -f wheels/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d wheels "${pins[@]}"
ls -l wheels
