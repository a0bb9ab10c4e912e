"""The load generators: wrk (closed loop, throughput) and oha (open loop at a fixed rate, with
latency measured from each request's scheduled send time, so coordinated omission is
corrected). Both are bounded in time and target 127.0.0.1 only."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

from common import LOOPBACK, CpuWatch, pin, run_measured

UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")


def _check_local(url):
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load may only target {LOOPBACK}: {url}")


def wrk(url, seconds, connections, threads=1, cpus=None, headers=(), script=None, script_args=(), watch=(), until=None):
    """Runs wrk (for `seconds`, or until `until()` holds); returns req/s, latency percentiles
    (ms), status counts and CPU accounting."""
    _check_local(url)
    cmd = pin(cpus) + ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", os.path.join(SCRIPTS, script)]
    cmd.append(url)
    if script_args:
        cmd += ["--"] + [str(a) for a in script_args]
    if until is None:
        out, cpu = run_measured(cmd, timeout=seconds + 60, watch_pids=watch)
    else:
        out, cpu = _run_until(cmd, seconds, until, watch)
    return parse_wrk(out, cpu)


def _run_until(cmd, seconds, until, watch):
    """wrk's main thread sleeps for the whole -d even when every thread stopped; SIGINT ends it
    early (and it still prints its summary) once `until()` holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = CpuWatch(watch)
    w.add(proc.pid)
    deadline = time.monotonic() + seconds + 5
    while proc.poll() is None and time.monotonic() < deadline:
        if until():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    cpu = w.stop()
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err[-1000:]}")
    return out, cpu


def parse_wrk(out, cpu):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    res = {"rps": float(m.group(1))}
    for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        res[f"p{p}_ms"] = float(v) * UNITS_MS[u]
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["requests"] = int(total.group(1)) if total else 0
    res["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    res["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    res.update(cpu)
    return res


def oha_available():
    return shutil.which("oha") is not None


def oha(url, rate, seconds, connections, cpus=None, headers=(), watch=()):
    """Open loop: `rate` requests/s for `seconds`, latency from the scheduled send time
    (--latency-correction). Returns achieved rate and latency percentiles (ms)."""
    _check_local(url)
    cmd = pin(cpus) + ["oha", "--no-tui", "--output-format", "json", "--worker-threads", str(len(cpus) if cpus else 2),
                       "-z", f"{seconds}s", "-c", str(connections),
                       "-q", str(rate), "--latency-correction"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out, cpu = run_measured(cmd, timeout=seconds + 60, watch_pids=watch)
    data = json.loads(out)
    summary = data.get("summary", {})
    pct = data.get("latencyPercentiles", {})
    res = {"target_rps": rate, "rps": summary.get("requestsPerSec"), "success_rate": summary.get("successRate")}
    for k, name in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99_9")):
        if pct.get(k) is not None:
            res[f"{name}_ms"] = pct[k] * 1e3
    res["status_codes"] = data.get("statusCodeDistribution", {})
    # Requests cut by the end of the run are not failures of the proxy.
    res["errors"] = {k: v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k}
    res.update(cpu)
    return res
