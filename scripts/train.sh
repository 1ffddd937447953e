#!/usr/bin/env bash
# README's train command: installs libtorch if missing (scripts/setup-libtorch.sh), builds the
# release example and trains. Arguments go to the example; see `scripts/train.sh --help`.
# Example: scripts/train.sh --download --model tiny --epochs 5
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[train] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "error: cargo not found. Install Rust from https://rustup.rs and run this again."
    exit 1
fi
say "step 1/2: libtorch (installed once into a cache, then reused)"
eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
say "step 2/2: building and running examples/train_cifar10.rs (release; first build about 6 minutes)"
exec cargo run --release --quiet --example train_cifar10 -- "$@"
