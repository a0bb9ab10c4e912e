"""Section 7: the distributed path as users run it. Every configuration routes to an upstream (a
second Envoy answering direct_response); a Redis rule goes through sluice-gateway to one
redis-server. Reported per configuration: req/s and latency at full load (wrk, closed loop), CPU
per request of the whole system (Envoy under test + gateway + Redis) and its split, Redis calls
per request, and the latency added over the local path at 30% of the routed baseline's rate and
at rest (oha, open loop), with each hop of a Redis decision timed alone at rest (the floor under
that added latency).

Placement: the Envoy under test has one core; wrk, the upstream Envoy, the gateway and Redis
share the other. req/s is therefore what this machine gives, not a limit of the proxy; CPU per
request is what to compare. Runs are interleaved round-robin, so a noisy neighbour hurts every
configuration alike."""
import json
import socket
import subprocess
import time
import urllib.request

from common import LOOPBACK, log, median, pinned, spread
from envoyctl import Envoy, bootstrap, gateway_cluster, routed, wasm_filter
import gateway
import hostcalls
import loadgen
import redisenv
import throughput

NEVER = "1000000000/s"
OVER = "1/s"
# The plugin of (P): the probe filter's callout, not sluice.
PROBE = "probe"
# The probe filter's configuration for (P): one callout per request, to `probe_cluster`.
PROBE_CALLOUT = {"callout": 1}
# How Envoy talks to sluice-gateway: HTTP/1.1 or h2c (HTTP/2 with prior knowledge). SHIPPED is
# what the shipped bootstraps (envoy/redis.yaml, the Istio example) use.
H1, H2 = "h1", "h2"
SHIPPED = H2
LABEL = {H1: "HTTP/1.1", H2: "h2c"}
# Which gateway a configuration calls: None is the stack's default one (its default flags: on
# Redis 7 calls run as FCALL); others are started on the same Redis with these flags, each
# naming how its calls run (`auto`, the gateway's default, picks the module wherever it is loaded).
GATEWAYS = {"evalsha": ["--redis-calls", "evalsha"], "unbatched": ["--batch-calls", "false", "--redis-calls", "fcall"],
            "module": ["--redis-calls", "module"]}

# key -> (description, plugin config or None for no filter, transport to the gateway or None,
# gateway).
CONFIGS = {
    "A": ("Envoy alone, routed", None, None, None),
    "L": ("sluice local, never reached", {"rules": [{"name": "api", "limit": NEVER}]}, None, None),
    "LD": ("sluice local, client over the limit (429)",
           {"rules": [{"name": "api", "limit": OVER, "strategy": "fixed_window", "identifier": "global"}]}, None, None),
    "R1": ("sluice redis, never reached, HTTP/1.1 to the gateway", "never", H1, None),
    "R2": ("sluice redis, never reached, h2c to the gateway", "never", H2, None),
    "RE": (f"sluice redis, never reached, {LABEL[SHIPPED]} to a gateway running EVALSHA, not FCALL", "never", SHIPPED,
           "evalsha"),
    "RU": (f"sluice redis, never reached, {LABEL[SHIPPED]} to a gateway sending each call as its own FCALL, not one "
           "batch per callout", "never", SHIPPED, "unbatched"),
    "RM": (f"sluice redis, never reached, {LABEL[SHIPPED]} to a gateway running sluice's Redis module, not FCALL",
           "never", SHIPPED, "module"),
    # What one wake-up of another process costs Envoy under the same load: its own callout to
    # a process that answers at once, made by the probe filter (scripts/bench/noop-filter); not a
    # floor under the Redis rows, whose callouts carry several requests.
    "P": ("diagnostic: the probe filter's one HTTP callout per request (h2c, to the upstream Envoy), "
          "no sluice, gateway or Redis", PROBE, None, None),
    "O": (f"sluice redis, client over the limit, deny cache on, {LABEL[SHIPPED]}", "over", SHIPPED, None),
    "ON": (f"sluice redis, client over the limit, deny cache off, {LABEL[SHIPPED]}", "over-nocache", SHIPPED, None),
}
LOCAL_BASE, LOCAL_429 = "L", "LD"
# Open loop: requests in flight are rate × latency; 16 connections held a few ms of latency at
# a few thousand req/s and no more, so a slow moment queued requests behind the load
# generator's own connections and reported that wait as the proxy's.
OPEN_LOOP_CONNECTIONS = 64
# At rest: a rate low enough that requests seldom meet, so the latency added over (L) is the
# round trip itself, not queueing on this machine's two shared cores.
REST_RATE = 200
# Sequential round trips per hop measured at rest (one connection, one request at a time).
ROUND_TRIPS = 2000


