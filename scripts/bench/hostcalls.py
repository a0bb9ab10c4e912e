"""Optional section: the price of each kind of proxy-wasm host call in this Envoy, measured with
the probe filter (noop-filter) making N calls of one kind per request, against the same filter
making none. µs per call = (Envoy CPU per request with the calls − without) / N, on one pinned
worker (CPU per request = Envoy's CPU time / requests, robust to other work on the machine).

`pause` and `callout` are once per request: what holding a request and carrying it on costs
Envoy (the probe holds it until its next 1 ms tick), and that plus one HTTP callout over h2c to
an upstream Envoy on the load's core (answered at once): the Envoy side of a Redis rule whose
every request makes its own callout, without sluice, the gateway or Redis."""
from envoyctl import Envoy, bootstrap, gateway_cluster, wasm_filter
import throughput

KINDS = {"time": 20, "property": 20, "header": 20, "pairs": 20, "shared_get": 20, "shared_set": 20, "add_header": 10,
         "alloc": 50, "pause": 1, "callout": 1}
# The cluster the probe's callouts go to (scripts/bench/noop-filter).
PROBE_UPSTREAM = "probe_upstream"


def run(noop_wasm, workdir, reps, seconds, connections, envoy_cpus, load_cpus, max_others):
    confs = {"none": {}}
    confs.update({k: {k: n} for k, n in KINDS.items()})
    envoys = {}
    upstream = Envoy("hc-upstream", bootstrap([]), workdir, concurrency=1, cpus=load_cpus)
    clusters = [gateway_cluster(PROBE_UPSTREAM, upstream.port, h2=True)]
    try:
        for name, cfg in confs.items():
            boot = bootstrap([wasm_filter(noop_wasm, cfg, vm_id=f"probe-{name}")], clusters=clusters)
            envoys[name] = Envoy(f"hc-{name}", boot, workdir, concurrency=1, cpus=envoy_cpus)
        rows = throughput.throughput(envoys, reps, seconds, connections, load_cpus, max_others)
    finally:
        for e in envoys.values():
            e.stop()
        upstream.stop()
    base = rows["none"]["rps_per_cpu"]
    out = {"base_rps": rows["none"]["rps"], "base_us_per_request": round(1e6 / base, 2), "per_call_us": {},
           "rows": {k: {m: v for m, v in r.items() if m != "runs"} for k, r in rows.items()}}
    for k, n in KINDS.items():
        out["per_call_us"][k] = round((1e6 / rows[k]["rps_per_cpu"] - 1e6 / base) / n, 3)
    return out
