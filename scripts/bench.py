#!/usr/bin/env python3
"""sluice benchmark: throughput and latency of Envoy configurations, same run, interleaved.

Each configuration is an Envoy 1.40 process (--concurrency 1, pinned to one core) answering a
direct_response route, so the proxy is the bottleneck; wrk runs pinned to another core. Every
configuration is measured `--reps` times, round-robin, and the median is reported with ratios
to (a) Envoy without a limiter and (b) Envoy's native local_ratelimit.
"""
import argparse, copy, json, os, platform, re, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/sluice.wasm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_bootstrap():
    with open(os.path.join(ROOT, "envoy/demo.yaml")) as f:
        return yaml.safe_load(f)


def hcm(boot):
    return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def sluice_filter(boot, plugin_config):
    wasm = copy.deepcopy(hcm(boot)["http_filters"][0])
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = WASM
    wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin_config)
    return wasm


def native_filter(max_tokens, fill_s):
    pct = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native",
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": f"{fill_s}s"},
            "filter_enabled": dict(pct, runtime_key="rl_enabled"),
            "filter_enforced": dict(pct, runtime_key="rl_enforced"),
        },
    }


def configurations():
    """name -> (description, list of http filters before the router)"""
    boot = base_bootstrap()
    never = {"rules": [{"name": "api", "limit": "1000000000/s", "strategy": "sliding_window_counter"}]}
    ten = {"rules": [
        {"name": f"r{i}", "match": {"path": f"/{'**' if i % 2 else 'bench/**'}"}, "limit": "1000000000/s",
         "strategy": ["sliding_window_counter", "token_bucket", "gcra", "fixed_window"][i % 4],
         "identifier": {"header": f"x-key-{i % 3}"}}
        for i in range(10)]}
    always = {"rules": [{"name": "api", "limit": "1/hour", "strategy": "fixed_window", "identifier": "global"}]}
    return {
        "a": ("Envoy, no limiter", []),
        "b": ("Envoy local_ratelimit, never reached", [native_filter(1_000_000_000, 1)]),
        "c": ("sluice local, 1 rule, never reached", [sluice_filter(boot, never)]),
        "d": ("sluice local, 10 rules, header identities", [sluice_filter(boot, ten)]),
        "e": ("sluice local, every request limited (429)", [sluice_filter(boot, always)]),
        "g": ("Envoy local_ratelimit, every request limited", [native_filter(1, 3600)]),
    }


class Envoy:
    def __init__(self, name, filters, cpu, workdir):
        boot = base_bootstrap()
        self.port, self.admin = free_port(), free_port()
        boot["admin"]["address"]["socket_address"]["port_value"] = self.admin
        boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = self.port
        router = hcm(boot)["http_filters"][-1]
        hcm(boot)["http_filters"] = filters + [router]
        path = os.path.join(workdir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(boot, f)
        self.log = os.path.join(workdir, f"{name}.log")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), "envoy", "-c", path, "--concurrency", "1", "--disable-hot-restart",
             "--log-level", "warn", "--log-path", self.log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy {name} exited: {open(self.log).read()}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"envoy {name} not ready")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            m = re.search(r"VmRSS:\s+(\d+)", f.read())
        return int(m.group(1)) if m else 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port, cpu, seconds, connections, path="/bench/x"):
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "x-key-0: k0", "-H", "x-key-1: k1", "-H", "x-key-2: k2", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[f"p{p}_ms"] = float(v) * UNITS[u]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": rps, **lat, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "requests": int(total.group(1)) if total else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="measurements per configuration (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="length of one wrk run (default 5)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated configuration letters (default: all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"), help="output directory")
    args = ap.parse_args()
    cpus = os.sched_getaffinity(0)
    envoy_cpu, load_cpu = (0, 1) if len(cpus) >= 2 else (0, 0)
    confs = configurations()
    if args.only:
        confs = {k: v for k, v in confs.items() if k in args.only.split(",")}
    results = {k: [] for k in confs}
    with tempfile.TemporaryDirectory() as work:
        envoys = {k: Envoy(k, filters, envoy_cpu, work) for k, (_, filters) in confs.items()}
        try:
            for k, e in envoys.items():  # warm-up: V8 tiers, connection pools
                wrk(e.port, load_cpu, 1, args.connections)
            for rep in range(args.reps):
                for k, e in envoys.items():
                    r = wrk(e.port, load_cpu, args.seconds, args.connections)
                    results[k].append(r)
                    print(f"rep {rep + 1} {k}: {r['rps']:.0f} req/s p50 {r.get('p50_ms', 0):.3f} ms "
                          f"p99 {r.get('p99_ms', 0):.3f} ms non-2xx {r['non_2xx']}", file=sys.stderr)
            rss = {k: e.rss_kib() for k, e in envoys.items()}
        finally:
            for e in envoys.values():
                e.stop()
    med = {k: {m: statistics.median(r[m] for r in runs if m in r) for m in runs[0]} for k, runs in results.items() if runs}
    base_a = med.get("a", {}).get("rps")
    base_b = med.get("b", {}).get("rps")
    rows = []
    for k, (desc, _) in confs.items():
        m = med[k]
        rows.append({"config": k, "description": desc, **m, "rss_kib": rss[k],
                     "vs_a": m["rps"] / base_a if base_a else None, "vs_b": m["rps"] / base_b if base_b else None,
                     "runs": results[k]})
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
               "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")}
    report = {"machine": machine, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "scripts/bench.sh " + " ".join(sys.argv[1:]),
              "settings": {"reps": args.reps, "seconds": args.seconds, "connections": args.connections,
                           "envoy": "1.40.0 --concurrency 1, pinned to cpu %d" % envoy_cpu,
                           "load": "wrk -t1 pinned to cpu %d" % load_cpu},
              "throughput": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = [f"Measured {report['when']} on {machine['model']} ({machine['cpus']} cpus), `{report['command']}`; "
             f"median of {args.reps} interleaved {args.seconds}s runs, {args.connections} connections.", "",
             "| config | req/s | p50 ms | p90 ms | p99 ms | vs (a) | vs (b) | RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"
        lines.append(f"| ({r['config']}) {r['description']} | {r['rps']:.0f} | {fmt(r.get('p50_ms'))} | "
                     f"{fmt(r.get('p90_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r['vs_a'])} | {fmt(r['vs_b'])} | "
                     f"{r['rss_kib'] / 1024:.1f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