def _plugin(kind):
    if kind == "never":
        rules = [{"name": "api", "limit": NEVER, "backend": "redis", "on_error": "allow"}]
    else:
        rules = [{"name": "api", "limit": OVER, "strategy": "fixed_window", "identifier": "global", "backend": "redis",
                  "on_error": "allow"}]
    # A generous timeout: on a shared machine a slow moment must not open the filter's breaker
    # and turn the row into on_error's (the rows check that Redis decided every request).
    p = redisenv.redis_plugin(rules, timeout_ms=1000)
    if kind == "over-nocache":
        p["redis"]["deny_cache"] = False
    return p


def redis_stats(port):
    """Decision calls Redis has served so far (EVALSHA, EVAL, FCALL and the module's commands),
    and the microseconds it spent running them by its own count (INFO commandstats: execution
    only, no I/O)."""
    out = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(port), "INFO", "commandstats"], capture_output=True,
                         text=True, timeout=10).stdout
    calls = usec = 0
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_fcall_ro") or \
                name.startswith("cmdstat_sluice."):
            fields = dict(f.split("=", 1) for f in rest.split(",") if "=" in f)
            calls += int(fields.get("calls", 0))
            usec += int(fields.get("usec", 0))
    return calls, usec


def redis_calls(port):
    return redis_stats(port)[0]


def gateway_stats(port):
    """Script calls the gateway has accepted, and the `POST /pipeline` callouts that carried
    them (from its /metrics): their ratio is how many requests a busy filter gathered per call."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    calls = posts = 0.0
    for line in text.splitlines():
        if line.startswith("sluice_gateway_commands_total{"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith('sluice_gateway_requests_total{endpoint="/pipeline"'):
            posts += float(line.rsplit(" ", 1)[1])
    return calls, posts


def probe_cluster(upstream_port):
    """The cluster (P)'s callouts go to: the upstream Envoy, over h2c."""
    return gateway_cluster(hostcalls.PROBE_UPSTREAM, upstream_port, h2=True)


def config_of(key):
    """The CONFIGS entry of a row: `R2` and an A/B's `R2-A`, `R2-B` are all (R2)."""
    return CONFIGS[key.split("-")[0]]


def start(wasm, work, envoy_cpus, load_cpus, stack, keys, probe=None):
    """Starts each configuration of `keys`; (P) needs `probe`, the probe filter's .wasm."""
    upstream = Envoy("upstream", bootstrap([]), work, concurrency=1, cpus=load_cpus)
    envoys, skipped, gateways = {}, {}, {}
    for k in keys:
        _, plugin, transport, gw = CONFIGS[k]
        filters, clusters = [], []
        if plugin == PROBE:
            if probe is None:
                skipped[k] = "the probe filter is not built (scripts/bench.sh builds it)"
                continue
            filters = [wasm_filter(probe, PROBE_CALLOUT, vm_id="probe-callout")]
            clusters = [probe_cluster(upstream.port)]
            plugin = None
        elif transport:
            if stack is None:
                skipped[k] = "Redis stack unavailable"
                continue
            if gw == "module" and not stack.module:
                skipped[k] = "sluice's Redis module is not built (cargo build --release -p sluice-redis-module)"
                continue
            if gw is not None and gw not in stack.extra:
                stack.add_gateway(gw, GATEWAYS[gw])
            port, pid = stack.gateway(gw)
            gateways[k] = (port, pid)
            plugin = _plugin(plugin)
            clusters = [gateway_cluster(redisenv.CLUSTER, port, h2=transport == H2)]
        if plugin:
            filters = [wasm_filter(wasm, plugin)]
        try:
            envoys[k] = Envoy(f"dist-{k}", routed(bootstrap(filters, clusters=clusters), upstream.port), work,
                              concurrency=1, cpus=envoy_cpus)
        except RuntimeError as e:
            skipped[k] = str(e).splitlines()[0]
            log(f"distributed ({k}) not started: {skipped[k]}")
    return upstream, envoys, skipped, gateways


