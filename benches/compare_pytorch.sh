#!/usr/bin/env bash
# Compares this crate with PyTorch eager on the same libtorch, alternating them in one run, and
# prints one table (workload | ours images/s | PyTorch eager images/s | ratio).
#
#   benches/compare_pytorch.sh [--threads N] [--device cpu|cuda] [--rounds R] [--train-rounds R]
#                              [--tiny-rounds R] [--only NAME] [--malloc ours|both] [--steps K]
#
# * builds examples/bench_step.rs in release mode (the Rust side, driven over a pipe);
# * runs benches/compare_pytorch.py with the torch package whose libtorch the crate links:
#   PYTHONPATH is the folder above $LIBTORCH (a pip install of the torch wheel, as
#   scripts/setup-libtorch.sh makes), read from the environment or from .cargo/config.toml;
#   set TORCH_PYTHONPATH to override;
# * workloads (CPU): ResNeXt-50 (32x4d, CIFAR stem) eval batch 64, tiny eval batch 128,
#   ResNeXt-50 training step batch 64, tiny training step batch 128; on CUDA (--device cuda)
#   batches 128 and 512. About 12 minutes on 2 CPU cores with the default rounds.
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[compare_pytorch] %s\n' "$*" >&2; }

libtorch=${LIBTORCH:-}
if [ -z "$libtorch" ] && [ -f .cargo/config.toml ]; then
    libtorch=$(sed -n 's/^LIBTORCH *= *"\(.*\)"/\1/p' .cargo/config.toml | head -n1)
fi
pythonpath=${TORCH_PYTHONPATH:-}
if [ -z "$pythonpath" ]; then
    if [ -n "$libtorch" ] && [ -f "$libtorch/__init__.py" ]; then
        pythonpath=$(dirname "$libtorch")
    else
        say "error: cannot find the torch package of libtorch '${libtorch:-unset}'; set TORCH_PYTHONPATH"
        exit 1
    fi
fi

say "building examples/bench_step (release)"
cargo build --release --example bench_step >&2
target=${CARGO_TARGET_DIR:-$repo/target}
binary="$target/release/examples/bench_step"
[ -x "$binary" ] || { say "error: $binary was not built"; exit 1; }

say "running benches/compare_pytorch.py with PYTHONPATH=$pythonpath"
PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}" \
    exec python3 -W ignore benches/compare_pytorch.py --binary "$binary" "$@"
