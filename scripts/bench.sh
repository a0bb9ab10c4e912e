#!/usr/bin/env bash
# Benchmarks sluice against Envoy with no limiter and Envoy's native local_ratelimit, in one
# run, interleaved. Writes bench/results.json and bench/results.md (see scripts/bench.py --help).
# Figures are ratios measured in the same run: this machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_SETUP_BENCH=1 ./scripts/setup.sh
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
cargo build --release --target wasm32-wasip1 2>&1 | tail -n 1
exec python3 scripts/bench.py "$@"
