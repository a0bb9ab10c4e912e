#!/usr/bin/env bash
# End-to-end tests against the deployed Redis topology: Envoy with sluice (envoy/redis.yaml),
# sluice-gateway, a 6-node Redis Cluster and a stand-in upstream (envoy/upstream.yaml), on the
# fixed loopback ports those files name (listener :10000, admin :9901, gateway :7379, upstream
# :8080 and :9911, Redis :7000-7005 and :17000-17005).
#
#   scripts/integration.sh            # native: starts that topology from local binaries (no
#                                     # Docker needed: the mode for CI), runs
#                                     # tests/e2e/tests/deployed.rs against it, then every
#                                     # end-to-end test (each starts its own processes)
#   scripts/integration.sh --deployed-only  # native, deployed.rs only (what scripts/test.sh runs)
#   scripts/integration.sh --compose  # the same topology with docker compose
#                                     # (examples/compose/docker-compose.yaml), when a Docker
#                                     # engine exists, and deployed.rs against it
#
# deployed.rs reads SLUICE_E2E_TARGET / SLUICE_E2E_ADMIN (comma-separated base URLs) to test a
# topology that is already running; without them it starts one itself on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=native
all=1
case "${1:-}" in
  "") ;;
  --compose) mode=compose ;;
  # What scripts/test.sh runs: it has already run every other end-to-end test.
  --deployed-only) all=0 ;;
  *) echo "usage: $0 [--compose | --deployed-only]" >&2; exit 2 ;;
esac

TOKEN=sluice-dev-token   # redis.token of envoy/redis.yaml (cli/tests/compose.rs checks they agree)
TARGET=http://127.0.0.1:10000
ADMIN=http://127.0.0.1:9901
PORTS=(10000 9901 7379 8080 9911 7000 7001 7002 7003 7004 7005 17000 17001 17002 17003 17004 17005)
COMPOSE=(docker compose -f examples/compose/docker-compose.yaml)

say() { printf '[integration] %s\n' "$*" >&2; }

# The ports are fixed by the shipped files; a busy one would make the topology half start.
for p in "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    say "port $p on 127.0.0.1 is in use; stop what listens there first"; exit 1
  fi
done

# wait_for SECONDS COMMAND...: retries COMMAND every 0.2 s until it succeeds or time is up.
wait_for() {
  local tries=$(($1 * 5)); shift
  while [ "$tries" -gt 0 ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
    tries=$((tries - 1))
  done
  return 1
}

ready() {
  wait_for 60 curl -fs "$ADMIN/ready" || { say "envoy (envoy/redis.yaml) never became ready"; return 1; }
  wait_for 60 curl -fs http://127.0.0.1:9911/ready || { say "upstream (envoy/upstream.yaml) never became ready"; return 1; }
  wait_for 60 curl -fs http://127.0.0.1:7379/healthz || { say "sluice-gateway never reported Redis healthy"; return 1; }
}

run_deployed_tests() {
  say "tests/e2e/tests/deployed.rs against $TARGET"
  SLUICE_E2E_TARGET=$TARGET SLUICE_E2E_ADMIN=$ADMIN cargo test -p sluice-e2e --test deployed
}

if [ "$mode" = compose ]; then
  command -v docker >/dev/null || { say "no docker command"; exit 1; }
  docker info >/dev/null 2>&1 || { say "no Docker engine is reachable (docker info fails)"; exit 1; }
  ./scripts/setup.sh
  cargo build --release --target wasm32-wasip1
  trap '"${COMPOSE[@]}" down --remove-orphans >&2 || true' EXIT
  "${COMPOSE[@]}" up -d --build
  ready || { "${COMPOSE[@]}" logs >&2; exit 1; }
  run_deployed_tests
  exit 0
fi

./scripts/setup.sh
say "building sluice.wasm and sluice-gateway"
cargo build --release --target wasm32-wasip1
cargo build --release -p sluice-gateway

run_dir=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ./scripts/redis-cluster.sh stop "$run_dir/redis" 7000 >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

say "starting the topology natively (files in $run_dir)"
seeds=$(./scripts/redis-cluster.sh start "$run_dir/redis" 7000)
SLUICE_GATEWAY_LISTEN=127.0.0.1:7379 SLUICE_GATEWAY_CLUSTER_NODES=$seeds SLUICE_GATEWAY_TOKEN=$TOKEN \
  target/release/sluice-gateway >"$run_dir/gateway.log" 2>&1 &
pids+=($!)
envoy -c envoy/upstream.yaml --disable-hot-restart --log-path "$run_dir/upstream.log" >/dev/null 2>&1 &
pids+=($!)
envoy -c envoy/redis.yaml --concurrency 2 --disable-hot-restart --log-path "$run_dir/envoy.log" >/dev/null 2>&1 &
pids+=($!)
if ! ready; then
  for log in "$run_dir"/*.log; do say "--- $log"; tail -n 30 "$log" >&2; done
  exit 1
fi

run_deployed_tests
cleanup
trap - EXIT

if [ "$all" = 1 ]; then
  say "every end-to-end test (each starts its own processes on free ports)"
  cargo test -p sluice-e2e
fi
