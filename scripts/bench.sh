#!/usr/bin/env bash
# Benchmarks sluice: overhead against Envoy with no limiter and with Envoy's native
# local_ratelimit, latency at a fixed rate, accuracy of every strategy (local and Redis), and
# memory per client identity. A full run writes bench/results.{json,md,png}, a partial one
# target/bench-partial/; see scripts/bench.py --help.
#
#   ./scripts/bench.sh            # full run, ~30 minutes on 2 cores
#   ./scripts/bench.sh --quick    # one repetition, shorter runs (~5 minutes)
#
# Installs what is missing (wrk from Debian, oha from crates.io, matplotlib from PyPI), builds
# sluice.wasm, sluice-gateway and the two benchmark helpers (an empty Wasm filter and a native
# run of the filter's core), then measures. Everything listens on and targets 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
MATPLOTLIB_VERSION=3.11.2

say() { printf '[bench.sh] %s\n' "$*" >&2; }

SLUICE_SETUP_BENCH=1 ./scripts/setup.sh
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
python3 -c "import matplotlib, numpy" 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check "matplotlib==${MATPLOTLIB_VERSION}"
if ! oha --version 2>/dev/null | grep -q "${OHA_VERSION}"; then
  say "installing oha ${OHA_VERSION} from crates.io (open-loop load generator; one-time build)"
  cargo install --quiet --locked "oha@${OHA_VERSION}"
fi

TGT="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$TGT"
say "building sluice.wasm, sluice-gateway, the Redis module and the benchmark helpers (target dir $TGT)"
cargo build --quiet --release --target wasm32-wasip1
cargo build --quiet --release -p sluice-gateway || say "sluice-gateway did not build: Redis figures will be skipped"
cargo build --quiet --release -p sluice-redis-module || say "sluice's Redis module did not build: its row will be skipped"
cargo build --quiet --release --target wasm32-wasip1 --manifest-path scripts/bench/noop-filter/Cargo.toml \
  --target-dir "$TGT/bench-noop"
cargo build --quiet --release --manifest-path scripts/bench/corebench/Cargo.toml --target-dir "$TGT/bench-corebench"

say "machine load before measuring: $(uptime)"
exec python3 scripts/bench.py "$@"
