#!/usr/bin/env bash
# Provision gloo's C++ headers, which libtorch's c10d header ProcessGroupGloo.hpp includes but the
# torch wheel does not ship. build.rs compiles csrc/c10d_shim.cpp (src/distributed) against them.
#
# * They come from Debian's libgloo-dev package (bookworm, 0.0~git20220518.5b14351-3: 73 files,
#   49 kB), downloaded with curl from deb.debian.org (snapshot.debian.org as a fallback), checked
#   against its SHA-256 and unpacked (dpkg-deb, or ar + tar) into a cache outside the checkout:
#   ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/gloo-headers-20220518/include.
#   No root and no apt needed. The unpacking goes to a temporary folder that is renamed into place
#   only once complete.
# * If RESNEXT_GLOO_INCLUDE is already set, that folder is checked and used; nothing is installed.
#
# Only declarations are used from them (libtorch builds every gloo object itself), which is why a
# 2022 snapshot serves a libtorch built against a newer gloo; tests/distributed.rs exercises every
# collective the shim calls.
#
# Prints `export RESNEXT_GLOO_INCLUDE=...` on its last line. Idempotent: a second run takes
# milliseconds.
set -euo pipefail

DEB=libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb
SHA256=80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
URLS=(
    "https://deb.debian.org/debian/pool/main/g/gloo/$DEB"
    "http://deb.debian.org/debian/pool/main/g/gloo/$DEB"
    "https://snapshot.debian.org/archive/debian/20230601T000000Z/pool/main/g/gloo/$DEB"
)
say() { printf '[setup-gloo-headers] %s\n' "$*" >&2; }

cache=${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}
target="$cache/gloo-headers-20220518"

verify() {
    [ -f "$1/gloo/algorithm.h" ] && [ -f "$1/gloo/rendezvous/store.h" ] \
        && [ -f "$1/gloo/transport/device.h" ] && [ -f "$1/gloo/config.h" ]
}

if [ -n "${RESNEXT_GLOO_INCLUDE:-}" ]; then
    verify "$RESNEXT_GLOO_INCLUDE" || {
        say "error: RESNEXT_GLOO_INCLUDE=$RESNEXT_GLOO_INCLUDE has no gloo/algorithm.h, gloo/config.h, ..."
        exit 1
    }
    say "using RESNEXT_GLOO_INCLUDE=$RESNEXT_GLOO_INCLUDE (set by you; nothing to install)"
    echo "export RESNEXT_GLOO_INCLUDE=$RESNEXT_GLOO_INCLUDE"
    exit 0
fi

if verify "$target/include"; then
    say "gloo headers found in $target (cached)"
else
    rm -rf "$target"
    partial="$target.partial"
    rm -rf "$partial"
    mkdir -p "$partial"
    say "downloading $DEB (49 kB) for gloo's headers..."
    ok=""
    for url in "${URLS[@]}"; do
        if curl -fsSL --retry 2 --max-time 60 -o "$partial/$DEB" "$url"; then
            if echo "$SHA256  $partial/$DEB" | sha256sum -c --status; then
                ok=1
                break
            fi
            say "warning: $url: SHA-256 mismatch, trying the next source"
        else
            say "warning: could not download $url, trying the next source"
        fi
    done
    if [ -z "$ok" ]; then
        say "error: could not download $DEB with SHA-256 $SHA256."
        say "       Get gloo's headers another way (apt-get download libgloo-dev; dpkg-deb -x) and set"
        say "       RESNEXT_GLOO_INCLUDE to the folder holding gloo/ (usr/include)."
        exit 1
    fi
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$partial/$DEB" "$partial/deb"
    else
        (cd "$partial" && ar x "$DEB" && mkdir deb && tar -xf data.tar.* -C deb)
    fi
    mv "$partial/deb/usr/include" "$partial/include"
    mkdir -p "$partial/share"
    cp "$partial/deb/usr/share/doc/libgloo-dev/copyright" "$partial/share/copyright" 2>/dev/null || true
    rm -rf "$partial/deb" "$partial/$DEB" "$partial"/data.tar.* "$partial"/control.tar.* "$partial/debian-binary"
    verify "$partial/include" || { say "error: $DEB did not contain gloo's headers"; exit 1; }
    mv "$partial" "$target"
    say "gloo headers installed in $target"
fi
echo "export RESNEXT_GLOO_INCLUDE=$target/include"
