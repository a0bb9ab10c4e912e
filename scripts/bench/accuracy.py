"""Section 3: accuracy of every strategy under concurrency, local and Redis backends.

N concurrent clients (wrk connections, closed loop, far more demand than the limit) share one
identity (`identifier: global`) against Envoy with 2 workers (local), or against 2 Envoys with 2
workers each sharing Redis through sluice-gateway. Every request is timed by Envoy's own access
log: the decision happened within [start, start + duration] (µs), on the same wall clock the
filter (and Redis' TIME) reads. An overshoot is reported only when it is certain whatever the
decision times within those intervals; undershoot is measured against what the strategy's
contract allows, as defined per strategy below.

What "admitted per window" means here, per strategy:
- fixed_window, sliding_window_counter: admitted in each epoch-aligned window of `period`
  (both guarantee ≤ limit there). Undershoot: the emptiest full window vs the limit.
- sliding_window_log: admitted in any interval of `period` − 1 ms (its guarantee is in whole
  milliseconds: an entry admitted at 10.0009 s is stamped 10000 ms and expires at 11000 ms, so
  two admissions 999.1 ms apart are a full period apart on the filter's clock). Undershoot: the
  emptiest full aligned window vs the limit (under saturation each aligned window refills fully).
- token_bucket, leaky_bucket, gcra: over the run and over every sub-interval of length d,
  admitted ≤ burst + d × rate (their guarantee, burst = limit by default). Undershoot: admitted
  over the run vs burst + rate × (last − first admission).
- token_bucket_debt: the same with burst + max_debt.
- leaky_bucket_queue: by release time (the response time; queued requests are released by a
  5 ms tick, so 5 ms of slack), admitted ≤ burst + (d + 1 ms) × rate; undershoot as for buckets.
"""
import math
import os
import time

import numpy as np

from common import log
from envoyctl import Envoy, bootstrap, gateway_cluster, wasm_filter
import loadgen
import redisenv

STRATEGIES = ["fixed_window", "sliding_window_counter", "sliding_window_log", "token_bucket",
              "token_bucket_debt", "leaky_bucket", "leaky_bucket_queue", "gcra"]
WINDOWED = {"fixed_window", "sliding_window_counter"}
TICK_MS = 5


