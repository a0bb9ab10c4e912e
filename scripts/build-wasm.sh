#!/usr/bin/env bash
# Builds the filter's two artifacts:
#   target/wasm32-wasip1/release/sluice.wasm                 stock Envoy / Istio (Redis over HTTP callouts)
#   target/wasm32-wasip1/release/sluice-redis-callout.wasm   Higress (Redis callouts, feature redis-callout)
# The feature build uses its own target dir so it never overwrites sluice.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-wasip1
cargo build --release --target wasm32-wasip1 --features redis-callout --target-dir target/redis-callout
cp target/redis-callout/wasm32-wasip1/release/sluice.wasm target/wasm32-wasip1/release/sluice-redis-callout.wasm
ls -l target/wasm32-wasip1/release/sluice.wasm target/wasm32-wasip1/release/sluice-redis-callout.wasm
