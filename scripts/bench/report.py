"""Turns the measurements into the verdict on each target, bench/results.md, the chart, and the
README's benchmark block."""
import os
import re

import distributed
from throughput import CONFIGS

README_BEGIN = "<!-- bench:begin (written by scripts/bench.sh) -->"
README_END = "<!-- bench:end -->"


def _ratio(rows, k, base, metric="rps"):
    if rows.get(k, {}).get(metric) and rows.get(base, {}).get(metric):
        return rows[k][metric] / rows[base][metric]
    return None


def targets(report):
    t = []
    rows = report.get("throughput", {}).get("rows", {})

    # The fast path's targets are set against the Wasm floor (w), per Envoy CPU-second: no Wasm
    # filter can beat an empty one, and per-CPU figures hold up on a shared machine where req/s
    # does not. The rows against (a) and (b) stay in the table for users.
    def floor_target(name, k, base, need, calls=None):
        r = _ratio(rows, k, base, "rps_per_cpu")
        if r is None:
            t.append({"target": name, "status": "not measured", "detail": f"({k}) or ({base}) missing"})
            return
        spread = max((rows[x].get("rps_per_cpu_spread") or 0) for x in (k, base))
        detail = (f"({k}) {rows[k]['rps_per_cpu']:.0f} / ({base}) {rows[base]['rps_per_cpu']:.0f} "
                  f"req per Envoy CPU-s = {r:.3f} (spread of the two rows up to {spread:.0%})")
        # The same host calls made by the probe with no work of its own: as near (w) as any
        # filter making them can come.
        ceiling = _ratio(rows, calls, base, "rps_per_cpu") if calls else None
        if ceiling is not None:
            detail += (f"; its host calls alone, ({calls}), {ceiling:.3f} × ({base}) "
                       f"(spread up to {rows[calls].get('rps_per_cpu_spread') or 0:.0%})")
        t.append({"target": name, "status": "met" if r >= need else "missed", "value": round(r, 3), "detail": detail})

    floor_target("(c) one local rule ≥ 0.92 × (w) per Envoy CPU-s", "c", "w", 0.92, calls="p")
    floor_target("(e) every request limited ≥ 0.95 × (w) per Envoy CPU-s", "e", "w", 0.95)
    floor_target("(d) ten rules ≥ 0.80 × (w) per Envoy CPU-s", "d", "w", 0.80, calls="q")
    floor_target("(x) a rule that matches nothing ≥ 0.97 × (w) per Envoy CPU-s", "x", "w", 0.97)
    # Default RateLimit headers cost at most 3% over none: (c) ≥ (y) / 1.03.
    floor_target("default rate_limit_headers ≤ 3% over none: (c) ≥ 0.971 × (y)", "c", "y", 1 / 1.03)
    fixed = report.get("fixed_rate", {}).get("rows", {})
    added = fixed.get("c", {}).get("added_p99_us")
    if added is None:
        t.append({"target": "added p99 of (c) over (a) at 50% load ≤ 50 µs", "status": "not measured",
                  "detail": report.get("fixed_rate", {}).get("skipped", "")})
    else:
        c = fixed["c"]
        # An open-loop rate at or above what (c) can serve measures its queue, not its overhead.
        saturated = _saturated(c)
        t.append({"target": "added p99 of (c) over (a) at 50% load ≤ 50 µs", "status": "met" if added <= 50 else "missed",
                  "value": added, "detail": f"(c) p99 {c['p99_ms'] * 1e3:.0f} µs − (a) p99 "
                                            f"{fixed['a']['p99_ms'] * 1e3:.0f} µs = {added:.0f} µs"
                                            + (f"; (c) saturated: it served {c['rps']:.0f} of {c['target_rps']} req/s"
                                               if saturated else "")})
    acc = report.get("accuracy", {})
    for backend in ("local", "redis"):
        res = acc.get(backend)
        if not isinstance(res, dict) or "not_measured" in res:
            why = res.get("not_measured") if isinstance(res, dict) else "not run"
            for what in ("overshoot = 0", "undershoot ≤ 1%"):
                t.append({"target": f"{what}, every strategy, {backend} backend", "status": "not measured", "detail": why})
            continue
        strat = {k: v for k, v in res.items() if not k.startswith("_")}
        over = {k: v.get("overshoot") for k, v in strat.items()}
        under = {k: v.get("undershoot_pct") for k, v in strat.items()}
        bad_o = {k: v for k, v in over.items() if v is None or v > 0}
        bad_u = {k: v for k, v in under.items() if v is None or v > 1.0}
        t.append({"target": f"overshoot = 0, every strategy, {backend} backend", "status": "missed" if bad_o else "met",
                  "value": max((v for v in over.values() if v is not None), default=None),
                  "detail": ("over: " + ", ".join(f"{k} {v}" for k, v in bad_o.items())) if bad_o
                  else f"max overshoot 0 over {len(over)} strategies"})
        t.append({"target": f"undershoot ≤ 1%, every strategy, {backend} backend", "status": "missed" if bad_u else "met",
                  "value": max((v for v in under.values() if v is not None), default=None),
                  "detail": ("over 1%: " + ", ".join(f"{k} {v}%" for k, v in bad_u.items())) if bad_u
                  else "worst " + ", ".join(f"{k} {v}%" for k, v in sorted(under.items(), key=lambda kv: -kv[1])[:2])})
    dist = report.get("distributed")
    if dist and "rows" in dist:
        t += distributed.targets(dist)
    mem = report.get("memory")
    if not mem or "plateau" not in mem:
        t.append({"target": "memory plateaus at the cap from 10^5 to 10^6 identities", "status": "not measured",
                  "detail": (mem or {}).get("not_measured", "not run")})
    else:
        flat = mem["points"][-3:]
        t.append({"target": f"memory plateaus at the cap ({mem['cap']} slots) from {flat[0]['identities']} to "
                            f"{flat[-1]['identities']} identities",
                  "status": "met" if mem["plateau"] else "missed",
                  "detail": "slots " + " → ".join(str(p["slots"]) for p in flat) + "; allocated "
                            + " → ".join(f"{p['heap_allocated'] / 2**20:.1f}" for p in flat) + " MiB; RSS "
                            + " → ".join(f"{p['rss_kib'] / 1024:.1f}" for p in flat) + " MiB"})
    return t