def _row(runs, reps):
    kept = [throughput.runs_last(runs, rep + 1) for rep in range(reps)]
    row = {m: median(r.get(m) for r in kept) for m in ("rps", "p50_ms", "p99_ms", "others_cores")}
    for m in ("envoy_us", "gateway_us", "redis_us", "total_us", "redis_calls_per_request", "decisions_per_request",
              "redis_us_per_decision", "redis_exec_us_per_decision", "requests_per_callout"):
        row[m] = median(r.get(m) for r in kept)
    row["total_us_spread"] = spread(r.get("total_us") for r in kept)
    row["non_2xx_share"] = median(r["non_2xx"] / r["requests"] if r["requests"] else None for r in kept)
    row["runs"] = runs
    return row


def _helpers(k, stack, gateways):
    """The processes a configuration's requests run through besides the Envoy under test: its
    gateway, then Redis (the default gateway, then Redis, where none is called)."""
    if k in gateways:
        return [gateways[k][1], stack.pids[0]]
    return [stack.pids[1], stack.pids[0]] if stack else []


def full_load(envoys, upstreams, stack, gateways, reps, seconds, connections, load_cpus, max_others):
    for k, e in envoys.items():  # warm-up: V8 tiers up, pools fill, the gateway connects
        loadgen.wrk(e.url(), 2, connections, cpus=load_cpus, watch=[e.pid])
    results = {k: [] for k in envoys}
    for rep in range(reps):
        for k, e in envoys.items():
            # The gateway this configuration calls, then Redis, then the upstreams: watched so that
            # none of them counts as other people's work (only the first three are in CPU/request).
            extra = _helpers(k, stack, gateways) + [u.pid for u in upstreams]

            def run():
                # Read before each attempt: a disturbed run is repeated, and only the last counts.
                calls0, usec0 = redis_stats(stack.redis_port) if stack else (0, 0)
                gw0 = gateway_stats(gateways[k][0]) if k in gateways else None
                r = loadgen.wrk(e.url(), seconds, connections, cpus=load_cpus, watch=[e.pid] + extra)
                n = max(r["requests"], 1)
                cpu = r["cpu_s"]
                r["envoy_us"] = cpu[0] / n * 1e6
                if gw0 is not None:
                    gw_calls, gw_posts = (b - a for a, b in zip(gw0, gateway_stats(gateways[k][0])))
                    r["requests_per_callout"] = gw_calls / gw_posts if gw_posts else None
                    r["decisions_per_request"] = gw_calls / n
                if config_of(k)[2]:
                    r["gateway_us"], r["redis_us"] = cpu[1] / n * 1e6, cpu[2] / n * 1e6
                    calls, usec = redis_stats(stack.redis_port)
                    calls, usec = calls - calls0, usec - usec0
                    # A batch is one Redis call deciding several requests: CPU is per decision.
                    decisions = r.get("decisions_per_request", 0) * n
                    r["redis_calls_per_request"] = calls / n
                    r["redis_us_per_decision"] = cpu[2] / decisions * 1e6 if decisions else None
                    r["redis_exec_us_per_decision"] = usec / decisions if decisions else None
                r["total_us"] = r["envoy_us"] + r.get("gateway_us", 0) + r.get("redis_us", 0)
                return r

            runs = throughput.measure(run, max_others, f"distributed ({k}) rep {rep + 1}")
            for r in runs:
                r["rep"] = rep + 1
            results[k] += runs
            r = runs[-1]
            log(f"distributed rep {rep + 1} ({k}): {r['rps']:.0f} req/s, {r['total_us']:.1f} µs CPU/request "
                f"(Envoy {r['envoy_us']:.1f}, gateway {r.get('gateway_us', 0):.1f}, Redis {r.get('redis_us', 0):.1f}), "
                f"decisions/request {r.get('decisions_per_request') or 0:.3f}, "
                f"Redis calls/request {r.get('redis_calls_per_request', 0):.3f}, "
                f"requests/callout {r.get('requests_per_callout') or 0:.1f}, non-2xx {r['non_2xx']}, "
                f"others {r['others_cores']:.2f} cores")
    return {k: _row(runs, reps) for k, runs in results.items()}


