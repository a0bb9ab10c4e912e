"""Same-run A/B of two builds of sluice.wasm on the benchmark's own configurations: each chosen
configuration runs once with build A and once with build B, beside the empty Rust filter (w),
every Envoy pinned to one core and measured interleaved, so a noisy neighbour hurts both sides
alike. Prints µs of Envoy CPU per request, the ratio to (w) and the spread of each row.

    python3 scripts/bench/ab.py A.wasm B.wasm --configs c,e,x --reps 5

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
import throughput  # noqa: E402

NOOP = os.path.join(ROOT, "target", "bench-noop", "wasm32-wasip1", "release", "sluice_bench_noop.wasm")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="build A (the baseline), a sluice.wasm")
    ap.add_argument("b", help="build B (the change)")
    ap.add_argument("--configs", default="c,e,x", help="from scripts/bench/throughput.py's plugin_configs (c,d,e,x,y)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--noop", default=NOOP, help="the empty filter's .wasm, the floor (w)")
    ap.add_argument("--max-others", type=float, default=0.25, help="repeat a run when others used more cores")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    envoy_cpus, load_cpus = ([cpus[0]], [cpus[1]]) if len(cpus) >= 2 else (None, None)
    plugins = throughput.plugin_configs()
    keys = [k for k in args.configs.split(",") if k]
    unknown = [k for k in keys if k not in plugins]
    if unknown:
        sys.exit(f"unknown configs: {', '.join(unknown)} (known: {', '.join(plugins)})")
    confs = {"w": [wasm_filter(args.noop, {}, vm_id="noop")]}
    for k in keys:
        confs[f"{k}-A"] = [wasm_filter(os.path.abspath(args.a), plugins[k], vm_id="a")]
        confs[f"{k}-B"] = [wasm_filter(os.path.abspath(args.b), plugins[k], vm_id="b")]
    work = tempfile.mkdtemp(prefix="sluice-ab-")
    envoys = {}
    try:
        for name, filters in confs.items():
            envoys[name] = Envoy(name, bootstrap(filters), work, concurrency=1, cpus=envoy_cpus)
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


if __name__ == "__main__":
    main()
