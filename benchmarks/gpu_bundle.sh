#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine that has torch but no network and lacks two of
# this project's packages: bitsandbytes (the 8-bit optimizers) and galore-torch (the reference the
# optimizer benchmark compares with). Run here, where pip reaches an index; it fills .gpu/site/ (git
# ignores .gpu/), which the device call carries: `carry: [".gpu"]`.
#
# bitsandbytes' wheel holds one library per CUDA version (43 MB packed); only the CUDA 13 ones and
# the CPU one are kept (the device machine's torch is built for CUDA 13, device/KINDS.md), so that
# the repository and the bundle stay under the 64 MiB a device call may carry.
#
#     bash benchmarks/gpu_bundle.sh [python-version]   # default 3.12, the device machine's
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp" "bitsandbytes==0.50.2" "galore-torch==1.0"
rm -rf .gpu/site
mkdir -p .gpu/site
for whl in "$tmp"/*.whl; do
    python3 -m zipfile -e "$whl" .gpu/site
done
find .gpu/site/bitsandbytes -name 'libbitsandbytes_*.so' \
    ! -name 'libbitsandbytes_cpu.so' ! -name 'libbitsandbytes_cuda13*.so' -delete
du -sh .gpu/site