def open_loop(envoys, upstream, stack, gateways, rate, reps, seconds, load_cpus, max_others):
    keys = [k for k in ("A", LOCAL_BASE, "P", "R1", "R2", "RE", "RM") if k in envoys]
    results = {k: [] for k in keys}
    for k in keys:
        loadgen.oha(envoys[k].url(), rate, 2, OPEN_LOOP_CONNECTIONS, cpus=load_cpus, watch=[envoys[k].pid])
    for rep in range(reps):
        for k in keys:
            e, ours = envoys[k], [envoys[k].pid] + _helpers(k, stack, gateways) + [upstream.pid]
            runs = throughput.measure(lambda: loadgen.oha(e.url(), rate, seconds, OPEN_LOOP_CONNECTIONS, cpus=load_cpus,
                                                          watch=ours),
                                      max_others, f"distributed open loop ({k}) rep {rep + 1}")
            for r in runs:
                r["rep"] = rep + 1
            results[k] += runs
            r = runs[-1]
            log(f"distributed {rate}/s rep {rep + 1} ({k}): achieved {r['rps']:.0f}/s p50 {r['p50_ms'] * 1e3:.0f} µs "
                f"p99 {r['p99_ms'] * 1e3:.0f} µs")
    rows = {}
    for k, runs in results.items():
        kept = [throughput.runs_last(runs, rep + 1) for rep in range(reps)]
        rows[k] = {m: median(r.get(m) for r in kept) for m in ("rps", "p50_ms", "p99_ms", "others_cores")}
        rows[k]["runs"] = runs
    base = rows.get(LOCAL_BASE)
    for k, row in rows.items():
        if base and k not in ("A", LOCAL_BASE):
            row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
            row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]
    return rows


def sequential(port, request, n):
    """Round-trip times (s) of `n` sequential `request`s on one loopback connection, each read
    until its reply's first bytes, and the last reply."""
    times, reply = [], b""
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t = time.perf_counter()
            s.sendall(request)
            reply = s.recv(65536)
            times.append(time.perf_counter() - t)
    return times, reply


