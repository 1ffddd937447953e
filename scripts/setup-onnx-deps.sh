#!/usr/bin/env bash
# Provision the Python packages that the ONNX export tests (tests/onnx.rs) and
# scripts/onnx/check.py need, beside those of scripts/setup-python-deps.sh (run first: numpy and
# packaging come from it, torch from scripts/setup-libtorch.sh's wheel):
#
# * group `onnx` (required): onnx 1.23.2 (the checker), onnxruntime 1.31.1 (CPUExecutionProvider)
#   and the minimal set they import with: protobuf, typing_extensions, ml_dtypes, flatbuffers.
#   Into ${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}/python-onnx-deps (about 110 MB).
# * group `openvino` (optional): openvino 2026.4.1 and openvino-telemetry, into
#   .../python-openvino (about 150 MB). If its wheel cannot be installed or does not import,
#   this says so and goes on without it; the tests then print a SKIPPED line for OpenVINO.
#
# Each group is installed as setup-python-deps.sh installs its own: pip --no-deps, exact versions,
# into a temporary folder renamed into place once it imports, never into the system Python; a
# stamp file records what it was verified against, so a second run takes a fraction of a second.
# Prints `export PYTHONPATH=...` on its last line (both groups, then setup-python-deps.sh's path).
set -euo pipefail

ONNX_PACKAGES=("onnx==1.23.2" "onnxruntime==1.31.1" "protobuf==6.33.1" "typing_extensions==4.15.0"
    "ml_dtypes==0.5.4" "flatbuffers==25.9.23")
OPENVINO_PACKAGES=("openvino==2026.4.1" "openvino-telemetry==2025.2.0")
say() { printf '[setup-onnx-deps] %s\n' "$*" >&2; }

cache=${RESNEXT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnext}
base=$(bash "$(dirname "$0")/setup-python-deps.sh" | tail -n 1)
base=${base#export PYTHONPATH=}

# group NAME DIR CHECK PACKAGES...: installs PACKAGES into DIR unless a stamped install is there;
# CHECK is Python code that must run with DIR and the base path on PYTHONPATH.
group() {
    local name=$1 target=$2 check=$3
    shift 3
    local stamp_text="$* base=$base"
    if [ -f "$target/.verified" ] && [ "$(cat "$target/.verified")" = "$stamp_text" ]; then
        say "$name found in $target (cached, verified before)"
        return 0
    fi
    if [ -d "$target" ] && PYTHONPATH="$target:$base" python3 -c "$check" 2>/dev/null; then
        printf '%s' "$stamp_text" > "$target/.verified"
        say "$name found in $target (cached)"
        return 0
    fi
    rm -rf "$target" "$target.partial"
    mkdir -p "$cache"
    say "installing $* from PyPI into $target..."
    local start
    start=$(date +%s)
    if ! python3 -m pip install --quiet --no-input --disable-pip-version-check --root-user-action=ignore \
        --no-deps --target "$target.partial" "$@"; then
        say "error: pip could not install the $name group"
        return 1
    fi
    if ! PYTHONPATH="$target.partial:$base" python3 -c "$check"; then
        say "error: the fresh $name install in $target.partial does not import; left there for inspection"
        return 1
    fi
    printf '%s' "$stamp_text" > "$target.partial/.verified"
    mv "$target.partial" "$target"
    say "installed $name in $(( $(date +%s) - start )) s"
}

onnx_dir="$cache/python-onnx-deps"
group onnx "$onnx_dir" "
import onnx, onnxruntime
assert onnx.__version__ == '1.23.2', onnx.__version__
assert onnxruntime.__version__ == '1.31.1', onnxruntime.__version__
assert 'CPUExecutionProvider' in onnxruntime.get_available_providers()
" "${ONNX_PACKAGES[@]}"
path="$onnx_dir"

ov_dir="$cache/python-openvino"
if group openvino "$ov_dir" "
import openvino
assert openvino.__version__.startswith('2026.4.1'), openvino.__version__
" "${OPENVINO_PACKAGES[@]}"; then
    path="$path:$ov_dir"
else
    say "warning: OpenVINO is not available; its checks will be SKIPPED (the onnx group is fine)"
fi
echo "export PYTHONPATH=$path:$base"
