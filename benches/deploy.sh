#!/usr/bin/env bash
# Deploy comparison: ResNeXt-50 32x4d inference in fp32 on the CPU by engine (ours, PyTorch
# eager channels-last, ONNX Runtime, OpenVINO), alternating engines in fresh processes, medians
# and ratios, one markdown table (see benches/deploy.py). Also prints the CPU model and its fp32
# FMA peak (benches/fma_peak.c on the same threads), so the figures can be read against it.
#
#   benches/deploy.sh [--threads N] [--rounds R] [--seconds S] [--engines a,b] [--only WORKLOAD]
#
# About 10 minutes on 2 cores with the defaults (2 rounds). Python packages: torch from the
# wheel whose libtorch the crate links, torchvision (scripts/setup-python-deps.sh), onnx and
# onnxruntime and openvino (scripts/setup-onnx-deps.sh), all in the cache outside the checkout.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[deploy] %s\n' "$*" >&2; }
threads=2
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--threads" ] && threads=${args[$((i + 1))]}
done

eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
pythonpath=$(bash scripts/setup-onnx-deps.sh | tail -n1)
pythonpath=${pythonpath#export PYTHONPATH=}
say "building examples/bench_step (release)"
cargo build --release --example bench_step >&2
target=${CARGO_TARGET_DIR:-$repo/target}
binary="$target/release/examples/bench_step"

# The FMA peak: AVX-512 where the CPU has it, else AVX2.
peak_bin=$(mktemp -d)/fma_peak
if grep -q avx512f /proc/cpuinfo; then isa=(-mavx512f -mfma); else isa=(-mavx2 -mfma); fi
cc -O2 "${isa[@]}" -pthread benches/fma_peak.c -o "$peak_bin"
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
say "fp32 FMA peak on $threads threads: $("$peak_bin" "$threads" 2 | cut -d' ' -f2-) GFLOP/s"
PYTHONPATH="$pythonpath" python3 -W ignore benches/deploy.py --binary "$binary" "$@"
say "FMA peak again (after): $("$peak_bin" "$threads" 2 | cut -d' ' -f2-) GFLOP/s"
