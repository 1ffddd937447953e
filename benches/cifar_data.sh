#!/usr/bin/env bash
# Prints the folder holding cifar-10-batches-bin/ for the benchmarks: the real CIFAR-10 copy
# (../shared/data/cifar-10-binary.tar.gz, or $RESNEXT_CIFAR10_ARCHIVE) extracted once into
# ${RESNEXT_BENCH_CACHE:-$HOME/.cache/resnext}/cifar10-bench (into a temporary folder renamed
# into place, so an interrupted extraction is never taken for a complete one).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[cifar_data] %s\n' "$*" >&2; }
archive=${RESNEXT_CIFAR10_ARCHIVE:-$repo/../shared/data/cifar-10-binary.tar.gz}
[ -f "$archive" ] || { say "error: the CIFAR-10 archive $archive is absent (set RESNEXT_CIFAR10_ARCHIVE)"; exit 1; }
data=${RESNEXT_BENCH_CACHE:-$HOME/.cache/resnext}/cifar10-bench
if [ ! -f "$data/cifar-10-batches-bin/test_batch.bin" ]; then
    say "extracting $archive into $data"
    mkdir -p "$data"
    tmp=$(mktemp -d "$data/.partial.XXXXXX")
    tar -xzf "$archive" -C "$tmp"
    rm -rf "$data/cifar-10-batches-bin"
    mv "$tmp/cifar-10-batches-bin" "$data/"
    rmdir "$tmp"
fi
echo "$data"
