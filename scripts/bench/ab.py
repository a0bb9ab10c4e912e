"""Same-run A/B of two builds of sluice.wasm on the benchmark's own configurations: each chosen
configuration runs once with build A and once with build B, beside the empty Rust filter (w),
every Envoy pinned to one core and measured interleaved, so a noisy neighbour hurts both sides
alike. Prints µs of Envoy CPU per request, the ratio to (w) and the spread of each row.

    python3 scripts/bench/ab.py A.wasm B.wasm --configs c,e,x --reps 5
    python3 scripts/bench/ab.py A.wasm B.wasm --configs c,d --workers 2   # two workers, one core
    python3 scripts/bench/ab.py A.wasm B.wasm --distributed --reps 5
    python3 scripts/bench/ab.py A.wasm B.wasm --distributed --dist-configs O --reps 7

With --distributed it compares the two builds on the routed Redis path instead ((R2): a redis rule
never reached, h2c to sluice-gateway, one redis-server), beside routed Envoy alone (A): CPU per
request of the whole system and its split over Envoy, gateway and Redis, req/s, latency and
requests per callout; `--dist-configs O` compares them on a client over a Redis rule's limit
(deny cache on) beside the local 429 (LD) instead. Both builds must carry the gateway's
decision script (the gateway runs only its own release's), or their rows measure on_error.

(build the empty filter first: scripts/bench.sh does, or `cargo build --release --target
wasm32-wasip1 --manifest-path scripts/bench/noop-filter/Cargo.toml --target-dir target/bench-noop`).
This is how every kept or dropped idea in the README's fast-path list was measured."""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402
from envoyctl import Envoy, bootstrap, wasm_filter  # noqa: E402
import distributed  # noqa: E402
import redisenv  # noqa: E402
import throughput  # noqa: E402

NOOP = os.path.join(ROOT, "target", "bench-noop", "wasm32-wasip1", "release", "sluice_bench_noop.wasm")


def pinning():
    """The proxy's core and the load generator's: the first two this process may run on (none
    pinned with fewer)."""
    cpus = sorted(os.sched_getaffinity(0))
    return ([cpus[0]], [cpus[1]]) if len(cpus) >= 2 else (None, None)


def paired_filters(a, b, keys, noop=NOOP):
    """Each Envoy's filters by row name: the empty filter (w), then every configuration of
    `keys` (scripts/bench/throughput.py's) with build A and with build B."""
    plugins = throughput.plugin_configs()
    unknown = [k for k in keys if k not in plugins]
    if unknown:
        sys.exit(f"unknown configs: {', '.join(unknown)} (known: {', '.join(plugins)})")
    confs = {"w": [wasm_filter(noop, {}, vm_id="noop")]}
    for k in keys:
        confs[f"{k}-A"] = [wasm_filter(os.path.abspath(a), plugins[k], vm_id="a")]
        confs[f"{k}-B"] = [wasm_filter(os.path.abspath(b), plugins[k], vm_id="b")]
    return confs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="build A (the baseline), a sluice.wasm")
    ap.add_argument("b", help="build B (the change)")
    ap.add_argument("--configs", default="c,e,x", help="from scripts/bench/throughput.py's plugin_configs (c,d,e,x,y)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1,
                    help="Envoy's worker threads (--concurrency), all on the proxy's one core: workers sharing slots")
    ap.add_argument("--noop", default=NOOP, help="the empty filter's .wasm, the floor (w)")
    ap.add_argument("--max-others", type=float, default=0.25, help="repeat a run when others used more cores")
    ap.add_argument("--distributed", action="store_true", help="compare on the routed Redis path (R2), not --configs")
    ap.add_argument("--dist-configs", default="R2",
                    help="with --distributed: the rows both builds run (from scripts/bench/distributed.py, e.g. R2 or O); "
                         "routed Envoy alone (A) and the local 429 (LD, when O is among them) run beside them once")
    args = ap.parse_args()
    envoy_cpus, load_cpus = pinning()
    if args.distributed:
        distributed_ab(args, envoy_cpus, load_cpus)
        return
    keys = [k for k in args.configs.split(",") if k]
    confs = paired_filters(args.a, args.b, keys, args.noop)
    work = tempfile.mkdtemp(prefix="sluice-ab-")
    envoys = {}
    try:
        for name, filters in confs.items():
            envoys[name] = Envoy(name, bootstrap(filters), work, concurrency=args.workers, cpus=envoy_cpus)
        rows = throughput.throughput(envoys, args.reps, args.seconds, args.connections, load_cpus, args.max_others)
    finally:
        for e in envoys.values():
            e.stop()
    w = rows["w"]["rps_per_cpu"]
    print(f"{'config':8} {'µs/req':>8} {'vs (w)':>7} {'spread':>7}")
    for name, r in rows.items():
        spread = r["rps_per_cpu_spread"]
        print(f"{name:8} {1e6 / r['rps_per_cpu']:8.2f} {r['rps_per_cpu'] / w:7.3f} "
              + (f"{spread:7.0%}" if spread is not None else f"{'–':>7}"))
    for k in keys:
        a, b = rows[f"{k}-A"]["rps_per_cpu"], rows[f"{k}-B"]["rps_per_cpu"]
        print(f"({k}) B / A in µs per request: {a / b:.3f}")


