#!/usr/bin/env bash
# Provision libtorch 2.11.0 (the version tch 0.24 needs) and wire this checkout's cargo to it.
#
# * If LIBTORCH is already set, that libtorch is verified and used; nothing is installed.
# * Otherwise torch==2.11.0 is installed from PyPI with pip into a cache outside the checkout,
#   ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/libtorch-2.11.0 (about 4.7 GB, two
#   minutes), and reused on every later run. The install goes to a temporary folder that is
#   renamed into place only once complete and verified.
# * It writes .cargo/config.toml (git-ignored) so that plain `cargo build/test/run/bench` find it.
# * It runs scripts/setup-gloo-headers.sh (gloo's headers, which the wheel lacks and
#   resnext::distributed's C++ shim needs; 49 kB, cached) and records their folder in that file
#   too (RESNEXT_GLOO_INCLUDE).
#
# Prints `export LIBTORCH=...` on its last line. Idempotent: a second run takes about a second.
set -euo pipefail

TORCH_VERSION=2.11.0
say() { printf '[setup-libtorch] %s\n' "$*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}
target="$cache/libtorch-$TORCH_VERSION"

# verify DIR: DIR is a libtorch folder (lib/, include/) of version 2.11.0 with the C++11 ABI.
verify() {
    local dir=$1 version=""
    [ -f "$dir/lib/libtorch.so" ] && [ -f "$dir/lib/libc10.so" ] && [ -d "$dir/include" ] || {
        say "error: $dir is not a libtorch folder (expected lib/libtorch.so, lib/libc10.so and include/)"
        return 1
    }
    if [ -f "$dir/build-version" ]; then         # a libtorch zip from pytorch.org
        version=$(head -n1 "$dir/build-version")
    elif [ -f "$dir/version.py" ]; then          # the torch/ folder of a wheel
        version=$(sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$dir/version.py")
    fi
    version=${version%%+*}
    if [ "$version" != "$TORCH_VERSION" ]; then
        say "error: $dir is libtorch '${version:-unknown}', tch 0.24 needs $TORCH_VERSION"
        return 1
    fi
    # The C++11 ABI mangles std::string as std::__cxx11::basic_string: look for it in libc10.
    if ! grep -q -a '__cxx11' "$dir/lib/libc10.so"; then
        say "error: $dir/lib/libc10.so was not built with the C++11 ABI (tch expects _GLIBCXX_USE_CXX11_ABI=1)"
        return 1
    fi
    return 0
}

if [ -n "${LIBTORCH:-}" ]; then
    say "using LIBTORCH=$LIBTORCH (set by you; nothing to install)"
    verify "$LIBTORCH"
    libtorch=$LIBTORCH
else
    libtorch="$target/torch"
    if [ -d "$target" ] && verify "$libtorch"; then
        say "libtorch $TORCH_VERSION found in $target (cached)"
    else
        if [ -d "$target" ]; then
            say "cached $target fails verification: reinstalling"
            rm -rf "$target"
        fi
        mkdir -p "$cache"
        partial="$target.partial"
        rm -rf "$partial"
        say "installing torch==$TORCH_VERSION from PyPI into $target (about 4.7 GB; takes a few minutes)..."
        start=$(date +%s)
        python3 -m pip install --quiet --no-input --disable-pip-version-check \
            --target "$partial" "torch==$TORCH_VERSION"
        verify "$partial/torch"
        mv "$partial" "$target"
        say "installed in $(( $(date +%s) - start )) s"
    fi
fi

gloo_line=$(bash "$repo/scripts/setup-gloo-headers.sh" | tail -n1)
gloo_include=${gloo_line#export RESNEXT_GLOO_INCLUDE=}

mkdir -p "$repo/.cargo"
cat > "$repo/.cargo/config.toml" <<TOML
# Written by scripts/setup-libtorch.sh; git-ignored. Points the tch build at libtorch, and
# build.rs (resnext::distributed's c10d shim) at gloo's headers.
[env]
LIBTORCH = "$libtorch"
LIBTORCH_CXX11_ABI = "1"
RESNEXT_GLOO_INCLUDE = "$gloo_include"
TOML
if [ -f "$libtorch/lib/libtorch_cuda.so" ]; then
    say "libtorch at $libtorch (CUDA build; runs on CPU as well). Wrote .cargo/config.toml."
else
    say "libtorch at $libtorch (CPU build). Wrote .cargo/config.toml."
fi
echo "export LIBTORCH=$libtorch"
