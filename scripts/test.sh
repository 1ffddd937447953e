#!/usr/bin/env bash
# README's test command. On a fresh machine it installs what is missing (libtorch 2.11.0 and
# gloo's headers into a cache outside the checkout; see scripts/setup-libtorch.sh and
# scripts/setup-gloo-headers.sh), then runs the whole test suite.
# Extra arguments go to `cargo test` (for example: scripts/test.sh --test model).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[test] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "error: cargo not found. Install Rust from https://rustup.rs and run this again."
    exit 1
fi
say "step 1/3: libtorch and gloo's headers (installed once into a cache, then reused)"
eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
eval "$(bash scripts/setup-gloo-headers.sh 2>/dev/null | tail -n1)"
say "step 2/3: torchvision + safetensors for the PyTorch parity tests (cache, not the system Python)"
bash scripts/setup-python-deps.sh >/dev/null
say "step 3/3: cargo test (the first build compiles torch-sys: about 6 minutes on 2 cores)"
start=$(date +%s)
cargo test "$@"
say "all tests passed in $(( $(date +%s) - start )) s"
