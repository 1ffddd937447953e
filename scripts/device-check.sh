#!/usr/bin/env bash
# The GPU check of this crate, for a lent GPU machine (H100 / H200, PyTorch 2.11.0+cu130, no
# Rust, no network, 64 MiB carried a call, <= 10 minutes a call, 15 device minutes a session).
#
#   scripts/device-check.sh prepare   here: release builds of examples/throughput and
#                                     examples/train_cifar10 (stripped, with the `nccl` feature:
#                                     scripts/setup-cuda-headers.sh) and a CIFAR-10 subset
#                                     (10,000 train + 2,000 test images) into device-kit/
#                                     (git-ignored, about 50 MB); the whole CIFAR-10 copy in
#                                     three parts of about 61 MB into device-kit-data/part{1,2,3}
#                                     (git-ignored: a call carries 64 MiB with the working tree)
#   scripts/device-check.sh run       there, from the repository root with device-kit/ carried:
#                                     (1) the GPU CUDA sees, (2) our training images/s of
#                                     resnext50_32x4d (CIFAR) at batch 128/256/512, fp32/bf16,
#                                     channels-last off/on, then the first batch size in bf16
#                                     as a one-process data-parallel group (NCCL all-reduce every
#                                     step), (3) PyTorch's tutorial pipeline and a
#                                     GPU-resident eager bf16 channels-last pipeline, (4) 5 epochs
#                                     on the subset with test accuracy, (5) one table with TFLOP/s
#   scripts/device-check.sh receive   there, with one device-kit-data/partN carried: checks the
#                                     parts that have arrived and names those still missing
#   scripts/device-check.sh fast      there, once the three parts and device-kit/ are there:
#                                     the `fast` recipe (issue 23) on the whole CIFAR-10 copy on
#                                     the GPU (bf16, data resident on the GPU), one seed, and a
#                                     table of the time to 90%, to airbench94's 90.81% on this
#                                     copy and to 93%, counted from the process start
#   scripts/device-check.sh smoke     here, on the CPU: every part at toy sizes, to check the
#                                     script before spending device time
#
# A session with a device: `prepare` here; then, back to back (the machine is handed back after
# about 30 s idle, and a fresh one has none of the files): run `scripts/device-check.sh run`
# carrying device-kit; run `scripts/device-check.sh receive` three times, carrying
# device-kit-data/part1, then part2, then part3; run `scripts/device-check.sh fast` (nothing
# to carry: what earlier calls brought stays on the warm machine); give the machine back.
#
# Logs and the tables go to $OUT (or device-kit/out).
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
    say "building examples/throughput and examples/train_cifar10 (release, --features nccl)"
    cargo build --release --features nccl --example throughput --example train_cifar10
    rm -rf "$kit/cifar" "$kit/fast-seed1" "$kit/fast-seed1.log"
    mkdir -p "$kit/cifar-subset"
    strip -o "$kit/throughput" target/release/examples/throughput
    strip -o "$kit/train_cifar10" target/release/examples/train_cifar10
    head -c $((10000 * 3073)) "$data/data_batch_1.bin" > "$kit/cifar-subset/train.bin"
    head -c $((2000 * 3073)) "$data/test_batch.bin" > "$kit/cifar-subset/test.bin"
    du -sh "$kit"
    local part
    for part in 1 2 3; do
        mkdir -p "$parts/part$part"
        for name in $(part_files $part); do
            ln -f "$data/$name" "$parts/part$part/$name" 2>/dev/null || cp "$data/$name" "$parts/part$part/$name"
        done
    done
    du -sh "$parts"/part*
    say "ready: carry $kit (and run: scripts/device-check.sh run), then each of $parts/part{1,2,3} (receive), then fast"
}

# The whole CIFAR-10 copy travels in three parts (a call carries 64 MiB with the working tree).
parts=device-kit-data
part_files() {
    case $1 in
        1) echo data_batch_1.bin data_batch_2.bin ;;
        2) echo data_batch_3.bin data_batch_4.bin ;;
        3) echo data_batch_5.bin test_batch.bin batches.meta.txt ;;
    esac
}

