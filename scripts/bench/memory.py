"""Section 4: memory after many distinct client identities on one local rule.

Each request carries a new `x-client` header value (wrk + lua/distinct.lua), so every request is a
new identity; the rule's limit is per hour, so every identity stays live and, past the table's
size, each new one must evict. Measured after each step: Envoy's RSS, its allocator's view
(admin /memory: bytes allocated; shared data lives there), and `sluice.local.slots_created`
(the shared-data key count). Bytes per slot = growth of allocated bytes / growth of slots
between the first two steps; the key + value bytes per slot come from the same configuration
run on the in-memory store that mirrors Envoy's map (native core benchmark)."""
import time

from common import log
from envoyctl import Envoy, bootstrap, wasm_filter
import loadgen

SLOTS_STAT = "wasmcustom.sluice.local.slots_created"
ALLOWED_STAT = "wasmcustom.sluice.rule.mem.allowed"


def plugin(cap):
    return {"local": {"max_clients": cap},
            "rules": [{"name": "mem", "limit": "1000/hour", "strategy": "sliding_window_counter",
                       "identifier": {"header": "x-client"}}]}


def run(wasm, workdir, cap, steps, envoy_cpus, load_cpus, connections=16):
    envoy = Envoy("memory", bootstrap([wasm_filter(wasm, plugin(cap))]), workdir, concurrency=1, cpus=envoy_cpus)
    points = []
    try:
        time.sleep(1)
        points.append({"identities": 0, "slots": envoy.stat(SLOTS_STAT), "rss_kib": envoy.rss_kib(),
                       "heap_allocated": envoy.heap().get("allocated")})
        done = 0
        for k, total in enumerate(steps):
            n = total - done
            budget = int(n / 3000) + 30  # seconds: the step ends once n requests were answered
            target = envoy.stat(ALLOWED_STAT) + n
            r = loadgen.wrk(envoy.url("/mem"), budget, connections, cpus=load_cpus, script="distinct.lua",
                            script_args=(n, f"s{k}-"), watch=[envoy.pid],
                            until=lambda: envoy.stat(ALLOWED_STAT) >= target)
            done = total
            time.sleep(1)
            p = {"identities": total, "requests": r["requests"], "rps": round(r["rps"]),
                 "non_2xx": r["non_2xx"], "slots": envoy.stat(SLOTS_STAT), "rss_kib": envoy.rss_kib(),
                 "heap_allocated": envoy.heap().get("allocated"), "others_cores": r["others_cores"]}
            points.append(p)
            log(f"memory: {total} identities -> {p['slots']} slots, RSS {p['rss_kib'] / 1024:.1f} MiB, "
                f"heap {p['heap_allocated'] / 2**20:.1f} MiB ({r['rps']:.0f} req/s)")
    finally:
        envoy.stop()
    return points


def summarize(points, cap, kv_bytes_per_slot):
    by = {p["identities"]: p for p in points}
    ids = sorted(by)
    first, second = by[ids[1]], by[ids[2]]
    d_slots = second["slots"] - first["slots"]
    out = {"cap": cap, "points": points, "key_value_bytes_per_slot": kv_bytes_per_slot}
    if d_slots > 0:
        out["heap_bytes_per_slot"] = round((second["heap_allocated"] - first["heap_allocated"]) / d_slots, 1)
        out["rss_bytes_per_slot"] = round((second["rss_kib"] - first["rss_kib"]) * 1024 / d_slots, 1)
    last, before_last = by[ids[-1]], by[ids[-2]]
    out["slots_at_end"] = last["slots"]
    out["shared_data_bytes_at_cap"] = round(cap * out.get("heap_bytes_per_slot", 0))
    out["heap_growth_last_step"] = last["heap_allocated"] - before_last["heap_allocated"]
    out["rss_growth_last_step_kib"] = last["rss_kib"] - before_last["rss_kib"]
    # The plateau is judged over the last three steps (10^5, 3x10^5, 10^6 identities in a full
    # run): every one holds at least 4x the cap in identities, so the table is full (hashing with
    # 4 probes leaves about one slot in 10^4 unwritten at 4x) and memory must not move.
    flat = [by[i] for i in ids[-3:]]
    growth = flat[-1]["heap_allocated"] - flat[0]["heap_allocated"]
    out["heap_growth_over_plateau"] = growth
    tolerance = 0.05 * out["shared_data_bytes_at_cap"]
    out["plateau"] = bool(all(0.999 * cap <= p["slots"] <= cap for p in flat) and abs(growth) <= max(tolerance, 1))
    out["plateau_rule"] = (f"from {flat[0]['identities']} to {flat[-1]['identities']} identities: slots within 0.1% of "
                           f"the cap ({cap}) and never above it, allocated bytes moving by at most 5% of the table's "
                           f"size ({tolerance / 2**20:.2f} MiB)")
    return out
