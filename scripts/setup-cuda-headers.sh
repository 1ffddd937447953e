#!/usr/bin/env bash
# Provision the CUDA headers that building with the `nccl` cargo feature needs (build.rs compiles
# csrc/c10d_shim_nccl.cpp against libtorch's ProcessGroupNCCL.hpp, which includes CUDA's
# runtime headers). Only for `--features nccl`; the default build (Gloo) does not need them.
#
# * The torch 2.11.0 wheel ships nvidia/cu13/include (cuda_runtime_api.h, ...) and NCCL's
#   nccl.h, but not CUDA's crt/ and cccl/ headers. Those come from the PyPI packages
#   nvidia-cuda-crt and nvidia-cuda-cccl (13.0.*, about 19 MB), installed with pip --no-deps
#   into a cache outside the checkout:
#   ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/cuda-headers-13.0.
#   The install goes to a temporary folder renamed into place only once complete.
# * If RESNEXT_CUDA_INCLUDE is already set, nothing is installed and it is printed back.
#
# Prints `export RESNEXT_CUDA_INCLUDE=...` (the wheel's include folder, then the cache's, then
# its cccl/) on its last line. Idempotent. Needs the libtorch cache (scripts/setup-libtorch.sh).
set -euo pipefail
say() { printf '[setup-cuda-headers] %s\n' "$*" >&2; }

if [ -n "${RESNEXT_CUDA_INCLUDE:-}" ]; then
    say "using RESNEXT_CUDA_INCLUDE=$RESNEXT_CUDA_INCLUDE (set by you; nothing to install)"
    echo "export RESNEXT_CUDA_INCLUDE=$RESNEXT_CUDA_INCLUDE"
    exit 0
fi

cache=${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}
eval "$(bash "$(dirname "${BASH_SOURCE[0]}")/setup-libtorch.sh" 2>/dev/null | tail -n1)"
wheel_include="$(dirname "$LIBTORCH")/nvidia/cu13/include"
[ -f "$wheel_include/cuda_runtime_api.h" ] || {
    say "error: $wheel_include/cuda_runtime_api.h missing: the libtorch in $LIBTORCH is not the CUDA 13 wheel"
    exit 1
}
target="$cache/cuda-headers-13.0"
include="$target/nvidia/cu13/include"

if [ -f "$include/crt/host_config.h" ] && [ -d "$include/cccl" ]; then
    say "CUDA headers found in $target (cached)"
else
    rm -rf "$target" "$target.partial"
    say "installing nvidia-cuda-crt and nvidia-cuda-cccl 13.0.* (headers, about 19 MB) into $target"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$target.partial" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
    [ -f "$target.partial/nvidia/cu13/include/crt/host_config.h" ] || {
        say "error: the packages did not provide crt/host_config.h"
        exit 1
    }
    mv "$target.partial" "$target"
fi
echo "export RESNEXT_CUDA_INCLUDE=$wheel_include:$include:$include/cccl"