def distributed_ab(args, envoy_cpus, load_cpus):
    work = tempfile.mkdtemp(prefix="sluice-ab-")
    stack = redisenv.RedisStack(work, cpus=load_cpus)
    started = []
    try:
        configs = [k for k in args.dist_configs.split(",") if k]
        unknown = [k for k in configs if k not in distributed.CONFIGS]
        if unknown:
            sys.exit(f"unknown distributed configs: {', '.join(unknown)} (known: {', '.join(distributed.CONFIGS)})")
        beside = ["A"] + (["LD"] if "O" in configs else [])
        for build, keys in ((args.a, beside + configs), (args.b, configs)):
            upstream, envoys, skipped, gateways = distributed.start(os.path.abspath(build), work, envoy_cpus, load_cpus,
                                                                    stack, keys, args.noop)
            started.append((upstream, envoys, gateways))
            if skipped:
                sys.exit(f"{build}: not started: {skipped}")
        (_, env_a, gw_a), (_, env_b, gw_b) = started
        envoys = {k: env_a[k] for k in beside}
        gateways = {}
        for k in configs:
            envoys[f"{k}-A"], envoys[f"{k}-B"] = env_a[k], env_b[k]
            for side, gws in (("A", gw_a), ("B", gw_b)):
                if k in gws:
                    gateways[f"{k}-{side}"] = gws[k]
        rows = distributed.full_load(envoys, [u for u, _, _ in started], stack, gateways, args.reps, args.seconds, args.connections, load_cpus,
                                     args.max_others)
    finally:
        for upstream, envoys, _ in started:
            for e in envoys.values():
                e.stop()
            upstream.stop()
        stack.stop()
    a = rows["A"]["total_us"]
    print(f"{'config':6} {'µs/req':>8} {'× (A)':>6} {'Envoy':>7} {'gateway':>8} {'Redis':>6} {'req/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'req/callout':>11} {'spread':>7}")
    for name, r in rows.items():
        def num(m, fmt):
            width = int(fmt.split(".")[0]) if fmt[0].isdigit() else 0
            return format(r[m], fmt) if r.get(m) is not None else "–".rjust(width)
        print(f"{name:6} {r['total_us']:8.1f} {r['total_us'] / a:6.2f} {r['envoy_us']:7.1f} {num('gateway_us', '8.1f')} "
              f"{num('redis_us', '6.1f')} {r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{num('requests_per_callout', '11.1f')} {num('total_us_spread', '7.0%')}")
        calls = r.get("decisions_per_request")
        # A deny cache's rows call the gateway for a handful of requests only, as they should.
        if calls is not None and calls < 0.9 and distributed.config_of(name)[1] != "over":
            print(f"  ({name}: only {calls:.2f} gateway calls per request: the gateway did not decide; does this "
                  "build carry the gateway's decision script?)")
    for k in configs:
        print(f"({k}) B / A, whole-system CPU per request: {rows[f'{k}-B']['total_us'] / rows[f'{k}-A']['total_us']:.3f}")
    if "LD" in rows:
        ld = rows["LD"]["total_us"]
        for k in ("O-A", "O-B"):
            print(f"({k}) / (LD), whole-system CPU per request: {rows[k]['total_us'] / ld:.3f}")


if __name__ == "__main__":
    main()