def _resp(*args):
    """A Redis command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)


def round_trips(stack, gateways, n, client_cpus=None, more=()):
    """The hops of a Redis rule's decision, each alone and at rest: a client's PING to Redis,
    sluice's decision in Redis (its module's command when loaded, else FCALL), and one call
    POSTed to the gateway (to Redis and back), as the filter sends it; then `more` hops, each
    (name, port, request, the reply's start). The client runs on `client_cpus` (the Envoy under
    test's core, so each hop crosses cores as Envoy's does), in four interleaved rounds. p50
    and p99 in µs."""
    h = gateway.health(stack.port)
    args = ("1", "bench:{rest:0000000000000001}:0.00000000", "fixed_window", "1000000000000", "60000", "1", "0", "0")
    call = json.dumps([["EVALSHA", h["script"], *args]]).encode()
    post = (b"POST /pipeline HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + redisenv.TOKEN.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(call) + call)
    hops = [("Redis PING", stack.redis_port, _resp("PING"), b"+PONG"),
            ("Redis, sluice's decision (FCALL)", stack.redis_port, _resp("FCALL", h["function"], *args), b"*2")
            if h.get("function") else
            ("Redis, sluice's decision (EVALSHA)", stack.redis_port, _resp("EVALSHA", h["script"], *args), b"*2")]
    if stack.module and h.get("module_command"):
        hops.append(("Redis, sluice's decision (module command)", stack.redis_port, _resp(h["module_command"], *args),
                     b"*2"))
    hops.append((f"gateway, one call POSTed ({h.get('calls', '?')})", stack.port, post, b"HTTP/1.1 200"))
    for k, (port, _) in gateways.items():
        if config_of(k)[3] == "module":
            hops.append(("gateway, one call POSTed (module)", port, post, b"HTTP/1.1 200"))
            break
    hops += list(more)
    times = {name: [] for name, _, _, _ in hops}
    # A client on the server's own core is woken without crossing cores: faster than any proxy.
    with pinned(client_cpus):
        for _ in range(4):
            for name, port, request, ok in hops:
                t, reply = sequential(port, request, max(n // 4, 1))
                if not reply.startswith(ok):
                    raise RuntimeError(f"round trip to {name}: unexpected reply {reply[:120]!r}")
                times[name] += t
    rows = {}
    for name, t in times.items():
        t.sort()
        rows[name] = {"p50_us": t[len(t) // 2] * 1e6, "p99_us": t[int(len(t) * 0.99)] * 1e6}
        log(f"distributed at rest: {name}: p50 {rows[name]['p50_us']:.0f} µs p99 {rows[name]['p99_us']:.0f} µs")
    return {"n": n, "client_cpus": list(client_cpus or []), "rows": rows}


def run(wasm, work, stack, reps, seconds, connections, envoy_cpus, load_cpus, max_others, quick, only=(), probe=None):
    """Runs every configuration, or those in `only` (keys of CONFIGS); (P) with `probe`."""
    unknown = [k for k in only if k not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown distributed configurations: {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    keys = [k for k in CONFIGS if not only or k in only]
    upstream, envoys, skipped, gateways = start(wasm, work, envoy_cpus, load_cpus, stack, keys, probe)
    try:
        rows = full_load(envoys, [upstream], stack, gateways, reps, seconds, connections, load_cpus, max_others)
        for k in ("R1", "R2", "RE", "RU", "RM", "ON"):
            decisions = rows.get(k, {}).get("decisions_per_request")
            if decisions is not None and decisions < 0.9:
                # The filter fell back to on_error: this row does not measure the distributed path.
                skipped[k] = f"only {decisions:.2f} gateway calls per request: the gateway did not decide"
        out = {"rows": rows, "skipped": skipped, "reps": reps, "seconds": seconds, "connections": connections,
               "descriptions": {k: v[0] for k, v in CONFIGS.items()}, "shipped_transport": SHIPPED}
        base = rows.get("A", {}).get("rps")
        if base and loadgen.oha_available():
            rate = int(base * 0.3)
            out["open_loop"] = {"rate": rate, "seconds": 5 if quick else 10,
                                "rows": open_loop(envoys, upstream, stack, gateways, rate, reps, 5 if quick else 10, load_cpus, max_others)}
            out["at_rest"] = {"rate": REST_RATE, "seconds": 5,
                              "rows": open_loop(envoys, upstream, stack, gateways, REST_RATE, reps, 5, load_cpus, max_others)}
        if stack is not None:
            out["round_trips"] = round_trips(stack, gateways, ROUND_TRIPS // 4 if quick else ROUND_TRIPS, envoy_cpus)
        return out
    finally:
        for e in envoys.values():
            e.stop()
        upstream.stop()


def targets(dist):
    """The distributed path's targets, from one run."""
    rows, t = dist.get("rows", {}), []

    def cpu(k):
        return rows.get(k, {}).get("total_us") if k not in dist.get("skipped", {}) else None

    def target(name, value, need, detail):
        if value is None:
            t.append({"target": name, "status": "not measured", "detail": detail})
        else:
            t.append({"target": name, "status": "met" if value <= need else "missed", "value": round(value, 3),
                      "detail": detail})

    a = cpu("A")
    for k in ("R1", "R2", "RM"):
        v = cpu(k) / a if cpu(k) and a else None
        target(f"({k}) whole-system CPU per request ≤ 2.2 × (A)", v, 2.2,
               f"({k}) {cpu(k) or 0:.1f} µs / (A) {a or 0:.1f} µs")
        redis_us = rows.get(k, {}).get("redis_us_per_decision")
        v = redis_us / a if redis_us and a else None
        target(f"({k}) Redis CPU per decision ≤ 12% of (A)'s CPU per request", v, 0.12,
               f"Redis {redis_us or 0:.1f} µs per decision / (A) {a or 0:.1f} µs")
    ld = cpu(LOCAL_429)
    v = cpu("O") / ld if cpu("O") and ld else None
    target("(O) whole-system CPU per request ≤ 1.2 × (LD)", v, 1.2, f"(O) {cpu('O') or 0:.1f} µs / (LD) {ld or 0:.1f} µs")
    ol = dist.get("open_loop", {}).get("rows", {})
    # What Envoy's bare callout adds in the same run, beside each row: how much of the wait is the
    # callout itself on this machine.
    bare = {m: ol.get("P", {}).get(f"added_{m}_ms") for m in ("p50", "p99")}

    def latency(v, m):
        floor = f"; (P), Envoy's bare callout, {bare[m] * 1e3:.0f} µs" if bare[m] is not None else ""
        return f"{(v or 0) * 1e3:.0f} µs{floor}"

    for k in ("R1", "R2", "RM"):
        p50, p99 = ol.get(k, {}).get("added_p50_ms"), ol.get(k, {}).get("added_p99_ms")
        target(f"({k}) added p50 over (L) at 30% load ≤ 0.5 ms", p50, 0.5, latency(p50, "p50"))
        target(f"({k}) added p99 over (L) at 30% load ≤ 2 ms", p99, 2.0, latency(p99, "p99"))
    return t


