#!/usr/bin/env bash
# Data-parallel training speed on the CPU, ours against PyTorch's, side by side in one run:
# rounds alternate examples/bench_data_parallel.rs (ours: 1 process x N threads, N processes x
# 1 thread with bucketed Gloo all-reduce) and benches/pytorch_ddp.py (PyTorch: the same two
# configurations, DistributedDataParallel for N processes), same model, global batch and steps,
# each configuration in fresh processes; then one table of medians with the ratios.
#
#   benches/data_parallel.sh [--model tiny] [--batch 128] [--steps 20] [--nproc 2] [--rounds 3]
#                            [--pytorch-malloc]
#
# Ours keeps freed memory (resnext::memory::keep_freed_memory, as the trainer does on the CPU);
# PyTorch runs as it comes, or with --pytorch-malloc under the glibc settings that do the same
# (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456
# MALLOC_ARENA_MAX=1).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
model=tiny batch=128 steps=20 nproc=2 rounds=3 malloc=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pytorch-malloc) malloc=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647
                                  MALLOC_TOP_PAD_=268435456 MALLOC_ARENA_MAX=1); shift; continue ;;
        --model) model=$2 ;; --batch) batch=$2 ;; --steps) steps=$2 ;;
        --nproc) nproc=$2 ;; --rounds) rounds=$2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
eval "$(bash scripts/setup-libtorch.sh 2>/dev/null | tail -n1)"
export PYTHONPATH="$(dirname "$LIBTORCH")${PYTHONPATH:+:$PYTHONPATH}"
cargo build --release --example bench_data_parallel >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
common=(--model "$model" --batch "$batch" --steps "$steps" --nproc "$nproc" --rounds 1)
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    target/release/examples/bench_data_parallel "${common[@]}" 2>/dev/null | grep '^RESULT' >> "$log"
    env "${malloc[@]}" python3 benches/pytorch_ddp.py "${common[@]}" 2>/dev/null | grep '^RESULT' >> "$log"
done
python3 - "$log" "$model" "$batch" "$nproc" "$rounds" "${#malloc[@]}" <<'EOF'
import json, statistics, sys
log, model, batch, n, rounds, malloc = sys.argv[1:]
rows = {}
for line in open(log):
    r = json.loads(line[7:])
    rows.setdefault(r["impl"], []).append(r["images_per_sec"])
med = {k: statistics.median(v) for k, v in rows.items()}
how = "with the glibc settings" if int(malloc) else "as it comes"
print(f"{model} on the CPU, global batch {batch}, medians of {rounds} alternating rounds "
      f"(images/s; PyTorch {how})\n")
print("| configuration | ours | PyTorch | ours / PyTorch |")
print("|---|--:|--:|--:|")
for name, ours, theirs in ((f"1 process x {n} threads", "resnext-rs-1proc", "pytorch-1proc"),
                           (f"{n} processes x 1 thread (DDP, Gloo)", "resnext-rs-ddp", "pytorch-ddp")):
    print(f"| {name} | {med[ours]:.0f} | {med[theirs]:.0f} | {med[ours] / med[theirs]:.2f} |")
print(f"\n{n} processes / 1 process: ours {med['resnext-rs-ddp'] / med['resnext-rs-1proc']:.2f}x, "
      f"PyTorch {med['pytorch-ddp'] / med['pytorch-1proc']:.2f}x")
EOF
