#!/usr/bin/env bash
# Starts or stops a 6-node Redis Cluster (3 primaries + 3 replicas) natively on loopback, for
# tests and demos where no Docker engine exists.
#
#   scripts/redis-cluster.sh start  DIR BASEPORT   # nodes on BASEPORT..BASEPORT+5
#   scripts/redis-cluster.sh stop   DIR BASEPORT
#   scripts/redis-cluster.sh status DIR BASEPORT
#   scripts/redis-cluster.sh restart DIR BASEPORT PORT   # one node again (after a kill, a test's fault)
#
# Each node keeps its files in DIR/PORT (nodes.conf, log, pid); `start` wipes them first, so a
# new cluster is created every time. Cluster-bus ports are PORT+10000 (BASEPORT <= 55529).
# `start` returns when every node reports cluster_state:ok and prints the seed list
# (127.0.0.1:P1,...,127.0.0.1:P6) on stdout; `stop` waits until every node has exited.
# `restart` starts node PORT again with the files `start` gave it: its nodes.conf keeps its
# identity, so it rejoins the cluster (a primary that was failed over comes back as a replica of
# the node that took its slots) without losing any; it returns when the node answers PING and
# sees cluster_state:ok. REDIS_SERVER and REDIS_CLI override the binaries. With
# SLUICE_REDIS_MODULE (the path of libsluice_redis.so) every node loads sluice's Redis module.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR BASEPORT, or $0 restart DIR BASEPORT PORT" >&2; exit 2; }
[ $# -eq 3 ] || { [ $# -eq 4 ] && [ "$1" = restart ]; } || usage
action=$1 dir=$2 base=$3 node=${4:-}
[[ $base =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 55529 ] \
  || { echo "BASEPORT must be a number in 1024..55529" >&2; exit 2; }

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
ports=()
for i in 0 1 2 3 4 5; do ports+=($((base + i))); done

say() { printf '[redis-cluster] %s\n' "$*" >&2; }

# wait_for SECONDS COMMAND...: retries COMMAND every 0.1 s until it succeeds or time is up.
wait_for() {
  local tries=$(($1 * 10)); shift
  while [ "$tries" -gt 0 ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
    tries=$((tries - 1))
  done
  return 1
}

pong() { [ "$("$REDIS_CLI" -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = PONG ]; }
cluster_ok() {
  local info
  info=$("$REDIS_CLI" -h 127.0.0.1 -p "$1" CLUSTER INFO 2>/dev/null) || return 1
  grep -q '^cluster_state:ok' <<<"$info" && grep -q '^cluster_known_nodes:6' <<<"$info"
}
# A node answers PING, or has given up (its log says why: a port taken, say); either ends the wait.
up_or_aborted() { pong "$1" || grep -q 'aborting' "$dir/$1/redis.log" 2>/dev/null; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_node PORT: one node, daemonized, its files in DIR/PORT (the cluster config kept there).
start_node() {
  "$REDIS_SERVER" --port "$1" --bind 127.0.0.1 --protected-mode yes \
    --cluster-enabled yes --cluster-config-file "$dir/$1/nodes.conf" \
    --cluster-node-timeout 2000 --dir "$dir/$1" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/$1/redis.pid" --logfile "$dir/$1/redis.log" \
    ${SLUICE_REDIS_MODULE:+--loadmodule "$SLUICE_REDIS_MODULE"}
}

stop_nodes() {
  local p pidfile
  for p in "${ports[@]}"; do
    pidfile="$dir/$p/redis.pid"
    if running "$pidfile"; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for p in "${ports[@]}"; do
    pidfile="$dir/$p/redis.pid"
    if ! wait_for 10 bash -c "! kill -0 \$(cat '$pidfile' 2>/dev/null) 2>/dev/null"; then
      say "node $p did not exit on SIGTERM; killing it"
      kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case $action in
  start)
    for p in "${ports[@]}"; do
      if pong "$p"; then say "port $p already answers PING: stop that server first"; exit 1; fi
    done
    mkdir -p "$dir"
    for p in "${ports[@]}"; do
      rm -rf "${dir:?}/$p"
      mkdir -p "$dir/$p"
      start_node "$p"
    done
    for p in "${ports[@]}"; do
      if ! wait_for 15 up_or_aborted "$p" || ! pong "$p"; then
        why=$(grep -m1 -E 'Could not create|Failed|aborting' "$dir/$p/redis.log" 2>/dev/null || true)
        say "node $p did not start${why:+: $why}; see $dir/$p/redis.log"; stop_nodes; exit 1
      fi
    done
    addrs=()
    for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
    if ! timeout 60 "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$dir/create.log" 2>&1; then
      say "cluster create failed:"; cat "$dir/create.log" >&2; stop_nodes; exit 1
    fi
    for p in "${ports[@]}"; do
      wait_for 30 cluster_ok "$p" || { say "node $p never reached cluster_state:ok"; stop_nodes; exit 1; }
    done
    say "cluster up on ports ${ports[0]}..${ports[5]} (files in $dir)"
    (IFS=,; echo "${addrs[*]}")
    ;;
  stop)
    stop_nodes
    say "cluster on ports ${ports[0]}..${ports[5]} stopped"
    ;;
  restart)
    [[ " ${ports[*]} " == *" $node "* ]] || { echo "PORT must be one of ${ports[*]}" >&2; exit 2; }
    [ -f "$dir/$node/nodes.conf" ] || { say "no node was started on $node in $dir"; exit 1; }
    if running "$dir/$node/redis.pid"; then say "node $node is still running"; exit 1; fi
    rm -f "$dir/$node/redis.pid"
    start_node "$node"
    if ! wait_for 15 up_or_aborted "$node" || ! pong "$node"; then
      say "node $node did not start again; see $dir/$node/redis.log"; exit 1
    fi
    wait_for 30 cluster_ok "$node" || { say "node $node never saw cluster_state:ok after its restart"; exit 1; }
    say "node $node is back"
    ;;
  status)
    up=0
    for p in "${ports[@]}"; do
      if cluster_ok "$p"; then state=ok; up=$((up + 1));
      elif pong "$p"; then state="up, cluster not ok";
      else state=down; fi
      printf '127.0.0.1:%s %s\n' "$p" "$state"
    done
    [ "$up" -eq 6 ]
    ;;
  *) usage ;;
esac