def markdown(dist):
    if "not_measured" in dist:
        return ["", "## 7. The distributed path", "", f"not measured: {dist['not_measured']}"]
    rows, desc = dist["rows"], dist["descriptions"]
    a = rows.get("A", {}).get("total_us")
    lines = ["", "## 7. The distributed path (routed)", "",
             f"Every configuration routes to an upstream Envoy; wrk, {dist['connections']} connections, median of "
             f"{dist['reps']} interleaved {dist['seconds']} s runs. CPU per request sums the Envoy under test, "
             "sluice-gateway and redis-server (the upstream and wrk are not counted); spread = (max − min) / median "
             "of the total over the repetitions.", "",
             "Redis µs per decision is redis-server's CPU divided by the calls of sluice's script the gateway "
             "accepted (one per request and Redis rule); run µs per decision is Redis's own count of the time "
             "spent running them (INFO commandstats), the part FCALL and EVALSHA differ in. Redis calls per "
             "request counts the commands Redis ran: one FCALL of the batch function decides every call of a "
             "callout (per cluster slot), so it is below one where the gateway batches.", "",
             "Requests per callout is the gateway's script calls divided by the `/pipeline` callouts that carried "
             "them: while a worker has a call out, the requests that arrive go together in its next one.", "",
             "| config | req/s | p50 ms | p99 ms | CPU µs/request | × (A) | Envoy / gateway / Redis µs | Redis calls "
             "per request | requests per callout | Redis µs per decision | run µs per decision | spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def num(v, fmt):
        return fmt.format(v) if v is not None else "–"

    for k, r in rows.items():
        note = f" (skipped: {dist['skipped'][k]})" if k in dist.get("skipped", {}) else ""
        split = f"{r['envoy_us']:.1f} / {num(r.get('gateway_us'), '{:.1f}')} / {num(r.get('redis_us'), '{:.1f}')}"
        lines.append(f"| ({k}) {desc[k]}{note} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['total_us']:.1f} | {num(r['total_us'] / a if a else None, '{:.2f}')} | {split} | "
                     f"{num(r.get('redis_calls_per_request'), '{:.4f}')} | {num(r.get('requests_per_callout'), '{:.1f}')} | "
                     f"{num(r.get('redis_us_per_decision'), '{:.1f}')} | "
                     f"{num(r.get('redis_exec_us_per_decision'), '{:.1f}')} | "
                     f"{num(r.get('total_us_spread'), '{:.0%}')} |")
    for key, title in (("open_loop", "30% of (A)'s closed-loop rate"), ("at_rest", "at rest")):
        ol = dist.get(key)
        if not ol:
            continue
        lines += ["", f"Open loop at {ol['rate']} req/s ({title}), oha, {ol['seconds']} s, "
                      "latency from each request's scheduled time:", "",
                  "| config | achieved req/s | p50 µs | p99 µs | added p50 over (L) µs | added p99 over (L) µs |",
                  "|---|---|---|---|---|---|"]
        for k, r in ol["rows"].items():
            lines.append(f"| ({k}) | {r['rps']:.0f} | {r['p50_ms'] * 1e3:.0f} | {r['p99_ms'] * 1e3:.0f} | "
                         f"{(r['added_p50_ms'] * 1e3) if 'added_p50_ms' in r else 0:.0f} | "
                         f"{(r['added_p99_ms'] * 1e3) if 'added_p99_ms' in r else 0:.0f} |")
    rt = dist.get("round_trips")
    if rt:
        lines += ["", f"Each hop of a Redis decision alone, at rest: {rt['n']} sequential round trips on one loopback "
                      f"connection, the client on cpu {rt.get('client_cpus') or 'any'} (the Envoy under test's), "
                      "Redis and the gateway where they ran above (the floor under the added latency above):", "",
                  "| hop | p50 µs | p99 µs |", "|---|---|---|"]
        lines += [f"| {name} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |" for name, r in rt["rows"].items()]
    return lines
