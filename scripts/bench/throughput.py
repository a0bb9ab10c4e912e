"""Sections 1 and 2: throughput and latency of each configuration at full load (wrk, closed
loop), and latency at a fixed rate of half of (a)'s throughput (oha, open loop).

Every configuration is its own Envoy process (--concurrency 1, pinned to one core) answering a
direct_response route; the load generator is pinned to the other core. Runs are interleaved
round-robin, so a noisy neighbour hurts every configuration alike, and a run during which other
processes used more than `max_others` of a core is repeated (at most twice; every run is kept in
the JSON with its CPU accounting)."""
from common import log, median, spread, wait_quiet

# Waiting for a quiet moment before each run: at most this long per run, and this long overall.
QUIET_WAIT_S = 20
QUIET_BUDGET_S = 240
# A run disturbed by more than this many cores of other work is repeated once.
REPEAT_ABOVE = 0.5
_quiet_spent = [0.0]
from envoyctl import Envoy, bootstrap, gateway_cluster, native_filter, wasm_filter
import loadgen
import redisenv

NEVER = "1000000000/s"
HEADERS = ("x-key-0: k0", "x-key-1: k1", "x-key-2: k2")
STRATEGY_CYCLE = ["sliding_window_counter", "token_bucket", "gcra", "fixed_window"]


def plugin_configs():
    """The plugin configurations measured (also fed to the native core benchmark)."""
    one = {"rules": [{"name": "api", "limit": NEVER, "strategy": "sliding_window_counter"}]}
    ten = {"rules": [
        {"name": f"r{i}", "match": {"path": "/**" if i % 2 else "/bench/**"}, "limit": NEVER,
         "strategy": STRATEGY_CYCLE[i % 4], "identifier": {"header": f"x-key-{i % 3}"}}
        for i in range(10)]}
    always = {"rules": [{"name": "api", "limit": "1/hour", "strategy": "fixed_window", "identifier": "global"}]}
    nomatch = {"rules": [{"name": "api", "match": {"path": "/elsewhere/**"}, "limit": NEVER}]}
    noheaders = dict(one, rate_limit_headers="none")
    redis = redisenv.redis_plugin([{"name": "api", "limit": NEVER, "strategy": "sliding_window_counter",
                                    "backend": "redis", "on_error": "allow"}])
    return {"c": one, "d": ten, "e": always, "x": nomatch, "y": noheaders, "f": redis}


# key -> (description, kind). Diagnostic rows isolate where sluice's cost goes.
CONFIGS = {
    "a": ("Envoy, no limiter", "main"),
    "b": ("Envoy local_ratelimit, never reached", "main"),
    "c": ("sluice local, 1 rule, never reached", "main"),
    "d": ("sluice local, 10 rules, header identities", "main"),
    "e": ("sluice local, every request limited (429)", "main"),
    "f": ("sluice redis backend via sluice-gateway, never reached", "main"),
    "g": ("Envoy local_ratelimit, every request limited (429)", "main"),
    "w": ("diagnostic: empty Rust proxy-wasm filter (Wasm floor)", "diagnostic"),
    "x": ("diagnostic: sluice, 1 rule that does not match (no store access)", "diagnostic"),
    "y": ("diagnostic: (c) with rate_limit_headers: none", "diagnostic"),
    "p": ("diagnostic: the probe filter making (c)'s host calls, no decision", "diagnostic"),
    "q": ("diagnostic: the probe filter making (d)'s host calls, no decision", "diagnostic"),
}

# The host calls sluice makes per request for (c) and (d), as the harness counts them
# (tests/harness/tests/costs.rs): made by the probe filter (scripts/bench/noop-filter) with no
# rule, decision or text, they are what any filter doing that work pays Envoy beyond (w). (c):
# the client's address, the clock, one slot written, two RateLimit fields. (d): every header in
# one call, the clock, three slots written (each decided on the worker's copy), both fields.
PROBE_CALLS = {
    "p": {"property": 1, "time": 1, "shared_set": 1, "add_header": 2},
    "q": {"pairs": 1, "time": 1, "shared_set": 3, "add_header": 2},
}


def filters_for(key, wasm, noop_wasm, plugins):
    if key == "a":
        return []
    if key == "b":
        return [native_filter(1_000_000_000, 1)]
    if key == "g":
        return [native_filter(1, 3600)]
    if key == "w":
        return [wasm_filter(noop_wasm, {}, vm_id="noop")]
    if key in PROBE_CALLS:
        return [wasm_filter(noop_wasm, PROBE_CALLS[key], vm_id=f"probe-{key}")]
    return [wasm_filter(wasm, plugins[key])]


def start_envoys(keys, wasm, noop_wasm, workdir, cpus, redis_stack):
    plugins = plugin_configs()
    envoys, skipped = {}, {}
    for k in keys:
        clusters = ()
        if k == "f":
            if redis_stack is None:
                skipped[k] = "Redis stack unavailable"
                continue
            clusters = (gateway_cluster(redisenv.CLUSTER, redis_stack.port),)
        try:
            envoys[k] = Envoy(k, bootstrap(filters_for(k, wasm, noop_wasm, plugins), clusters=clusters),
                              workdir, concurrency=1, cpus=cpus)
        except RuntimeError as e:
            skipped[k] = str(e).splitlines()[0]
            log(f"config ({k}) not started: {skipped[k]}")
    return envoys, skipped


