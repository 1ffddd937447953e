#!/usr/bin/env bash
# Regenerate src/export/onnx_proto.rs, prost's message types for the ONNX protobuf, from the
# vendored proto/onnx.proto (ONNX 1.23.2, Apache-2.0, from the onnx wheel on PyPI), with the
# generator in tools/onnx-proto-gen (prost-build + protox: pure Rust, no protoc binary). The
# generated file is committed, so building the crate needs neither this script nor a build step.
# To update the schema: `pip download onnx==VERSION --no-deps`, unzip onnx/onnx.proto into proto/,
# run this script, then `cargo test --test onnx`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --manifest-path tools/onnx-proto-gen/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-target/onnx-proto-gen}"
rustfmt --edition 2021 src/export/onnx_proto.rs
echo "regenerated src/export/onnx_proto.rs"
