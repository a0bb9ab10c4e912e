#!/usr/bin/env bash
# sluice-gateway under slow clients: its resident memory (RSS) and a normal request's latency
# (p50/p99/max of POST /pipeline with one EVALSHA) with no slow connection, then with 2,000 held
# open, in one run. Prints one table; a few minutes on 2 cores, most of it the release build.
#
#   ./scripts/bench-gateway-slow.sh                 # 2,000 slow connections, 20,000 requests per phase
#   SLOW=5000 REQUESTS=20000 ./scripts/bench-gateway-slow.sh
#
# Starts a throwaway redis-server and a release sluice-gateway on free 127.0.0.1 ports; the
# measuring client is gateway/examples/slow_clients.rs (how it times, and what the slow
# connections send, is described there). The gateway runs with its default limits except the
# header and body deadlines, set to 10 minutes so that all slow connections stay open for the
# whole run (with the defaults, 5 s and 10 s, the gateway would close them as they went slow).
set -euo pipefail
cd "$(dirname "$0")/.."

SLOW=${SLOW:-2000}
REQUESTS=${REQUESTS:-20000}
CONNECTS=${CONNECTS:-1000}
TOKEN=bench-slow-token

say() { printf '[bench-gateway-slow] %s\n' "$*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
say "building sluice-gateway and the measuring client (release, target dir $CARGO_TARGET_DIR)"
cargo build --quiet --release -p sluice-gateway --bin sluice-gateway --example slow_clients
BIN="$CARGO_TARGET_DIR/release/sluice-gateway"
CLIENT="$CARGO_TARGET_DIR/release/examples/slow_clients"

# The client holds SLOW sockets; the gateway raises its own limit.
want=$((SLOW + 1024))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || { say "need $want open files (ulimit -n), have $(ulimit -n)"; exit 1; }
fi

# Two ports outside the ephemeral range, as the benchmark picks them (scripts/bench/common.py):
# the run opens thousands of client connections, any of which could take a port from it.
read -r REDIS_PORT PORT < <(python3 -c 'import sys; sys.path.insert(0, "scripts/bench"); import common; print(common.free_port(), common.free_port())')
RUN_DIR=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$RUN_DIR" \
  --loglevel warning >"$RUN_DIR/redis.log" 2>&1 &
pids+=($!)
RUST_LOG=warn SLUICE_GATEWAY_TOKEN=$TOKEN "$BIN" --listen "127.0.0.1:$PORT" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --header-read-timeout-ms 600000 --body-read-timeout-ms 600000 --shutdown-grace-ms 1000 \
  >"$RUN_DIR/gateway.log" 2>&1 &
GW_PID=$!
pids+=("$GW_PID")

for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { say "gateway not healthy:"; cat "$RUN_DIR/gateway.log" >&2; exit 1; }

say "machine load before measuring: $(uptime)"
"$CLIENT" --addr "127.0.0.1:$PORT" --token "$TOKEN" --pid "$GW_PID" \
  --slow "$SLOW" --requests "$REQUESTS" --connects "$CONNECTS"
if [ -s "$RUN_DIR/gateway.log" ]; then
  say "gateway log:"
  cat "$RUN_DIR/gateway.log" >&2
fi
