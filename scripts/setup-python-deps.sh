#!/usr/bin/env bash
# Provision the Python packages that the PyTorch parity scripts (scripts/pytorch/) and the parity
# tests (tests/weights.rs) need beside torch itself: torchvision 0.26.0 (the release that goes
# with torch 2.11.0), safetensors (and what it needs: packaging), numpy, pillow, and airbench 0.1.8
# (Keller Jordan's CIFAR-10 speed baselines: the reference of the fast recipe's pieces in the tests
# and the anchor of benches/time_to_accuracy.sh).
#
# * torch is NOT installed here: the torch==2.11.0 wheel that scripts/setup-libtorch.sh put in
#   ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/libtorch-2.11.0 is used, so Python
#   and Rust run the very same libtorch. (With LIBTORCH set to the torch/ folder of a wheel, the
#   folder above it is used instead.) Run scripts/setup-libtorch.sh first.
# * The packages are installed with pip (--no-deps, exact versions) into a cache outside the
#   checkout, ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/python-deps (about 120 MB),
#   never into the system Python. The install goes to a temporary folder that is renamed into
#   place only once complete and verified (torchvision and safetensors import and agree with torch).
#
# Prints `export PYTHONPATH=...` on its last line. Idempotent: a second run finds the verified
# install (a stamp file records what it was verified against) and takes a fraction of a second.
set -euo pipefail

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
PACKAGES=("torchvision==$TORCHVISION_VERSION" "safetensors==0.7.0" "numpy==2.3.5" "pillow==12.0.0" "packaging==25.0" "airbench==0.1.8")
say() { printf '[setup-python-deps] %s\n' "$*" >&2; }

cache=${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}
target="$cache/python-deps"

# The folder holding the torch Python package (the wheel installed by setup-libtorch.sh).
if [ -n "${LIBTORCH:-}" ] && [ -f "$LIBTORCH/__init__.py" ] && [ -f "$LIBTORCH/version.py" ]; then
    torch_site=$(cd "$LIBTORCH/.." && pwd)
elif [ -f "$cache/libtorch-$TORCH_VERSION/torch/__init__.py" ]; then
    torch_site="$cache/libtorch-$TORCH_VERSION"
else
    say "error: no torch $TORCH_VERSION Python package found (looked in ${LIBTORCH:+$LIBTORCH/.. and }$cache/libtorch-$TORCH_VERSION)."
    say "       run scripts/setup-libtorch.sh first (with LIBTORCH unset, it installs the torch==$TORCH_VERSION wheel there;"
    say "       a LIBTORCH that is the torch/ folder of that wheel works too)."
    exit 1
fi

# verify DIR: with DIR and torch on the path, torch is 2.11.0 and torchvision, safetensors import.
verify() {
    PYTHONPATH="$1:$torch_site" python3 - "$TORCH_VERSION" "$TORCHVISION_VERSION" "$torch_site" <<'PY'
import os, sys
import torch, torchvision, safetensors.torch, numpy, PIL, airbench  # noqa: F401
want_torch, want_tv, torch_site = sys.argv[1], sys.argv[2], os.path.realpath(sys.argv[3])
got_torch = torch.__version__.split("+")[0]
got_tv = torchvision.__version__.split("+")[0]
if got_torch != want_torch or got_tv != want_tv:
    sys.exit(f"torch {got_torch} / torchvision {got_tv}, expected {want_torch} / {want_tv}")
if not os.path.realpath(torch.__file__).startswith(torch_site + os.sep):
    sys.exit(f"torch was imported from {torch.__file__}, not from {torch_site}")
PY
}

# What a verified install was checked against; a matching stamp skips re-importing torch.
stamp_text="${PACKAGES[*]} torch=$TORCH_VERSION torch_site=$torch_site"
stamp="$target/.verified"

if [ -d "$target" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ] \
    && [ -f "$target/torchvision/__init__.py" ] && [ -f "$target/safetensors/torch.py" ] \
    && [ -f "$target/airbench/utils.py" ]; then
    say "torchvision $TORCHVISION_VERSION and safetensors found in $target (cached, verified before)"
elif [ -d "$target" ] && verify "$target" 2>/dev/null; then
    printf '%s' "$stamp_text" > "$stamp"
    say "torchvision $TORCHVISION_VERSION and safetensors found in $target (cached)"
else
    if [ -d "$target" ]; then
        say "cached $target fails verification: reinstalling"
        rm -rf "$target"
    fi
    mkdir -p "$cache"
    partial="$target.partial"
    rm -rf "$partial"
    say "installing ${PACKAGES[*]} from PyPI into $target (about 120 MB)..."
    start=$(date +%s)
    python3 -m pip install --quiet --no-input --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$partial" "${PACKAGES[@]}"
    if ! verify "$partial"; then
        say "error: the fresh install in $partial does not import; left there for inspection"
        exit 1
    fi
    printf '%s' "$stamp_text" > "$partial/.verified"
    mv "$partial" "$target"
    say "installed in $(( $(date +%s) - start )) s"
fi
say "torch from $torch_site, torchvision and safetensors from $target"
echo "export PYTHONPATH=$target:$torch_site"
