#!/usr/bin/env bash
# End-to-end tests against the deployed Redis topology: Envoy with sluice (envoy/redis.yaml),
# sluice-gateway, a 6-node Redis Cluster and a stand-in upstream (envoy/upstream.yaml), on the
# fixed loopback ports those files name (listener :10000, admin :9901, gateway :7379, upstream
# :8080 and :9911, Redis :7000-7005 and :17000-17005).
#
#   scripts/integration.sh            # native: starts that topology from local binaries, runs
#                                     # tests/e2e/tests/deployed.rs against it, then every
#                                     # end-to-end test (each starts its own processes)
#   scripts/integration.sh --deployed-only  # native, deployed.rs only (what scripts/test.sh runs)
#   scripts/integration.sh --compose  # the same topology from examples/compose/docker-compose.yaml,
#                                     # once with Compose v2 and once with v1, deployed.rs against
#                                     # each (scripts/test.sh runs it after the native one)
#
# --compose installs the engine and both Compose versions if missing (scripts/setup.sh with
# SLUICE_SETUP_COMPOSE=1), starts dockerd if no engine answers (and stops it at the end; its
# log is .run/dockerd.log), builds the local images (scripts/images.sh: no registry is reached,
# and they are cached), and leaves no container, network or volume behind, pass or fail.
# SLUICE_COMPOSE_VERSIONS="v2" (or "v1") runs one version only.
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
COMPOSE_V2=(docker compose -f examples/compose/docker-compose.yaml)
COMPOSE_V1=(docker-compose -f examples/compose/docker-compose.yaml)
# The project name examples/compose/.env gives both versions.
PROJECT=sluice
ENGINE_LOG=.run/dockerd.log

say() { printf '[integration] %s\n' "$*" >&2; }

# The ports are fixed by the shipped files; a busy one would make the topology half start.
check_ports() {
  local p
  for p in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      say "port $p on 127.0.0.1 is in use; stop what listens there first"; exit 1
    fi
  done
}

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
  wait_for 60 curl -fs --max-time 2 "$ADMIN/ready" || { say "envoy (envoy/redis.yaml) never became ready"; return 1; }
  wait_for 60 curl -fs --max-time 2 http://127.0.0.1:9911/ready || { say "upstream (envoy/upstream.yaml) never became ready"; return 1; }
  wait_for 60 curl -fs --max-time 2 http://127.0.0.1:7379/healthz || { say "sluice-gateway never reported Redis healthy"; return 1; }
}

