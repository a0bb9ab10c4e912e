"""Where Envoy's CPU goes per request, for two builds of sluice.wasm beside the empty filter (w):
`perf record` on the pinned Envoy during a wrk run of each configuration, then the share of the
samples in V8's compiled Wasm code (the guest's own work) against the Envoy binary (its Wasm
machinery, host calls and HTTP work) and the kernel. Prints µs of Envoy CPU per request and
the guest's part of it, per repetition, interleaved.

    python3 scripts/bench/guest_share.py A.wasm B.wasm --configs c,d,e,x --reps 2

Needs `perf` (linux-perf) and the empty filter built (scripts/bench.sh builds it). The figures
are the README's, "The fast path": the guest's compiled code is a few percent of a request."""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from envoyctl import Envoy, bootstrap  # noqa: E402
import loadgen  # noqa: E402
import throughput  # noqa: E402
from ab import paired_filters, pinning  # noqa: E402


def shares(data):
    """Percent of the samples in each binary (perf's `dso`)."""
    out = subprocess.run(["perf", "report", "-i", data, "--sort", "dso", "--stdio"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*)$", line)
        if m:
            found[m.group(2).strip()] = float(m.group(1))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--configs", default="c,e,x")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    envoy_cpus, load_cpus = pinning()
    confs = paired_filters(args.a, args.b, [k for k in args.configs.split(",") if k])
    work = tempfile.mkdtemp(prefix="sluice-guest-share-")
    envoys = {}
    try:
        for name, filters in confs.items():
            envoys[name] = Envoy(name, bootstrap(filters), work, concurrency=1, cpus=envoy_cpus)
        for e in envoys.values():  # warm-up: V8 tiers up
            loadgen.wrk(e.url(), 2, 32, cpus=load_cpus, headers=throughput.HEADERS, watch=[e.pid])
        print(f"{'rep':>3} {'config':8} {'µs/req':>7} {'guest µs':>8} {'guest %':>7} {'envoy %':>7} {'kernel %':>8}")
        for rep in range(args.reps):
            for name, e in envoys.items():
                data = os.path.join(work, f"{name}-{rep}.data")
                run = {}
                load = threading.Thread(target=lambda: run.update(r=loadgen.wrk(
                    e.url(), args.seconds, 32, cpus=load_cpus, headers=throughput.HEADERS, watch=[e.pid])))
                load.start()
                # Sampled inside the load run (which outlasts it by two seconds).
                subprocess.run(["perf", "record", "-q", "-F", "1999", "-p", str(e.pid), "-o", data, "--", "sleep",
                                str(max(1, args.seconds - 2))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                load.join()
                r, s = run["r"], shares(data)
                us = 1e6 * r["target_cpu_s"] / r["requests"]
                guest = sum(v for k, v in s.items() if "JIT" in k or "unknown" in k or "anon" in k)
                print(f"{rep + 1:>3} {name:8} {us:7.2f} {us * guest / 100:8.2f} {guest:7.1f} {s.get('envoy', 0):7.1f} "
                      f"{s.get('[kernel.kallsyms]', 0):8.1f}", flush=True)
    finally:
        for e in envoys.values():
            e.stop()


if __name__ == "__main__":
    main()
