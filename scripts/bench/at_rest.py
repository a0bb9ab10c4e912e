"""Where a Redis rule's latency goes when nothing else is happening: one request at a time
through the routed Envoy (the distributed section's placement: Envoy pinned to one core; the
client, the upstream, sluice-gateway and Redis on the other), for a local rule (L) and a Redis
rule over HTTP/1.1 (R1), h2c (R2) and h2c to a gateway on sluice's Redis module (RM). Envoy's
access log splits each request: from its first byte to the upstream request's start (the time
the filter holds it: the local decision, or the whole Redis round trip), the upstream's part,
and the total; the client's own round trip is timed too. Then each hop of the Redis path alone,
from Envoy's core (distributed.round_trips): the part of the hold that is the gateway and Redis,
the rest being Envoy's callout and the filter. (P) is Envoy's callout without sluice: the probe
filter (scripts/bench/noop-filter) making one callout per request to the upstream Envoy, which
answers at once; its hold is the floor of any filter that asks another process.

    python3 scripts/bench/at_rest.py [--requests 3000] [--wasm target/wasm32-wasip1/release/sluice.wasm]

Needs the release sluice.wasm (scripts/build-wasm.sh), sluice-gateway and, for (RM), sluice's
Redis module (cargo build --release -p sluice-gateway -p sluice-redis-module). Sequential
requests, not oha: at a low rate oha's own scheduling added about 200 µs to each request's
latency here, the same for every row but larger than what is measured."""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import pinned, target_dir  # noqa: E402
import ab  # noqa: E402
import distributed  # noqa: E402
from envoyctl import Envoy, bootstrap, gateway_cluster, routed, wasm_filter  # noqa: E402
import redisenv  # noqa: E402

# Per request, µs: first byte in → upstream request starts, upstream request starts → its
# response ends, first byte in → last byte out.
SPLIT = ("%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)% %COMMON_DURATION(US_TX_BEG:US_RX_END:us)% "
         "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %RESPONSE_CODE%\n")
ROUNDS = 3
# Requests per configuration before the measured ones: pools connect, the gateway loads its
# scripts. Envoy logs them too; they are skipped.
WARM_UP = 100
REQUEST = b"GET /bench/x HTTP/1.1\r\nHost: bench\r\n\r\n"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(int(len(xs) * p), len(xs) - 1)] if xs else None


def access_log(path, n):
    """The split of each logged request; waits for Envoy's periodic flush to write all `n`."""
    rows = []
    for _ in range(50):
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        if len(rows) >= n:
            break
        time.sleep(0.2)
    return [tuple(int(x) for x in r[:3]) for r in rows if len(r) == 4 and r[3] == "200"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="per configuration, in three interleaved rounds")
    ap.add_argument("--wasm", default=os.path.join(target_dir(), "wasm32-wasip1", "release", "sluice.wasm"))
    ap.add_argument("--noop", default=ab.NOOP, help="the probe filter (scripts/bench/noop-filter), for (P)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    envoy_cpus, load_cpus = ([cpus[0]], [cpus[1]]) if len(cpus) >= 2 else (None, None)
    work = tempfile.mkdtemp(prefix="sluice-at-rest-")
    stack = redisenv.RedisStack(work, cpus=load_cpus)
    upstream = Envoy("upstream", bootstrap([]), work, concurrency=1, cpus=load_cpus)
    envoys, gateways = {}, {}
    try:
        configs = [("L", None, None), ("R1", distributed.H1, None), ("R2", distributed.H2, None)]
        if stack.module:
            configs.append(("RM", distributed.H2, "module"))
        if os.path.exists(args.noop):
            configs.append(("P", None, None))
        for k, transport, gw in configs:
            plugin, clusters = (distributed.CONFIGS[k][1] if k in distributed.CONFIGS else None), []
            wasm = args.wasm
            if k == "P":
                # The probe filter's one callout per request to the upstream, no sluice at all.
                wasm, plugin = args.noop, distributed.PROBE_CALLOUT
                clusters = [distributed.probe_cluster(upstream.port)]
            if transport:
                port = stack.add_gateway(gw, distributed.GATEWAYS[gw]) if gw else stack.port
                gateways[k] = (port, None)
                plugin = distributed._plugin(plugin)
                clusters = [gateway_cluster(redisenv.CLUSTER, port, h2=transport == distributed.H2)]
            log = os.path.join(work, f"{k}.log")
            boot = bootstrap([wasm_filter(os.path.abspath(wasm), plugin)], access_log=log, clusters=clusters,
                             access_format=SPLIT)
            envoys[k] = (Envoy(f"rest-{k}", routed(boot, upstream.port), work, concurrency=1, cpus=envoy_cpus), log)
        client = {k: [] for k in envoys}
        with pinned(load_cpus):
            for k, (e, _) in envoys.items():
                distributed.sequential(e.port, REQUEST, WARM_UP)
            for _ in range(ROUNDS):
                for k, (e, _) in envoys.items():
                    times, reply = distributed.sequential(e.port, REQUEST, max(args.requests // ROUNDS, 1))
                    if not reply.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"({k}): {reply[:120]!r}")
                    client[k] += times
        upstream_get = ("upstream Envoy, one GET (what (P) calls out to)", upstream.port, REQUEST, b"HTTP/1.1 200")
        hops = distributed.round_trips(stack, gateways, 2000, envoy_cpus, more=[upstream_get])
        print(f"{'config':6} {'client p50':>10} {'p90':>6} | {'hold p50':>8} {'p90':>6} {'added':>6} | "
              f"{'upstream p50':>12} | {'in Envoy p50':>12}   (µs; hold: first byte in → upstream request)")
        base = None
        for k, (e, log) in envoys.items():
            split = access_log(log, WARM_UP + len(client[k]))[WARM_UP:]
            hold = [s[0] for s in split]
            base = pct(hold, 0.5) if base is None else base
            print(f"({k}){'':<{4 - len(k)}} {pct(client[k], 0.5) * 1e6:10.0f} {pct(client[k], 0.9) * 1e6:6.0f} | "
                  f"{pct(hold, 0.5):8} {pct(hold, 0.9):6} {pct(hold, 0.5) - base:6} | {pct([s[1] for s in split], 0.5):12} | "
                  f"{pct([s[2] for s in split], 0.5):12}")
        print(f"\nEach hop alone, from Envoy's core ({hops['n']} sequential round trips):")
        for name, r in hops["rows"].items():
            print(f"  {name}: p50 {r['p50_us']:.0f} µs, p99 {r['p99_us']:.0f} µs")
    finally:
        for e, _ in envoys.values():
            e.stop()
        upstream.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