def measure(fn, max_others, what):
    """Waits for a quiet moment (bounded), runs `fn`, and repeats it once if other processes
    still took more than REPEAT_ABOVE cores; returns every run (the last one counts)."""
    runs = []
    for attempt in range(2):
        waited = 0.0
        if _quiet_spent[0] < QUIET_BUDGET_S:
            waited, _ = wait_quiet(max_others, min(QUIET_WAIT_S, QUIET_BUDGET_S - _quiet_spent[0]))
            _quiet_spent[0] += waited
        r = fn()
        r["waited_for_quiet_s"] = waited
        r["attempt"] = attempt + 1
        runs.append(r)
        if r.get("target_cpu_s"):
            # Requests per second of the proxy's own CPU: what it would serve on a core of its own.
            r["rps_per_cpu"] = round(r["requests"] / r["target_cpu_s"], 1) if "requests" in r else None
        if r.get("others_cores", 0) <= max(max_others, REPEAT_ABOVE):
            break
        log(f"{what}: other processes used {r['others_cores']:.2f} cores, repeating")
    return runs


def throughput(envoys, reps, seconds, connections, load_cpus, max_others, extra_pids=()):
    results = {k: [] for k in envoys}
    for k, e in envoys.items():  # warm-up: V8 tiers up, connections and pools fill
        loadgen.wrk(e.url(), 2, connections, cpus=load_cpus, headers=HEADERS, watch=[e.pid])
    for rep in range(reps):
        for k, e in envoys.items():
            pids = [e.pid] + list(extra_pids if k == "f" else ())
            runs = measure(lambda: loadgen.wrk(e.url(), seconds, connections, cpus=load_cpus, headers=HEADERS,
                                               watch=pids), max_others, f"throughput ({k}) rep {rep + 1}")
            for r in runs:
                r["rep"] = rep + 1
            results[k] += runs
            r = runs[-1]
            log(f"rep {rep + 1} ({k}): {r['rps']:.0f} req/s p50 {r.get('p50_ms', 0):.3f} ms p99 "
                f"{r.get('p99_ms', 0):.3f} ms non-2xx {r['non_2xx']} others {r['others_cores']:.2f} cores")
    rows = {}
    for k, runs in results.items():
        kept = [runs_last(runs, rep + 1) for rep in range(reps)]
        rows[k] = {m: median(r.get(m) for r in kept) for m in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms",
                                                                "others_cores", "target_cores", "rps_per_cpu")}
        rows[k]["rps_per_cpu_spread"] = spread(r.get("rps_per_cpu") for r in kept)
        rows[k]["non_2xx_share"] = median(r["non_2xx"] / r["requests"] if r["requests"] else None for r in kept)
        rows[k]["socket_errors"] = sum(r["socket_errors"] for r in kept)
        rows[k]["rss_mib"] = round(envoys[k].rss_kib() / 1024, 1)
        rows[k]["runs"] = runs
    return rows


def runs_last(runs, rep):
    """The run kept for a repetition: its last attempt."""
    return [r for r in runs if r["rep"] == rep][-1]


def fixed_rate(envoys, keys, rate, reps, seconds, connections, load_cpus, max_others):
    results = {k: [] for k in keys if k in envoys}
    for k in results:  # warm-up at the same rate
        loadgen.oha(envoys[k].url(), rate, 2, connections, cpus=load_cpus, headers=HEADERS, watch=[envoys[k].pid])
    for rep in range(reps):
        for k in results:
            e = envoys[k]
            runs = measure(lambda: loadgen.oha(e.url(), rate, seconds, connections, cpus=load_cpus, headers=HEADERS,
                                               watch=[e.pid]), max_others, f"fixed rate ({k}) rep {rep + 1}")
            for r in runs:
                r["rep"] = rep + 1
            results[k] += runs
            r = runs[-1]
            log(f"fixed {rate}/s rep {rep + 1} ({k}): achieved {r['rps']:.0f}/s p50 {r.get('p50_ms', 0) * 1e3:.0f} µs "
                f"p99 {r.get('p99_ms', 0) * 1e3:.0f} µs others {r['others_cores']:.2f} cores")
    rows = {}
    for k, runs in results.items():
        kept = [runs_last(runs, rep + 1) for rep in range(reps)]
        rows[k] = {m: median(r.get(m) for r in kept) for m in ("rps", "p50_ms", "p90_ms", "p99_ms", "p99_9_ms",
                                                                "others_cores")}
        rows[k]["target_rps"] = rate
        rows[k]["runs"] = runs
    base = rows.get("a")
    for k, row in rows.items():
        if base:
            for p in ("p50", "p90", "p99", "p99_9"):
                if row.get(f"{p}_ms") is not None and base.get(f"{p}_ms") is not None:
                    row[f"added_{p}_us"] = round((row[f"{p}_ms"] - base[f"{p}_ms"]) * 1e3, 1)
    return rows
