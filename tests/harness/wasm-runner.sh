#!/usr/bin/env bash
# cargo's runner for wasm32-wasip1 (set in .cargo/config.toml): runs a WASI test binary with
# sluice-wasm-runner from the same target directory, building the runner first if it is missing.
set -euo pipefail
wasm=$1
target_dir=${wasm%/wasm32-wasip1/*}
runner=$target_dir/debug/sluice-wasm-runner
if [ ! -x "$runner" ]; then
  root=$(cd "$(dirname "$0")/../.." && pwd)
  echo "[wasm-runner] building sluice-wasm-runner into $target_dir" >&2
  cargo build --quiet -p sluice-harness --bin sluice-wasm-runner \
    --manifest-path "$root/Cargo.toml" --target-dir "$target_dir" >&2
fi
exec "$runner" "$@"