# The gateway runs calls through sluice's Redis module (native topology).
module_calls() { curl -fs --max-time 2 http://127.0.0.1:7379/healthz | grep -q '"calls":"MODULE"'; }

run_deployed_tests() {
  say "tests/e2e/tests/deployed.rs against $TARGET"
  SLUICE_E2E_TARGET=$TARGET SLUICE_E2E_ADMIN=$ADMIN cargo test -p sluice-e2e --test deployed
}

# ---- compose mode --------------------------------------------------------------------------
engine_pid=
compose=()         # the Compose command whose topology is up, for the cleanup
before=            # containers, networks and volumes that existed before this run

engine_objects() {
  { docker ps -aq --no-trunc; docker network ls -q --no-trunc; docker volume ls -q; } | sort
}

# No bridge and no iptables: every service uses the host's network (network_mode: host), so
# the engine needs neither, and the host's firewall is left as it is. The storage driver is the
# engine's choice (overlay2 where the kernel and file system allow, else vfs).
start_engine() {
  if docker info >/dev/null 2>&1; then
    say "using the running Docker engine ($(docker info -f '{{.ServerVersion}}, storage {{.Driver}}'))"
    return
  fi
  command -v dockerd >/dev/null || { say "no Docker engine answers and there is no dockerd to start"; exit 1; }
  mkdir -p "$(dirname "$ENGINE_LOG")"
  say "no Docker engine answers: starting dockerd (log: $ENGINE_LOG)"
  dockerd --iptables=false --bridge=none >"$ENGINE_LOG" 2>&1 &
  engine_pid=$!
  local tries=300
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$engine_pid" 2>/dev/null || [ "$tries" -eq 0 ]; then
      tail -n 30 "$ENGINE_LOG" >&2
      say "the Docker engine could not be started: dockerd $(kill -0 "$engine_pid" 2>/dev/null && echo 'did not answer within 60 s' || echo exited) (log above, all of it in $ENGINE_LOG; DOCKER_HOST=${DOCKER_HOST:-unset})"
      exit 1
    fi
    sleep 0.2
    tries=$((tries - 1))
  done
  say "dockerd up ($(docker info -f '{{.ServerVersion}}, storage {{.Driver}}'))"
}

stop_engine() {
  [ -n "$engine_pid" ] || return 0
  kill "$engine_pid" 2>/dev/null || true
  local tries=150
  while kill -0 "$engine_pid" 2>/dev/null && [ "$tries" -gt 0 ]; do sleep 0.2; tries=$((tries - 1)); done
  if kill -0 "$engine_pid" 2>/dev/null; then
    say "dockerd (pid $engine_pid) did not stop within 30 s; killing it"
    kill -9 "$engine_pid" 2>/dev/null || true
  fi
  engine_pid=
}

compose_down() {
  [ ${#compose[@]} -gt 0 ] || return 0
  "${compose[@]}" down -v --remove-orphans --timeout 10 >&2
  compose=()
}

# Whatever this run made, gone: an object the engine lists now and did not before is a leak.
check_no_leftovers() {
  local left
  left=$(comm -13 <(printf '%s\n' "$before") <(engine_objects))
  if [ -n "$left" ]; then
    say "left behind by the run (containers, networks or volumes): $left"; return 1
  fi
}

compose_cleanup() {
  local rc=$?
  set +e
  if [ ${#compose[@]} -gt 0 ]; then
    if [ "$rc" != 0 ]; then
      say "logs of the failed run"
      "${compose[@]}" ps -a >&2
      "${compose[@]}" logs --no-color --tail 40 >&2
    fi
    compose_down
  fi
  if [ -n "$before" ] && ! check_no_leftovers; then rc=1; fi
  stop_engine
  exit "$rc"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# One Compose version: up (local images, no build), the first request, deployed.rs, down -v.
compose_run() {
  case "$1" in
    v2) compose=("${COMPOSE_V2[@]}") ;;
    v1) compose=("${COMPOSE_V1[@]}") ;;
    *) say "SLUICE_COMPOSE_VERSIONS: unknown version $1 (v2 or v1)"; exit 2 ;;
  esac
  say "$1: ${compose[*]} up -d ($("${compose[@]}" version --short))"
  local start code
  start=$(now)
  "${compose[@]}" up -d --no-build
  say "$1: up returned after $(since "$start") s"
  # The compose file makes `up` wait for Envoy's health: the very first request, with no retry,
  # must be served.
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "$TARGET/api/payments/1" -H 'x-account: a1' || true)
  say "$1: first request POST /api/payments/1 -> $code, $(since "$start") s after up started"
  [ "$code" = 200 ] || { say "$1: the first request after up was not served"; return 1; }
  ready
  run_deployed_tests
  start=$(now)
  compose_down
  say "$1: down -v took $(since "$start") s"
}

if [ "$mode" = compose ]; then
  t=$(now)
  SLUICE_SETUP_COMPOSE=1 ./scripts/setup.sh
  say "setup (engine, Compose v1 and v2, debootstrap): $(since "$t") s"
  say "building sluice.wasm (mounted into Envoy) and sluice-gateway (copied into its image)"
  cargo build --release --target wasm32-wasip1
  cargo build --release -p sluice-gateway
  trap compose_cleanup EXIT
  t=$(now)
  start_engine
  say "engine: $(since "$t") s"
  before=$(engine_objects)
  if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]; then
    say "containers of compose project $PROJECT exist already (an earlier run or by hand): down -v first"
    compose=("${COMPOSE_V2[@]}")
    docker compose version >/dev/null 2>&1 || compose=("${COMPOSE_V1[@]}")
    compose_down
    before=$(engine_objects)
  fi
  check_ports
  t=$(now)
  images=$(./scripts/images.sh)
  say "images: $(since "$t") s"
  while IFS='=' read -r name value; do
    case "$name" in SLUICE_*_IMAGE) export "$name=$value" ;; *) say "unexpected line from images.sh: $name"; exit 1 ;; esac
  done <<<"$images"
  for version in ${SLUICE_COMPOSE_VERSIONS:-v2 v1}; do
    compose_run "$version"
  done
  exit 0
fi

check_ports
./scripts/setup.sh
say "building sluice.wasm, sluice-gateway and sluice's Redis module"
cargo build --release --target wasm32-wasip1
cargo build --release -p sluice-gateway
cargo build --release -p sluice-redis-module
# Every node of the topology loads the module, so the gateway (--redis-calls auto) runs calls
# through it. (Only this topology's: the other end-to-end tests start their own Redis.)
module=$PWD/target/release/libsluice_redis.so

run_dir=$(mktemp -d)
pids=()
cleanup() {
  local rc=$? pid log
  # A failed run's logs go with its directory: show their ends first.
  if [ "$rc" != 0 ]; then
    for log in "$run_dir"/*.log; do [ -f "$log" ] && { say "--- $log"; tail -n 30 "$log" >&2; }; done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ./scripts/redis-cluster.sh stop "$run_dir/redis" 7000 >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

say "starting the topology natively (files in $run_dir)"
seeds=$(SLUICE_REDIS_MODULE=$module ./scripts/redis-cluster.sh start "$run_dir/redis" 7000)
SLUICE_GATEWAY_LISTEN=127.0.0.1:7379 SLUICE_GATEWAY_CLUSTER_NODES=$seeds SLUICE_GATEWAY_TOKEN=$TOKEN \
  target/release/sluice-gateway >"$run_dir/gateway.log" 2>&1 &
pids+=($!)
envoy -c envoy/upstream.yaml --disable-hot-restart --log-path "$run_dir/upstream.log" >/dev/null 2>&1 &
pids+=($!)
envoy -c envoy/redis.yaml --concurrency 2 --disable-hot-restart --log-path "$run_dir/envoy.log" >/dev/null 2>&1 &
pids+=($!)
if ! ready || ! wait_for 30 module_calls; then
  say "gateway health: $(curl -s --max-time 2 http://127.0.0.1:7379/healthz)"
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