def _saturated(row):
    """A fixed-rate row whose configuration could not keep up with the offered rate."""
    return bool(row.get("rps") and row.get("target_rps") and row["rps"] < 0.98 * row["target_rps"])


def _f(v, fmt="{:.3f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "–"


def markdown(report, chart_name):
    m = report["machine"]
    lines = [
        "# sluice benchmark results", "",
        f"Measured {report['when']} on {m['cpu_model']} ({m['cpus']} cpus, {m['memory_gib']} GiB, Linux {m['kernel']}), "
        f"commit {report.get('commit')}, `{report['command']}` ({report['elapsed_s'] / 60:.1f} min). "
        f"Load average before: {' / '.join(str(x) for x in report['load_before'])}; after: "
        f"{' / '.join(str(x) for x in report['load_after'])}. "
        f"Envoy {report['settings']['envoy']}; load: {report['settings']['load']}. The machine is shared: "
        "each run records the CPU other processes used during it (\"others\", in cores) and a run above "
        f"{report['settings']['max_others_cores']} cores is repeated; compare ratios within this run only.", "",
        "## Targets", "", "| target | status | measured |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | **{t['status']}** | {t.get('detail', '')} |")
    tp = report.get("throughput", {})
    if tp.get("rows"):
        rows = tp["rows"]
        lines += ["", f"## 1. Throughput and latency at full load", "",
                  f"wrk, {tp['connections']} connections, median of {tp['reps']} interleaved {tp['seconds']} s runs per "
                  "configuration; latency as wrk reports it (closed loop).", "",
                  "\"Per CPU-s\" is requests per second of Envoy's own CPU time (its utime + stime during the run): "
                  "what it serves on a core of its own, much less sensitive to other work on the machine than req/s. "
                  "\"Envoy\" is the cores Envoy used; \"others\" the cores used by unrelated processes.", "",
                  "\"Spread\" is how far the repetitions of a configuration disagree on per CPU-s ((max − min) / "
                  "median): ratios closer to each other than that are within this run's noise.", "",
                  "| config | req/s | p50 ms | p90 ms | p99 ms | vs (a) | vs (b) | per CPU-s | spread | vs (a) | vs (b) | vs (w) | non-2xx | Envoy | others | RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, (desc, _) in CONFIGS.items():
            if k not in rows:
                if k in tp.get("skipped", {}):
                    lines.append(f"| ({k}) {desc} | not measured: {tp['skipped'][k]} | | | | | | | | | | | | | | |")
                continue
            r = rows[k]
            lines.append(f"| ({k}) {desc} | {r['rps']:.0f} | {_f(r.get('p50_ms'))} | {_f(r.get('p90_ms'))} | "
                         f"{_f(r.get('p99_ms'))} | {_f(_ratio(rows, k, 'a'))} | {_f(_ratio(rows, k, 'b'))} | "
                         f"{_f(r.get('rps_per_cpu'), '{:.0f}')} | {_f(r.get('rps_per_cpu_spread'), '{:.0%}')} | "
                         f"{_f(_ratio(rows, k, 'a', 'rps_per_cpu'))} | "
                         f"{_f(_ratio(rows, k, 'b', 'rps_per_cpu'))} | "
                         f"{_f(_ratio(rows, k, 'w', 'rps_per_cpu'))} | "
                         f"{_f(r.get('non_2xx_share'), '{:.0%}')} | {_f(r.get('target_cores'), '{:.2f}')} | "
                         f"{_f(r.get('others_cores'), '{:.2f}')} | {r['rss_mib']} |")
        lines += ["", f"![throughput and p99 per configuration]({chart_name})"]
    fr = report.get("fixed_rate", {})
    if fr.get("rows"):
        lines += ["", "## 2. Latency at a fixed rate (50% of (a))", "",
                  f"oha (open loop, `-q {fr['rate']} --latency-correction`: latency counts from each request's scheduled "
                  f"send time, so coordinated omission is corrected), {fr['connections']} connections, median of "
                  f"{fr['reps']} interleaved {fr['seconds']} s runs.", "",
                  "| config | achieved req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, r in fr["rows"].items():
            us = lambda v: _f(v * 1e3 if isinstance(v, (int, float)) else None, "{:.0f}")
            served = _f(r.get('rps'), '{:.0f}') + (" (saturated)" if _saturated(r) else "")
            lines.append(f"| ({k}) {CONFIGS[k][0]} | {served} | {us(r.get('p50_ms'))} | "
                         f"{us(r.get('p90_ms'))} | {us(r.get('p99_ms'))} | {us(r.get('p99_9_ms'))} | "
                         f"{_f(r.get('added_p50_us'), '{:.0f}')} | {_f(r.get('added_p99_us'), '{:.0f}')} |")
    elif fr.get("skipped"):
        lines += ["", "## 2. Latency at a fixed rate", "", f"not measured: {fr['skipped']}"]
    acc = report.get("accuracy", {})
    if acc:
        s = acc.get("settings", {})
        lines += ["", "## 3. Accuracy", "",
                  f"Limit {s.get('limit')} per {s.get('period_s')} s, identity `global`, {s.get('connections')} concurrent "
                  f"clients (wrk connections, closed loop), {s.get('windows')} windows per strategy; local: 1 Envoy with "
                  "2 workers; redis: 2 Envoys with 2 workers each, through sluice-gateway. Decision times come from "
                  "Envoy's access log (start + duration, µs); an overshoot counts only when certain. What is counted "
                  "per strategy is defined in `scripts/bench/accuracy.py`.", "",
                  "| backend | strategy | bound checked | admitted | windows / run | overshoot | undershoot | offered req/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for backend in ("local", "redis"):
            res = acc.get(backend)
            if not isinstance(res, dict):
                continue
            if "not_measured" in res:
                lines.append(f"| {backend} | – | not measured: {res['not_measured']} | | | | | |")
                continue
            for strat, a in res.items():
                if strat.startswith("_"):
                    continue
                worst = a.get("max_admitted_in_any_window", a.get("max_admitted_in_a_window"))
                if worst is not None:
                    worst = f"{worst} in the fullest window; ≥ {a.get('min_admitted_in_a_full_window')} in every full one"
                elif a.get("run_bound") is not None:
                    worst = f"{a['admitted']} over the run; bound {a['run_bound']:.1f}, full use {a['expected_admitted']:.1f}"
                lines.append(f"| {backend} | {strat} | {a.get('check', a.get('note', ''))} | {a['admitted']} | {worst} | "
                             f"{a.get('overshoot')} | {_f(a.get('undershoot_pct'), '{:.2f}%')} | {a.get('offered_rps')} |")
    mem = report.get("memory")
    if mem and "points" in mem:
        lines += ["", "## 4. Memory", "",
                  f"One local rule, header identity, `local.max_clients: {mem['cap']}`, one new identity per request; "
                  "limit per hour, so every identity stays live and past the cap each new one evicts.", "",
                  "| distinct identities | slots (keys) | RSS MiB | allocated MiB | req/s |", "|---|---|---|---|---|"]
        for p in mem["points"]:
            lines.append(f"| {p['identities']} | {p['slots']} | {p['rss_kib'] / 1024:.1f} | "
                         f"{p['heap_allocated'] / 2**20:.1f} | {p.get('rps', '–')} |")
        lines += ["", f"Bytes per slot: {mem.get('heap_bytes_per_slot')} allocated by Envoy (measured: growth of "
                      f"allocated bytes / growth of slots between the first two steps), {mem.get('rss_bytes_per_slot')} "
                      f"of RSS; key + value {mem.get('key_value_bytes_per_slot')} bytes (src/store.rs layout, measured on the "
                      f"in-memory store). Shared data at the cap ≈ {mem.get('shared_data_bytes_at_cap', 0) / 2**20:.1f} MiB. "
                      f"Plateau rule: {mem['plateau_rule']}."]
    elif mem:
        lines += ["", "## 4. Memory", "", f"not measured: {mem.get('not_measured')}"]
    prof = report.get("profile") or {}
    hc = report.get("hostcalls")
    if prof.get("core") or prof.get("breakdown") or hc:
        lines += ["", "## 5. Where the time goes"]
    if prof.get("core"):
        lines += ["",
                  "Native run of the filter's pure core on the same plugin configurations (`scripts/bench/corebench`), per "
                  "request: time, heap allocations, and host calls: every header (once per request: the glue caches "
                  "them), property and shared-data access the core asks for is one proxy-wasm host call in "
                  "`src/host/mod.rs`; the glue adds the clock and one call per response header (metrics are batched).", "",
                  "| config | native ns | allocations | bytes allocated | host calls (core + glue) | shared get/set |",
                  "|---|---|---|---|---|---|"]
        for k, p in prof["core"].items():
            if "error" in p:
                lines.append(f"| ({k}) | error: {p['error']} | | | | |")
                continue
            c = p["core_host_calls"]
            lines.append(f"| ({k}) | {p['ns_per_request']:.0f} | {p['allocations_per_request']:.1f} | "
                         f"{p['allocated_bytes_per_request']:.0f} | {p['host_calls_total']:.1f} "
                         f"({p['core_host_calls_total']:.1f} + {p['glue_host_calls']:.1f}) | "
                         f"{c['shared_get']:.1f} / {c['shared_set']:.1f} |")
    if hc:
        prices = ", ".join(f"{k} {v:.2f} µs" for k, v in hc["per_call_us"].items())
        lines += ["", f"Host call prices in this Envoy (probe filter making N calls of one kind per request vs none; "
                      f"base {hc['base_rps']:.0f} req/s): {prices} (pause: a request held and carried on; callout: "
                      "that and one HTTP callout over h2c, each once per request)."]
    if prof.get("breakdown"):
        lines += ["", "Per-request cost in Envoy, from the throughput runs (µs of Envoy CPU per request):", ""]
        lines += [f"- {b}" for b in prof["breakdown"]]
    gw = report.get("gateway")
    if gw:
        lines += ["", "## 6. sluice-gateway alone", ""]
        if "not_measured" in gw:
            lines.append(f"not measured: {gw['not_measured']}")
        else:
            r = gw["row"]
            lines += [f"wrk, {gw['connections']} connections, `POST /pipeline` with one call of sluice's decision script (as the filter sends it) per "
                      f"request, median of {gw['reps']} {gw['seconds']} s runs; the gateway and redis-server share one core, "
                      "wrk has the other.", "",
                      "| req/s | p50 ms | p90 ms | p99 ms | gateway cores | errors |", "|---|---|---|---|---|---|",
                      f"| {r['rps']:.0f} | {_f(r.get('p50_ms'))} | {_f(r.get('p90_ms'))} | {_f(r.get('p99_ms'))} | "
                      f"{_f(r.get('target_cores'), '{:.2f}')} | {r['errors']} of {r['requests']} |"]
    if report.get("distributed"):
        lines += distributed.markdown(report["distributed"])
    return "\n".join(lines) + "\n"


def breakdown(rows):
    """Cost differences between configurations, in µs of Envoy CPU per request."""
    us = {k: 1e6 / r["rps_per_cpu"] for k, r in rows.items() if r.get("rps_per_cpu")}
    out = []

    def diff(label, a, b):
        if a in us and b in us:
            out.append(f"{label}: {us[a] - us[b]:+.2f} µs (({a}) {us[a]:.2f} − ({b}) {us[b]:.2f})")

    diff("Envoy's Wasm machinery with an empty Rust filter", "w", "a")
    diff("sluice's fixed per-request work (rule matching, client IP, no store)", "x", "w")
    diff("one local rule's decision (shared-data read + CAS write, strategy)", "y", "x")
    diff("RateLimit response headers (format + add)", "c", "y")
    diff("(c)'s host calls alone, made by the probe", "p", "w")
    diff("(c)'s work beyond its host calls", "c", "p")
    diff("(d)'s host calls alone, made by the probe", "q", "w")
    diff("(d)'s work beyond its host calls", "d", "q")
    diff("nine more rules with header identities", "d", "c")
    diff("the 429 path vs admitting", "e", "c")
    diff("Envoy's native limiter", "b", "a")
    return out


def chart(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.get("throughput", {}).get("rows", {})
    keys = [k for k in CONFIGS if k in rows]
    if not keys:
        return False
    labels = [f"({k}) {CONFIGS[k][0]}" for k in keys]
    colors = ["#4c72b0" if CONFIGS[k][1] == "main" else "#a0a0a0" for k in keys]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(keys) + 1.8), sharey=True)
    ypos = range(len(keys))
    ax1.barh(ypos, [rows[k]["rps"] for k in keys], color=colors)
    ax1.set_yticks(list(ypos), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("requests/s (one Envoy worker, higher is better)")
    for y, k in zip(ypos, keys):
        ax1.text(rows[k]["rps"], y, f" {rows[k]['rps']:.0f}", va="center", fontsize=7)
    ax2.barh(ypos, [rows[k].get("p99_ms") or 0 for k in keys], color=colors)
    ax2.set_xlabel("p99 latency at full load, ms (lower is better)")
    for y, k in zip(ypos, keys):
        ax2.text(rows[k].get("p99_ms") or 0, y, f" {rows[k].get('p99_ms') or 0:.2f}", va="center", fontsize=7)
    m = report["machine"]
    fig.suptitle(f"sluice vs Envoy, {report['when'][:10]}, {m['cpu_model']} ({m['cpus']} cpus); grey = diagnostic",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def update_readme(readme_path, report, md_rel, chart_rel):
    """Replaces the block between the markers in the README's Benchmarks section."""
    with open(readme_path) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        return False
    m = report["machine"]
    rows = report.get("throughput", {}).get("rows", {})
    block = [README_BEGIN, "",
             f"Latest full run: {report['when']}, {m['cpu_model']}, {m['cpus']} cpus, {m['memory_gib']} GiB "
             f"(shared machine, load average {' / '.join(str(x) for x in report['load_before'])} before the run), commit "
             f"{report.get('commit')}. Full results: [{md_rel}]({md_rel}).", "",
             "| target | status | measured |", "|---|---|---|"]
    for t in report["targets"]:
        block.append(f"| {t['target']} | **{t['status']}** | {t.get('detail', '')} |")
    if rows:
        block += ["", "Ratios are per Envoy CPU-second (requests served per second of Envoy's own CPU), medians of "
                      "interleaved repetitions; spread is (max − min) / median over those repetitions.", "",
                  "| config | req/s | p50 ms | p99 ms | per CPU-s | spread | vs (a) Envoy alone | vs (b) native | vs (w) Wasm floor |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, (desc, kind) in CONFIGS.items():
            if k in rows:
                r = rows[k]
                block.append(f"| ({k}) {desc} | {r['rps']:.0f} | {_f(r.get('p50_ms'))} | {_f(r.get('p99_ms'))} | "
                             f"{_f(r.get('rps_per_cpu'), '{:.0f}')} | {_f(r.get('rps_per_cpu_spread'), '{:.0%}')} | "
                             f"{_f(_ratio(rows, k, 'a', 'rps_per_cpu'))} | {_f(_ratio(rows, k, 'b', 'rps_per_cpu'))} | "
                             f"{_f(_ratio(rows, k, 'w', 'rps_per_cpu'))} |")
        block += ["", f"![throughput and p99 per configuration]({chart_rel})"]
    block += ["", README_END]
    new = re.sub(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), lambda _: "\n".join(block), text, flags=re.S)
    with open(readme_path, "w") as f:
        f.write(new)
    return True
