#!/usr/bin/env bash
# The guest's work (wasmtime fuel, about one unit per wasm instruction) to encode a gathered
# callout's decision calls and parse their replies, in each of the filter's wire forms: the JSON
# `/pipeline` body sent to sluice-gateway and the RESP of Higress' Redis callout. Fuel counts
# the same on any machine, so one run is the figure.
#
#   scripts/bench/wire_cost.sh [K]      # K calls per round trip (default 6, as a busy worker gathers)
set -euo pipefail
cd "$(dirname "$0")/../.."
k=${1:-6}
n=1000
tgt=${CARGO_TARGET_DIR:-target}
cargo build --quiet --release --target wasm32-wasip1 --manifest-path scripts/bench/corebench/Cargo.toml \
  --target-dir "$tgt/bench-corebench"
cargo build --quiet --release -p sluice-harness --bin sluice-wasm-runner --target-dir "$tgt"
runner=$tgt/release/sluice-wasm-runner
wasm=$tgt/bench-corebench/wasm32-wasip1/release/sluice-corebench.wasm
fuel() {
  SLUICE_RUNNER_FUEL=1 "$runner" "$wasm" --wire "$1" "$2" "$k" 2>&1 >/dev/null | sed -n 's/^sluice-wasm-runner: guest fuel //p'
}
for form in upstash resp; do
  base=$(fuel "$form" 0)
  busy=$(fuel "$form" "$n")
  line=$(SLUICE_RUNNER_FUEL=1 "$runner" "$wasm" --wire "$form" 1 "$k" 2>/dev/null)
  echo "$form: $(( (busy - base) / n )) fuel per round trip of $k calls, $(( (busy - base) / n / k )) per call (${line#*; })"
done
