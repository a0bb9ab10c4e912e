#!/usr/bin/env python3
"""sluice benchmark: overhead, accuracy and memory, side by side with Envoy's native limiter.

Sections (all by default; pick with --sections):
  profile     native run of the filter's core: time, allocations, host calls per request
  throughput  req/s and p50/p90/p99 of configurations (a)-(g) plus diagnostics, wrk, interleaved
  latency     latency at a fixed rate of 50% of (a)'s throughput, oha open loop
  accuracy    overshoot / undershoot of every strategy, local and Redis backends
  memory      RSS, allocated bytes and slots after 10^3 .. 10^6 distinct identities
  gateway     req/s through one sluice-gateway alone (wrk, one sluice decision per POST /pipeline)
  distributed the routed distributed path: Envoy alone, sluice local, sluice redis (HTTP/1.1 and
              h2c to the gateway, within and over the limit, deny cache on and off): whole-system
              CPU per request split over Envoy, gateway and Redis, and added latency at 30% load
  hostcalls   (not in the default set) µs per proxy-wasm host call of each kind in this Envoy,
              and of holding a request and carrying it on, without and with an HTTP callout

A full run (all sections, not --quick, no --configs) writes bench/results.json, results.md and
results.png and refreshes the README's benchmark block; any other run writes them to
target/bench-partial/, so it never replaces the full results the README links to. Run through
scripts/bench.sh, which installs and builds what this needs. Every load targets 127.0.0.1 and is bounded in time.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))

from common import ROOT, git_head, loadavg, log, machine, median, sha256, target_dir, tool_versions  # noqa: E402
import accuracy  # noqa: E402
import distributed  # noqa: E402
import envoyctl  # noqa: E402
import gateway  # noqa: E402
import hostcalls  # noqa: E402
import loadgen  # noqa: E402
import memory  # noqa: E402
import redisenv  # noqa: E402
import report as rep  # noqa: E402
import throughput  # noqa: E402

SECTIONS = ["profile", "throughput", "latency", "accuracy", "memory", "gateway", "distributed"]
OPTIONAL = ["hostcalls"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition, shorter runs, smaller memory steps (~4 min)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    ap.add_argument("--configs", default="", help="throughput configurations to run (default all), e.g. a,b,c")
    ap.add_argument("--dist-configs", default="",
                    help="distributed configurations to run (default all), e.g. A,L,R1,R2")
    ap.add_argument("--reps", type=int, help="repetitions per configuration (default 5, quick 1)")
    ap.add_argument("--seconds", type=int, help="length of one throughput run (default 5, quick 3)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections for throughput (default 32)")
    ap.add_argument("--max-others", type=float, default=0.25,
                    help="repeat a run if other processes used more cores than this during it (default 0.25)")
    ap.add_argument("--out", default=None,
                    help="output directory (default bench/ for a full run; target/bench-partial/ for any other, "
                         "so a partial run never replaces the full results the README links to)")
    ap.add_argument("--no-readme", action="store_true", help="do not refresh the README block")
    ap.add_argument("--stack-on-envoy-core", action="store_true",
                    help="pin sluice-gateway and Redis to the Envoy under test's core instead of the load "
                         "generator's (a diagnostic of where the Redis path's latency comes from)")
    ap.add_argument("--keep", help="copy the accuracy runs' access logs to this directory")
    return ap.parse_args()


def frozen(path, workdir, name):
    """A private copy of a build output, so a rebuild by someone else mid-run changes nothing."""
    if not os.path.exists(path):
        return None
    dst = os.path.join(workdir, name)
    shutil.copy2(path, dst)
    return dst


def main():
    args = parse_args()
    quick = args.quick
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS) - set(OPTIONAL)
    if unknown:
        sys.exit(f"unknown sections: {', '.join(sorted(unknown))}")
    reps = args.reps or (1 if quick else 5)
    seconds = args.seconds or (3 if quick else 5)
    cpus = sorted(os.sched_getaffinity(0))
    envoy_cpus, load_cpus = ([cpus[0]], [cpus[1]]) if len(cpus) >= 2 else (None, None)
    t_start = time.time()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "scripts/bench.sh " + " ".join(sys.argv[1:]),
        "commit": git_head(), "machine": machine(), "tools": tool_versions(), "load_before": loadavg(),
        "settings": {"quick": quick, "max_others_cores": args.max_others,
                     "envoy": f"1.40.0, --concurrency 1 pinned to cpu {envoy_cpus} for throughput/latency/memory, "
                              "--concurrency 2 unpinned for accuracy",
                     "load": f"wrk -t1 / oha pinned to cpu {load_cpus}"},
    }
    log(f"load average before: {report['load_before']}")
    tgt = target_dir()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as work:
        wasm = frozen(os.path.join(tgt, "wasm32-wasip1/release/sluice.wasm"), work, "sluice.wasm")
        noop = frozen(os.path.join(tgt, "bench-noop/wasm32-wasip1/release/sluice_bench_noop.wasm"), work, "noop.wasm")
        corebench = os.path.join(tgt, "bench-corebench/release/sluice-corebench")
        if not wasm:
            sys.exit(f"{tgt}/wasm32-wasip1/release/sluice.wasm is missing: run scripts/bench.sh")
        report["wasm_sha256"] = sha256(wasm)

        # Redis stack (for (f) and Redis accuracy) and whether this build's backend: redis works.
        stack, redis_reason = None, None
        if {"throughput", "accuracy", "gateway", "distributed"} & set(sections):
            try:
                stack = redisenv.RedisStack(work, cpus=envoy_cpus if args.stack_on_envoy_core else load_cpus)
                ok, redis_reason = redisenv.probe(
                    lambda plugin: envoyctl.Envoy("probe", envoyctl.bootstrap(
                        [envoyctl.wasm_filter(wasm, plugin)],
                        clusters=(envoyctl.gateway_cluster(redisenv.CLUSTER, stack.port),)), work), stack)
                if not ok:
                    stack.stop()
                    stack = None
            except RuntimeError as e:
                redis_reason = str(e).splitlines()[0]
                stack = None
            log(f"redis backend: {'available' if stack else 'not measured: ' + redis_reason}")
            report["redis_backend"] = "measured" if stack else f"not measured: {redis_reason}"

        try:
            if "profile" in sections:
                report["profile"] = run_profile(corebench, work)
            if "throughput" in sections or "latency" in sections:
                run_throughput(report, args, sections, reps, seconds, quick, wasm, noop, work, envoy_cpus, load_cpus,
                               stack, redis_reason)
            if "accuracy" in sections:
                run_accuracy(report, quick, wasm, work, stack, redis_reason, args.keep)
            if "memory" in sections:
                run_memory(report, quick, wasm, work, envoy_cpus, load_cpus, corebench)
            if "gateway" in sections:
                if stack:
                    # wrk on the core Envoy had; the gateway and Redis stay on theirs.
                    report["gateway"] = gateway.run(stack, reps, seconds, 64, envoy_cpus)
                else:
                    report["gateway"] = {"not_measured": redis_reason or "Redis stack unavailable"}
            if "distributed" in sections:
                if stack:
                    report["distributed"] = distributed.run(wasm, work, stack, reps, seconds, args.connections,
                                                            envoy_cpus, load_cpus, args.max_others, quick,
                                                            [k for k in args.dist_configs.split(",") if k], noop)
                else:
                    report["distributed"] = {"not_measured": redis_reason or "Redis stack unavailable"}
            if "hostcalls" in sections and noop:
                report["hostcalls"] = hostcalls.run(noop, work, reps, seconds, args.connections, envoy_cpus, load_cpus,
                                                    args.max_others)
        finally:
            if stack:
                stack.stop()

    report["load_after"] = loadavg()
    report["elapsed_s"] = round(time.time() - t_start, 1)
    report["targets"] = rep.targets(report)
    write(report, args, sections, quick)


def run_profile(corebench, work):
    if not os.path.exists(corebench):
        return {"not_measured": f"{corebench} missing"}
    plugins = throughput.plugin_configs()
    headers = {h.split(":")[0]: h.split(": ")[1] for h in throughput.HEADERS}
    spec = {k: {"config": plugins[k], "headers": headers, "path": "/bench/x", "requests": 200_000}
            for k in ("c", "d", "e", "x", "y")}
    spec["memory"] = {"config": memory.plugin(100_000), "distinct_header": "x-client", "requests": 100_000,
                      "path": "/mem", "headers": {}}
    path = os.path.join(work, "corebench.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    out = subprocess.run([corebench, path], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"not_measured": out.stderr[-500:]}
    core = json.loads(out.stdout)
    log("profile: " + ", ".join(f"({k}) {v.get('ns_per_request', 0):.0f} ns {v.get('allocations_per_request', 0):.0f} "
                                f"allocs {v.get('host_calls_total', 0):.1f} host calls" for k, v in core.items()))
    return {"core": core}


def run_throughput(report, args, sections, reps, seconds, quick, wasm, noop, work, envoy_cpus, load_cpus, stack,
                   redis_reason):
    keys = [k for k in throughput.CONFIGS if not args.configs or k in args.configs.split(",")]
    if "throughput" not in sections:
        keys = [k for k in keys if k in ("a", "b", "c", "w")]
    probes = [k for k in keys if k == "w" or k in throughput.PROBE_CALLS]
    if not noop:
        keys = [k for k in keys if k not in probes]
    envoys, skipped = throughput.start_envoys(keys, wasm, noop, work, envoy_cpus, stack)
    if not noop:
        skipped.update({k: "the empty filter is not built" for k in probes})
    if "f" in keys and "f" not in envoys and stack is None:
        skipped["f"] = redis_reason or "Redis stack unavailable"
    try:
        if "throughput" in sections:
            rows = throughput.throughput(envoys, reps, seconds, args.connections, load_cpus, args.max_others,
                                         extra_pids=stack.pids if stack else ())
            report["throughput"] = {"rows": rows, "skipped": skipped, "reps": reps, "seconds": seconds,
                                    "connections": args.connections}
            report.setdefault("profile", {})["breakdown"] = rep.breakdown(rows)
        if "latency" in sections:
            if not loadgen.oha_available():
                report["fixed_rate"] = {"skipped": "oha is not installed (scripts/bench.sh installs it)"}
                return
            base = report.get("throughput", {}).get("rows", {}).get("a", {}).get("rps")
            if base is None:  # latency alone: measure (a) quickly for the rate
                base = median(throughput.loadgen.wrk(envoys["a"].url(), seconds, args.connections, cpus=load_cpus,
                                                     headers=throughput.HEADERS)["rps"] for _ in range(reps))
            rate = int(base * 0.5)
            fseconds = 5 if quick else 10
            conns = 64
            rows = throughput.fixed_rate(envoys, ["a", "b", "c", "w"], rate, reps, fseconds, conns, load_cpus,
                                         args.max_others)
            report["fixed_rate"] = {"rows": rows, "rate": rate, "reps": reps, "seconds": fseconds, "connections": conns}
    finally:
        for e in envoys.values():
            e.stop()


def run_accuracy(report, quick, wasm, work, stack, redis_reason, keep=None):
    limit, period_s, windows, connections = 500, 1, (2 if quick else 4), 16
    acc = {"settings": {"limit": limit, "period_s": period_s, "windows": windows, "connections": connections}}
    acc["local"] = accuracy.run_backend("local", wasm, work, limit, period_s, windows, connections, keep=keep)
    if stack:
        acc["redis"] = accuracy.run_backend("redis", wasm, work, limit, period_s, windows, connections, redis_stack=stack,
                                            keep=keep)
    else:
        acc["redis"] = {"not_measured": redis_reason or "Redis stack unavailable"}
    report["accuracy"] = acc


def run_memory(report, quick, wasm, work, envoy_cpus, load_cpus, corebench):
    # A cap of a quarter of the 10^5 step: the table is full from there on, so the plateau is
    # measured from 10^5 to 10^6 identities as the target says.
    cap, steps = (2_500, [1_000, 10_000, 30_000, 100_000]) if quick else (25_000, [1_000, 100_000, 300_000, 1_000_000])
    points = memory.run(wasm, work, cap, steps, envoy_cpus, load_cpus)
    kv = report.get("profile", {}).get("core", {}).get("memory", {}).get("shared_bytes_per_key")
    report["memory"] = memory.summarize(points, cap, round(kv, 1) if kv else None)


def write(report, args, sections, quick):
    full = not quick and set(sections) == set(SECTIONS) and not args.configs
    out = args.out or (os.path.join(ROOT, "bench") if full else os.path.join(target_dir(), "bench-partial"))
    os.makedirs(out, exist_ok=True)
    chart_name = "results.png"
    has_chart = rep.chart(report, os.path.join(out, chart_name))
    md = rep.markdown(report, chart_name if has_chart else "")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"results written to {out}")
    if full and not args.no_readme and os.path.abspath(out) == os.path.join(ROOT, "bench"):
        if rep.update_readme(os.path.join(ROOT, "README.md"), report, "bench/results.md", "bench/results.png"):
            log("README benchmark block refreshed")


if __name__ == "__main__":
    main()