def strategy_spec(name, limit):
    if name == "token_bucket_debt":
        return {"type": name, "max_debt": max(limit // 10, 1)}
    if name == "leaky_bucket_queue":
        return {"type": name, "max_delay": "100ms"}
    return name


def bucket_capacity(name, limit):
    """burst (+ max_debt) of the fluid strategies, as configured by `strategy_spec`."""
    return limit + (max(limit // 10, 1) if name == "token_bucket_debt" else 0)


def rules(limit, period_s, backend):
    out = []
    for s in STRATEGIES:
        r = {"name": f"acc_{s}", "match": {"path": f"/acc/{s}"}, "limit": f"{limit}/{period_s}s",
             "strategy": strategy_spec(s, limit), "identifier": "global"}
        if backend == "redis":
            r.update(backend="redis", on_error="deny")
        out.append(r)
    return out


def read_log(paths):
    """{strategy: array of (lo_s, hi_s, status)} from Envoy access logs."""
    rows = {s: [] for s in STRATEGIES}
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 4 or not parts[3].startswith("/acc/"):
                    continue
                s = parts[3][5:]
                if s in rows:
                    start, dur = float(parts[0]), int(parts[1]) if parts[1].isdigit() else 0
                    rows[s].append((start, start + dur / 1e6, int(parts[2]) if parts[2].isdigit() else 0))
    return {s: np.array(sorted(v), dtype=float).reshape(-1, 3) for s, v in rows.items()}


def max_in_sliding(lo, hi, width):
    """Most requests certainly inside one interval [s, s + width): for every s = lo_i, those
    with lo ≥ s and hi < s + width (lo sorted)."""
    best = 0
    ends = np.searchsorted(lo, lo + width, side="left")
    for i in range(len(lo)):
        j = ends[i]
        if j - i > best:
            best = max(best, int(np.count_nonzero(hi[i:j] < lo[i] + width)))
    return best


def worst_fluid_excess(t_lo, t_hi, capacity, rate_per_s, slack_s):
    """max over i ≤ j of (requests i..j) − capacity − rate × (span + slack), where the requests
    i..j (sorted by lo) certainly lie in [lo_i, max(hi_0..hi_j)]. > 0 is a certain violation of
    'admitted ≤ capacity + rate × d in every interval of length d'."""
    if len(t_lo) == 0:
        return -capacity
    idx = np.arange(len(t_lo), dtype=float)
    h = np.maximum.accumulate(t_hi)
    left = idx - rate_per_s * t_lo
    right = idx - rate_per_s * h
    best_left = np.minimum.accumulate(left)
    return float(np.max(right - best_left + 1)) - capacity - rate_per_s * slack_s


def analyze(strategy, data, limit, period_s):
    """Overshoot / undershoot of one strategy's run (data rows: lo, hi, status)."""
    ok = data[data[:, 2] == 200] if len(data) else data
    res = {"requests": int(len(data)), "admitted": int(len(ok)),
           "limited": int(np.count_nonzero(data[:, 2] == 429)) if len(data) else 0}
    res["errors"] = res["requests"] - res["admitted"] - res["limited"]
    if len(data) == 0 or len(ok) == 0:
        res.update(overshoot=None, undershoot_pct=None, note="no admitted requests")
        return res
    run_lo, run_hi = float(data[:, 0].min()), float(data[:, 1].max())
    res["duration_s"] = round(run_hi - run_lo, 3)
    res["offered_rps"] = round(len(data) / (run_hi - run_lo), 1)
    lo, hi = ok[:, 0], ok[:, 1]
    res["max_decision_uncertainty_ms"] = round(float(np.max(hi - lo)) * 1e3, 3)
    if strategy in WINDOWED or strategy == "sliding_window_log":
        first = math.ceil(run_lo / period_s)
        last = math.floor(run_hi / period_s)
        per_window = []
        for w in range(first, last):
            a, b = w * period_s, (w + 1) * period_s
            definite = int(np.count_nonzero((lo >= a) & (hi < b)))
            possible = int(np.count_nonzero((hi >= a) & (lo < b)))
            per_window.append((definite, possible))
        res["windows"] = [{"certain": d, "possible": p} for d, p in per_window]
        if not per_window:
            res.update(overshoot=None, undershoot_pct=None, note="no full window")
            return res
        if strategy == "sliding_window_log":
            worst = max_in_sliding(lo, hi, period_s - 0.001)
            res["check"] = f"admitted in any {period_s * 1000 - 1:g} ms interval ≤ {limit}"
            res["max_admitted_in_any_window"] = worst
        else:
            worst = max(d for d, _ in per_window)
            res["check"] = f"admitted in each aligned {period_s:g} s window ≤ {limit}"
            res["max_admitted_in_a_window"] = worst
        res["overshoot"] = max(worst - limit, 0)
        res["overshoot_pct"] = round(100.0 * res["overshoot"] / limit, 3)
        emptiest = min(p for _, p in per_window)
        res["min_admitted_in_a_full_window"] = emptiest
        res["mean_admitted_per_full_window"] = round(sum((d + p) / 2 for d, p in per_window) / len(per_window), 1)
        res["undershoot_pct"] = round(max(limit - emptiest, 0) * 100.0 / limit, 3)
        return res
    rate = limit / period_s
    cap = bucket_capacity(strategy, limit)
    if strategy == "leaky_bucket_queue":
        # By release time: the response leaves right after the release; a release is up to a
        # tick late, so requests planned up to a tick apart may leave together.
        t_lo, t_hi = hi, hi
        slack = (TICK_MS + 1) / 1e3
        res["check"] = f"released in any d ≤ {cap} + (d + {TICK_MS + 1} ms) × {rate:g}/s"
    else:
        t_lo, t_hi = lo, hi
        slack = 0.001  # decisions use whole milliseconds
        res["check"] = f"admitted in any d ≤ {cap} + (d + 1 ms) × {rate:g}/s"
    order = np.argsort(t_lo, kind="stable")
    t_lo, t_hi = t_lo[order], t_hi[order]
    span = float(t_hi.max() - t_lo.min())
    whole_bound = cap + rate * (span + slack)
    res["run_bound"] = round(whole_bound, 1)
    excess = max(worst_fluid_excess(t_lo, t_hi, cap, rate, slack), len(ok) - whole_bound)
    res["overshoot"] = max(int(math.floor(excess + 1e-9)), 0)
    res["overshoot_pct"] = round(100.0 * res["overshoot"] / cap, 3)
    expected = cap + rate * float(t_lo.max() - t_hi.min()) if len(ok) > 1 else cap
    res["expected_admitted"] = round(expected, 1)
    res["undershoot_pct"] = round(max(expected - len(ok), 0) * 100.0 / expected, 3)
    return res


def run_backend(backend, wasm, workdir, limit, period_s, windows, connections, redis_stack=None, keep=None):
    """Runs every strategy in turn against one backend; returns {strategy: analysis}."""
    proxies = 1 if backend == "local" else 2
    plugin = {"rules": rules(limit, period_s, backend)}
    clusters = ()
    if backend == "redis":
        plugin = redisenv.redis_plugin(plugin["rules"], timeout_ms=200)
        clusters = (gateway_cluster(redisenv.CLUSTER, redis_stack.port),)
    envoys, logs = [], []
    try:
        for p in range(proxies):
            logs.append(os.path.join(workdir, f"access-{backend}-{p}.log"))
            envoys.append(Envoy(f"acc-{backend}-{p}", bootstrap([wasm_filter(wasm, plugin)], access_log=logs[-1],
                                                                 clusters=clusters), workdir, concurrency=2))
        seconds = windows * period_s + 1
        per_run = {}
        for s in STRATEGIES:
            # Start just after a window edge, so `windows` full windows fit in the run.
            time.sleep((period_s - time.time() % period_s) + 0.05)
            procs = []
            pids = [e.pid for e in envoys] + (redis_stack.pids if redis_stack else [])
            if proxies == 1:
                r = loadgen.wrk(envoys[0].url(f"/acc/{s}"), seconds, connections, threads=2, watch=pids)
            else:
                import concurrent.futures as cf
                with cf.ThreadPoolExecutor(proxies) as ex:
                    futs = [ex.submit(loadgen.wrk, e.url(f"/acc/{s}"), seconds, connections // proxies, 1, None, (),
                                      None, (), pids) for e in envoys]
                    procs = [f.result() for f in futs]
                r = {"rps": sum(p["rps"] for p in procs), "others_cores": max(p["others_cores"] for p in procs)}
            per_run[s] = {"load_rps": round(r["rps"], 1), "others_cores": r["others_cores"]}
            log(f"accuracy {backend} {s}: {r['rps']:.0f} req/s offered")
        stats = {}
        for e in envoys:
            for k, v in e.stats(r"sluice\.rule\.acc_").items():
                stats[k] = stats.get(k, 0) + v
            per_run.setdefault("_workers", []).append(e.workers_connections())
    finally:
        for e in envoys:
            e.stop()
    if keep:
        import shutil
        os.makedirs(keep, exist_ok=True)
        for path in logs:
            shutil.copy2(path, keep)
    data = read_log(logs)
    out = {}
    for s in STRATEGIES:
        a = analyze(s, data[s], limit, period_s)
        a.update(per_run.get(s, {}))
        a["stats_allowed"] = sum(v for k, v in stats.items() if k.endswith(f"acc_{s}.allowed"))
        a["store_errors"] = sum(v for k, v in stats.items() if k.endswith(f"acc_{s}.store_errors"))
        out[s] = a
        log(f"accuracy {backend} {s}: admitted {a['admitted']} overshoot {a.get('overshoot')} "
            f"undershoot {a.get('undershoot_pct')}%")
    out["_connections_per_worker"] = per_run.get("_workers")
    return out
