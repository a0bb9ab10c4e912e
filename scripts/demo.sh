#!/usr/bin/env bash
# sluice in one command: installs what is missing, builds sluice.wasm, starts Envoy on
# loopback with envoy/demo.yaml (local counters), sends bursts and shows which requests were
# admitted and which limited, with their rate limit headers, then stops Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "== building sluice.wasm"
cargo build --release --target wasm32-wasip1 2>&1 | tail -n 1
ls -l target/wasm32-wasip1/release/sluice.wasm

run_dir=$(mktemp -d)
log="$run_dir/envoy.log"
envoy -c envoy/demo.yaml --concurrency 2 --disable-hot-restart --log-path "$log" >/dev/null 2>&1 &
envoy_pid=$!
trap 'kill "$envoy_pid" 2>/dev/null; wait "$envoy_pid" 2>/dev/null; rm -rf "$run_dir"' EXIT

for _ in $(seq 1 200); do
  curl -fs --max-time 2 http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  kill -0 "$envoy_pid" 2>/dev/null || { echo "envoy exited:"; cat "$log"; exit 1; }
  sleep 0.1
done
curl -fs --max-time 2 http://127.0.0.1:9901/ready >/dev/null || { echo "envoy did not become ready:"; cat "$log"; exit 1; }

show() { # method path [curl args...]
  local method=$1 path=$2; shift 2
  curl -s --max-time 10 -o "$run_dir/body" -D "$run_dir/headers" -X "$method" "$@" "http://127.0.0.1:10000$path"
  local status
  status=$(head -n 1 "$run_dir/headers" | tr -d '\r')
  printf '  %-6s %-14s -> %s' "$method" "$path" "${status#HTTP/1.1 }"
  { grep -iE '^(ratelimit|ratelimit-policy|retry-after):' "$run_dir/headers" || true; } | tr -d '\r' | tr '\n' ' ' | sed 's/^/  | /'
  echo
}

echo
echo "== rule 'api': 5 per 10 s per client IP (sliding_window_counter), 8 requests"
for _ in $(seq 1 8); do show GET /api/hello; done
echo
echo "   the problem+json body of the last (limited) response:"
echo "   $(cat "$run_dir/body")"
echo
echo "== rule 'per-key': 3 per 10 s per x-api-key (token_bucket); alice and bob counted apart"
for who in alice alice alice alice bob; do printf '  [%s]' "$who"; show GET /keyed/x -H "x-api-key: $who"; done
echo
echo "== rule 'login': 2 per minute (gcra), POST only; x-internal: yes is exempt"
for _ in 1 2 3; do show POST /login; done
printf '  [internal, exempt: no rate limit fields]'; show POST /login -H "x-internal: yes"
echo
echo "== stats (admin :9901)"
curl -s --max-time 10 "http://127.0.0.1:9901/stats?filter=sluice" | sed 's/^/  /'