# Prints the parts that are missing or incomplete (a .bin file is 10,000 records of 3,073 bytes).
missing_parts() {
    local part name size
    for part in 1 2 3; do
        for name in $(part_files $part); do
            size=$(stat -c %s "$parts/part$part/$name" 2>/dev/null || echo 0)
            if [ "$size" = 0 ] || { [ "${name%.bin}" != "$name" ] && [ "$size" != 30730000 ]; }; then
                echo "part$part"
                break
            fi
        done
    done
}

receive() {
    local missing
    missing=$(missing_parts)
    say "CIFAR-10 parts here: $(for p in 1 2 3; do echo "$missing" | grep -qx "part$p" || printf 'part%s ' $p; done)"
    if [ -n "$missing" ]; then
        echo "still to carry: $(echo $missing | sed "s|part|$parts/part|g")"
    else
        echo "all three parts are here: run scripts/device-check.sh fast"
    fi
}

fast() {   # $1 = device, then more flags for train_cifar10
    local device=$1
    shift
    local missing
    missing=$(missing_parts)
    [ -z "$missing" ] || { echo "error: CIFAR-10 parts missing: $(echo $missing); carry them with 'receive' first" >&2; exit 1; }
    [ -x "$kit/train_cifar10" ] || { echo "error: $kit/train_cifar10 missing: run 'prepare' here and carry $kit" >&2; exit 1; }
    mkdir -p "$out" "$kit/cifar/cifar-10-batches-bin"
    local part name
    for part in 1 2 3; do
        for name in $(part_files $part); do
            ln -sf "$repo/$parts/part$part/$name" "$kit/cifar/cifar-10-batches-bin/$name"
        done
    done
    torch_lib_path
    say "the fast recipe on $device, seed 1, the whole CIFAR-10 copy"
    python3 -c 'import torch; print("torch", torch.__version__, "| CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' \
        | tee "$out/fast-device.log"
    # The run directory stays in the kit (its checkpoints would crowd the 8 files $OUT returns).
    local run=$kit/fast-seed1
    rm -rf "$run"
    timeout 540 python3 benches/time_to_accuracy.py ours --binary "$kit/train_cifar10" --device "$device" \
        --data-dir "$kit/cifar" --seed 1 --threads "$(nproc)" --t0 "$(date +%s.%N)" \
        --run-dir "$run" --out "$out/fast-seed1.jsonl" -- "$@" \
        || echo "(the fast run failed or timed out)"
    cp "$run.log" "$out/fast-seed1.log" || true
    cp "$run/summary.json" "$out/fast-summary.json" || true
    tail -n 20 "$out/fast-seed1.log" || true
    say "time to accuracy (airbench94 reaches 90.81% on this copy, fp32 on a CPU, seed 1)"
    python3 benches/time_to_accuracy.py table --targets 0.90,0.9081,0.93 "$out/fast-seed1.jsonl" | tee "$out/fast-table.md"
}

# Puts PyTorch's torch/lib (the libtorch the binaries link) on LD_LIBRARY_PATH.
torch_lib_path() {
    local torch_lib
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

run_all() {   # $1 = device, then sizes
    local device=$1 model=$2 batches=$3 images=$4 ref_batches=$5 steps=$6 epochs=$7 limit=$8 t=${9:-1}
    mkdir -p "$out"
    torch_lib_path

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
    receive) receive ;;
    fast) fast cuda ;;
    smoke) prepare
           # here torch is the cached wheel that the crate links
           export PYTHONPATH="$(dirname "$LIBTORCH")${PYTHONPATH:+:$PYTHONPATH}"
           run_all cpu tiny 32 256 4 1 1 64 4
           receive
           fast cpu --epochs 1 --limit-train 512 --limit-test 256 ;;
    *) sed -n '2,39p' "$0"; exit 2 ;;
esac
