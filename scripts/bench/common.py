"""Shared helpers of the benchmark: paths, ports, processes, CPU accounting, machine facts."""
import contextlib
import hashlib
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Ports handed out by this process (a port is chosen, released, then bound by a server).
_HANDED_OUT = set()
# Fixed ports of the shipped bootstraps and scripts/integration.sh.
_RESERVED = {10000, *range(17000, 17006)}


def _ephemeral_ports():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def free_port():
    """A loopback port free now, outside the kernel's ephemeral range (whose ports any client
    connection may take between this choice and the server's bind: a run opens millions), and
    never handed out before by this process (tests/ports does the same for the test suites)."""
    lo, hi = _ephemeral_ports()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        port = rng.randrange(10001, 65536)
        if lo <= port <= hi or port in _RESERVED or port in _HANDED_OUT or not _bindable(port):
            continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # no room outside the range: any port free now
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    """How far repetitions of one measurement disagree: (max - min) / median; None for fewer than
    two. Two configurations closer than this apart are not told apart by the run."""
    xs = [x for x in xs if x]
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else None


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def pin(cpus):
    """A taskset prefix, or nothing when no cpus are given."""
    return ["taskset", "-c", ",".join(str(c) for c in cpus)] if cpus else []


@contextlib.contextmanager
def pinned(cpus):
    """This process on `cpus` for the block (as `pin` places the ones it starts), then back
    where it was; nothing when no cpus are given."""
    before = os.sched_getaffinity(0)
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        yield
    finally:
        os.sched_setaffinity(0, before)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def _busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    return sum(fields[:8]) - fields[3] - fields[4]


def _proc_jiffies(pid):
    """A live process's CPU time, or None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime (fields 14-17; here offset by the two leading fields).
        return sum(int(x) for x in rest[11:15])
    except (OSError, IndexError, ValueError):
        return None


def _reaped_cpu_s():
    """CPU seconds of this process's children that have ended and been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuWatch:
    """How much CPU other people's processes used while we measured: total busy time of the
    machine minus the time of the processes under test and the load generator. The machine is
    shared with engineers compiling; a run they disturbed is repeated (see `disturbed`)."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.busy0 = _busy_jiffies()
        self.ours0 = {p: _proc_jiffies(p) or 0 for p in self.pids}
        # The load generator has ended and been reaped by the time of `stop`: its CPU is only
        # in this process's children's account (without it, it counted as other people's work).
        self.reaped0 = _reaped_cpu_s()

    def add(self, pid):
        self.pids.append(pid)
        self.ours0[pid] = _proc_jiffies(pid) or 0

    def stop(self):
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        busy = (_busy_jiffies() - self.busy0) / CLK_TCK
        now = {p: _proc_jiffies(p) for p in self.pids}
        gone = [p for p, j in now.items() if j is None]
        reaped = max(_reaped_cpu_s() - self.reaped0, 0.0)
        per_pid = {p: reaped / len(gone) if now[p] is None else max(now[p] - j, 0) / CLK_TCK
                   for p, j in self.ours0.items()}
        ours = sum(per_pid.values())
        return {"others_cores": round(max(busy - ours, 0.0) / elapsed, 3),
                "ours_cores": round(ours / elapsed, 3),
                # CPU of the first watched process (the proxy under test), in cores and seconds.
                "target_cores": round(per_pid[self.pids[0]] / elapsed, 3) if self.pids else None,
                "target_cpu_s": round(per_pid[self.pids[0]], 3) if self.pids else None,
                # Every watched process's CPU seconds, in the order watched (the load generator last).
                "cpu_s": [round(per_pid[p], 3) for p in self.pids]}


def run_measured(cmd, timeout, watch_pids=(), cwd=None):
    """Runs a load generator to completion while accounting CPU; returns (stdout, cpu)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    watch = CpuWatch(watch_pids)
    watch.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{cmd[0]} exceeded {timeout}s: {err[-500:]}")
    cpu = watch.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-1000:]}")
    return out, cpu


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    return {"cpu_model": model, "cpus": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "platform": platform.platform()}


def tool_versions():
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    return {"envoy": first_line(["envoy", "--version"]), "wrk": first_line(["wrk", "-v"]),
            "oha": first_line(["oha", "--version"]) if shutil.which("oha") else None,
            "redis": first_line(["redis-server", "--version"]) if shutil.which("redis-server") else None,
            "python": platform.python_version()}


def git_head():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty-src" if dirty else "")
    except OSError:
        return None


def wait_until(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {seconds}s waiting for {what}")


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((LOOPBACK, port)) == 0


def wait_quiet(threshold_cores, max_wait_s, sample_s=1.0):
    """Waits (at most `max_wait_s`) for a moment when the machine's busy time, sampled over
    `sample_s`, is below `threshold_cores` (nothing of ours runs meanwhile: the proxies are idle).
    Returns (seconds waited, last sample in cores)."""
    waited, busy = 0.0, 0.0
    while True:
        b0, t0 = _busy_jiffies(), time.monotonic()
        time.sleep(sample_s)
        busy = (_busy_jiffies() - b0) / CLK_TCK / (time.monotonic() - t0)
        waited += sample_s
        if busy <= threshold_cores or waited >= max_wait_s:
            return round(waited, 1), round(busy, 2)
