#!/usr/bin/env bash
# Every GPU step of the open issues, as one command for a device machine (one NVIDIA H100/H200, no
# network; a session has ~15 minutes of device time, one command at most 10). Prepare here first:
#
#     bash benchmarks/gpu_bundle.sh      # fills .gpu/site: bitsandbytes and galore-torch
#
# then one device call: command `bash benchmarks/gpu_check.sh`, carry [".gpu"], timeout_s 560.
# Each step has its own time limit, so one that hangs costs only its share; what each printed lands
# in $OUT (at most 8 files come back, so the measured run's report travels as one archive):
#   device.txt               the GPU, driver, torch, CUDA and Python versions
#   cuda_tests.txt           python -m pytest tests/engine/test_cuda.py (the CUDA path: slack, NVML
#                            context, the allocator cap, the compiled window kernels through Triton)
#   optimizer_step.txt       benchmarks/optimizer_step.py on llama-1b's block matrices, bf16, the
#                            window kernels as the chooser takes them (issue 15, part 4; run it
#                            again with --kernels each if time is left)
#   end_to_end.txt           benchmarks/end_to_end.py: tokens/s natural-galore against adamw, llama-1b
#                            bf16 (issue 15's goal: ≥ 0.95×)
#   run-1b.tar.gz            ngl-profile run 1b --gpu 4090 --mode measured, adamw and natural-galore:
#                            the report, measured on this GPU capped to a 4090's memory
#   run-1b.txt               what that run printed
# Commit what comes back under reports/ with the device named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA GPU visible to torch here; nothing run" >&2
    exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, sys, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'python', sys.version.split()[0], platform.platform())"
    python3 -c "import bitsandbytes, galore_torch; print('bitsandbytes', bitsandbytes.__version__, 'galore-torch: ok')"
    git log -1 --format='commit %h %s' 2>/dev/null || true
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

step() {  # step SECONDS NAME COMMAND...: the command's output to $OUT/NAME.txt, with its exit status
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "exit status $rc after $((SECONDS - t0)) s" >> "$OUT/$name.txt"
    tail -n 25 "$OUT/$name.txt"
}

# limits: 90 + 200 + 80 + 130 s, each + 10 s to be killed, and ~20 s of setup: under 560 s. Every
# GaLore row of optimizer_step starts with a float32 SVD of each of llama-1b's 168 matrices: with
# `--kernels each` (14 rows) that alone could outlast its limit, so `auto` (8 rows); it prints
# "ready: …" per row as it goes, so a cut-short run still says how far it got
step 90 cuda_tests python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py
step 200 optimizer_step python3 benchmarks/optimizer_step.py --model llama-1b --device cuda --dtype bfloat16 \
    --kernels auto --rounds 5 --steps 5
step 80 end_to_end python3 benchmarks/end_to_end.py --model llama-1b --batch 4 --seq 256 --dtype bfloat16 \
    --device cuda --rounds 5 --steps 3
step 130 run-1b python3 -m ngl_profile.cli run 1b --gpu 4090 --mode measured --optimizers adamw,natural-galore \
    --out "$OUT/run-1b" --force
tar -czf "$OUT/run-1b.tar.gz" -C "$OUT" run-1b 2>/dev/null && rm -rf "$OUT/run-1b"
ls -la "$OUT"
