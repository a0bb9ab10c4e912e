#!/usr/bin/env bash
# Runs every test of sluice: unit and property tests of the pure core (natively and compiled to
# wasm), the wasmtime harness on the real .wasm, the gateway against real Redis and Redis
# Cluster, and real Envoy end-to-end tests. Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== build: sluice.wasm and sluice-redis-callout.wasm (release, wasm32-wasip1)"
./scripts/build-wasm.sh

echo "== build: sluice-gateway (release; the end-to-end tests run this binary)"
cargo build --release -p sluice-gateway

echo "== tests: workspace (native)"
cargo test --workspace --no-fail-fast

if [ -f tests/harness/src/bin/sluice-wasm-runner.rs ]; then
  echo "== tests: pure core compiled to wasm32-wasip1"
  cargo build -p sluice-harness --bin sluice-wasm-runner
  cargo test --target wasm32-wasip1 -p sluice --lib
fi
