#!/usr/bin/env bash
# The GPU check of this crate, for a lent GPU machine (H100 / H200, PyTorch 2.11.0+cu130, no
# Rust, no network, 64 MiB carried, <= 8 minutes).
#
#   scripts/device-check.sh prepare   here: release build of examples/throughput (stripped, with
#                                     the `nccl` feature: scripts/setup-cuda-headers.sh) and a
#                                     CIFAR-10 subset (10,000 train + 2,000 test images) into
#                                     device-kit/ (git-ignored, about 42 MB)
#   scripts/device-check.sh run       there, from the repository root with device-kit/ carried:
#                                     (1) the GPU CUDA sees, (2) our training images/s of
#                                     resnext50_32x4d (CIFAR) at batch 128/256/512, fp32/bf16,
#                                     channels-last off/on, then the first batch size in bf16
#                                     as a one-process data-parallel group (NCCL all-reduce every
#                                     step), (3) PyTorch's tutorial pipeline and a
#                                     GPU-resident eager bf16 channels-last pipeline, (4) 5 epochs
#                                     on the subset with test accuracy, (5) one table with TFLOP/s
#   scripts/device-check.sh smoke     here, on the CPU: every part at toy sizes, to check the
#                                     script before spending device time
#
# Logs and the table go to $OUT (or device-kit/out).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
kit=device-kit
out=${OUT:-$kit/out}
say() { printf '\n==> [device-check] %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

prepare() {
    eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
    local data=${DATA_DIR:-data/cifar-10-batches-bin}
    [ -f "$data/data_batch_1.bin" ] && [ -f "$data/test_batch.bin" ] || {
        echo "error: no CIFAR-10 in $data; run scripts/train.sh --download --epochs 1 --limit-train 1 first, or set DATA_DIR" >&2
        exit 1
    }
    eval "$(bash scripts/setup-cuda-headers.sh | tail -n1)"
    say "building examples/throughput (release, --features nccl)"
    cargo build --release --features nccl --example throughput
    mkdir -p "$kit/cifar-subset"
    strip -o "$kit/throughput" target/release/examples/throughput
    head -c $((10000 * 3073)) "$data/data_batch_1.bin" > "$kit/cifar-subset/train.bin"
    head -c $((2000 * 3073)) "$data/test_batch.bin" > "$kit/cifar-subset/test.bin"
    du -sh "$kit"
    say "ready: carry $kit (and run: scripts/device-check.sh run)"
}

run_all() {   # $1 = device, then sizes
    local device=$1 model=$2 batches=$3 images=$4 ref_batches=$5 steps=$6 epochs=$7 limit=$8 t=${9:-1}
    mkdir -p "$out"
    local torch_lib
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

    say "1/5 the device"
    { nvidia-smi -L 2>/dev/null || true
      python3 -c 'import torch; print("torch", torch.__version__, "| CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
    } | tee "$out/device.log"
    local gpu
    gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')

    say "2/5 resnext-rs training images/s"
    timeout $((240 * t)) "$kit/throughput" speed --model "$model" --device "$device" --batch "$batches" \
        --precision fp32,bf16 --channels-last off,on --images "$images" | tee "$out/ours.log" || echo "(step 2 failed or timed out)"
    timeout $((90 * t)) "$kit/throughput" speed --model "$model" --device "$device" --batch "${batches%%,*}" \
        --precision bf16 --channels-last on --images "$images" --data-parallel | tee -a "$out/ours.log" \
        || echo "(step 2, data-parallel, failed or timed out)"

    say "3/5 PyTorch references (tutorial pipeline, GPU-resident eager bf16 channels-last)"
    timeout $((150 * t)) python3 scripts/device/reference.py --data "$kit/cifar-subset/train.bin" --device "$device" \
        --batch "$ref_batches" --steps "$steps" --limit "$limit" | tee "$out/pytorch.log" || echo "(step 3 failed or timed out)"

    say "4/5 training on the CIFAR-10 subset"
    timeout $((90 * t)) "$kit/throughput" subset --dir "$kit/cifar-subset" --model "$model" --device "$device" \
        --epochs "$epochs" | tee "$out/subset.log" || echo "(step 4 failed or timed out)"

    say "5/5 table"
    python3 scripts/device/table.py "$gpu" "$out/ours.log" "$out/pytorch.log" "$out/subset.log" | tee "$out/table.md"
}

case "${1:-}" in
    prepare) prepare ;;
    run) [ -x "$kit/throughput" ] || { echo "error: $kit/throughput missing: run 'prepare' here and carry $kit" >&2; exit 1; }
         run_all cuda resnext50_32x4d 128,256,512 10240 128,256,512 20 5 10000 ;;
    smoke) prepare
           # here torch is the cached wheel that the crate links
           export PYTHONPATH="$(dirname "$LIBTORCH")${PYTHONPATH:+:$PYTHONPATH}"
           run_all cpu tiny 32 256 4 1 1 64 4 ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
esac
