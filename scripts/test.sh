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

# Built together with the harness, whose `sluice/testing` the build unifies into the module:
# the clock stays out all the same (it takes `module-clock`, which only the module's own test
# build asks for), and gateway/tests/module.rs checks that this module, the one users load,
# refuses a caller's clock. The test build (with a clock) goes to a profile of its own.
echo "== build: sluice's Redis module, libsluice_redis.so (release; and its test build)"
cargo build --release -p sluice-redis-module -p sluice-harness --lib
cargo build -p sluice-redis-module --features testing --profile redis-module-testing

echo "== format: cargo fmt --all -- --check (rustfmt.toml)"
cargo fmt --all -- --check || { echo "run cargo fmt --all" >&2; exit 1; }

echo "== lints: clippy on the filter (native, fuzzing and both wasm builds), the Redis module, the gateway and the CLI (none may unwrap, expect or panic)"
# setup.sh installs clippy: without it the lints did not run, and the run must not pass.
cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing: run scripts/setup.sh" >&2; exit 1; }
cargo clippy -q -p sluice -- -D warnings
cargo clippy -q -p sluice --features fuzzing -- -D warnings
cargo clippy -q -p sluice --target wasm32-wasip1 -- -D warnings
cargo clippy -q -p sluice --target wasm32-wasip1 --features redis-callout -- -D warnings
# The Redis module runs inside redis-server: a panic there would abort Redis itself.
cargo clippy -q -p sluice-redis-module -p sluice-gateway -p sluice-cli -- -D warnings

echo "== tests: workspace (native)"
cargo test --workspace --no-fail-fast

echo "== tests: pure core compiled to wasm32-wasip1"
cargo build -p sluice-harness --bin sluice-wasm-runner
cargo test --target wasm32-wasip1 -p sluice --lib

echo "== the shipped Redis topology on its fixed ports: scripts/integration.sh --deployed-only"
./scripts/integration.sh --deployed-only

# Starts a Docker engine if none runs, and fails if none can be started.
echo "== the same topology in containers, Compose v2 then v1: scripts/integration.sh --compose"
./scripts/integration.sh --compose

echo "== the README's first command: ./scripts/demo.sh"
demo_log=$(mktemp)
./scripts/demo.sh >"$demo_log" 2>&1 || { cat "$demo_log"; exit 1; }
# The demo's bursts: 12 admitted and 5 limited answers, each limited one with its Retry-After.
admitted=$(grep -c -- '-> 200 OK' "$demo_log" || true)
limited=$(grep -c -- '-> 429 Too Many Requests  | retry-after: ' "$demo_log" || true)
if [ "$admitted" != 12 ] || [ "$limited" != 5 ] || ! grep -q '"violated_rules":\["api"\]' "$demo_log"; then
  cat "$demo_log"
  echo "demo: expected 12 admitted and 5 limited answers and the problem body, got $admitted and $limited" >&2
  exit 1
fi
echo "demo: $admitted admitted, $limited limited, as the README shows"
rm -f "$demo_log"

# Bounded: about 1 minute once built, 2.5 minutes cold (cargo-fuzz install and build included).
echo "== fuzz: every target, a short bounded pass (scripts/fuzz.sh SECONDS for a longer one)"
./scripts/fuzz.sh 5
