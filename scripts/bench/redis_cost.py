"""Redis's own work per decision, counted in instructions: redis-server runs under valgrind's
callgrind, which counts the same for the same inputs whatever else the machine does (timing on
a shared machine moves by tens of percent). sluice-gateway loads its function library into
that server, then decisions are sent as the gateway sends them: `per-call` is one FCALL per
decision, six pipelined per round trip (--batch-calls false); `batch` is one FCALL of the
batch function deciding six. Each round trip decides six new identities' fixed-window rules
(never reached), as a busy worker's gathered callout does; `per-call-one` and `batch-one` decide six requests of
one identity (one client sending fast, as in the bench's rows), whose key a batch reads and
writes once. `get-set` is no script at all: a GET and a `SET ... PX` per decision, pipelined,
the store work any decision needs. `module`, `module-batch` and `module-batch-one` are
`per-call`, `batch` and `batch-one` through sluice's native Redis module (`redis-module/`,
loaded into the same server) instead of the function library.

    python3 scripts/bench/redis_cost.py [--decisions 2400] [--reps 3]

Needs valgrind, a release sluice-gateway (cargo build --release -p sluice-gateway) and the
release module (cargo build --release -p sluice-redis-module). What
remains is Redis's background work (its cron runs by wall time, slowed here by valgrind):
kept small with `hz 1`, and reported as the spread over repetitions."""
import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import LOOPBACK, free_port, port_open, wait_until  # noqa: E402
from redisenv import gateway_binary, redis_module  # noqa: E402

PER_TRIP = 6
RULE = ["fixed_window", "1000000000", "60000", "1", "0", "0"]


def encode(words):
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        w = w if isinstance(w, bytes) else str(w).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


class Client:
    """A RESP client that reads whole replies (enough of RESP for sluice's replies)."""

    def __init__(self, port):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=120)
        self.buf = b""

    def _fill(self, need):
        while len(self.buf) < need:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("redis-server closed the connection")
            self.buf += chunk

    def _skip(self, i):
        while True:
            end = self.buf.find(b"\r\n", i)
            if end >= 0:
                break
            self._fill(len(self.buf) + 1)
        kind, line = self.buf[i:i + 1], self.buf[i + 1:end]
        if kind in (b"+", b"-", b":"):
            return end + 2, kind == b"-"
        if kind == b"$":
            n = int(line)
            stop = end + 2 + (n + 2 if n >= 0 else 0)
            self._fill(stop)
            return stop, False
        if kind == b"*":
            pos, failed = end + 2, False
            for _ in range(max(int(line), 0)):
                pos, f = self._skip(pos)
                failed = failed or f
            return pos, failed
        raise RuntimeError(f"unexpected reply {self.buf[i:i + 40]!r}")

    def send(self, payload, replies):
        self.sock.sendall(payload)
        pos, failed = 0, False
        for _ in range(replies):
            pos, f = self._skip(pos)
            failed = failed or f
        self.buf = self.buf[pos:]
        if failed:
            raise RuntimeError("an error reply: the function library is not the one expected")


def callgrind_total(out_dir):
    subprocess.run(["callgrind_control", "-d"], capture_output=True, check=False)
    newest = max(glob.glob(os.path.join(out_dir, "callgrind.out.*")), key=os.path.getmtime)
    with open(newest) as f:
        m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=2400, help="decisions per measurement (default 2400)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    work = tempfile.mkdtemp(prefix="sluice-redis-cost-")
    port, gw_port = free_port(), free_port()
    redis = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.out.%p",
                              "redis-server", "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly",
                              "no", "--hz", "1", "--dir", work, "--loadmodule", redis_module()],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gateway = None
    try:
        wait_until(lambda: port_open(port), 120, "redis-server under callgrind")
        gateway = subprocess.Popen([gateway_binary(), "--listen", f"{LOOPBACK}:{gw_port}", "--redis-url",
                                    f"redis://{LOOPBACK}:{port}", "--redis-calls", "fcall"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Client(port)

        def loaded():
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{gw_port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
            except (OSError, ValueError):
                return None
            return health.get("function") if health.get("calls") == "FCALL" else None

        wait_until(lambda: loaded() is not None, 120, "the gateway's library load")
        decide = loaded()
        functions = {"decide": decide, "batch": decide.replace("sluice_decide_", "sluice_batch_", 1)}
        # The module's commands carry the library's id.
        commands = {"decide": decide.replace("sluice_decide_", "sluice.decide.", 1),
                    "batch": decide.replace("sluice_decide_", "sluice.batch.", 1)}
        gateway.terminate()
        gateway.wait(timeout=10)
        gateway = None
        client.buf = b""
        ident = [0]

        def keys():
            ident[0] += PER_TRIP
            return [f"bench:{{cost:{ident[0] + i:016x}}}:0.0000beef" for i in range(PER_TRIP)]

        def per_call(ks=None, head=None):
            head = head or ["FCALL", functions["decide"]]
            return encode_pipeline([head + [1, k] + RULE for k in ks or keys()]), PER_TRIP

        def per_call_one():
            return per_call([keys()[0]] * PER_TRIP)

        def batch(ks=None, head=None):
            ks = ks or keys()
            head = head or ["FCALL", functions["batch"]]
            words = head + [len(ks)] + ks + [PER_TRIP] + [1, len(RULE)] * PER_TRIP
            for _ in ks:
                words += RULE
            return encode(words), 1

        def encode_pipeline(cmds):
            return b"".join(encode(c) for c in cmds)

        trips = max(args.decisions // PER_TRIP, 1)
        def batch_one():
            return batch([keys()[0]] * PER_TRIP)

        def get_set():
            cmds = []
            for k in keys():
                cmds += [["GET", k], ["SET", k, "fw 1764763200000 1", "PX", "60000"]]
            return encode_pipeline(cmds), 2 * PER_TRIP

        def module():
            return per_call(head=[commands["decide"]])

        def module_batch():
            return batch(head=[commands["batch"]])

        def module_batch_one():
            return batch([keys()[0]] * PER_TRIP, head=[commands["batch"]])

        modes = (("per-call", per_call), ("batch", batch), ("per-call-one", per_call_one), ("batch-one", batch_one),
                 ("get-set", get_set), ("module", module), ("module-batch", module_batch),
                 ("module-batch-one", module_batch_one))
        results = {name: [] for name, _ in modes}
        for _ in range(args.reps):
            for name, make in modes:
                subprocess.run(["callgrind_control", "-z"], capture_output=True, check=False)
                for _ in range(trips):
                    client.send(*make())
                results[name].append(callgrind_total(work) / (trips * PER_TRIP))
        for name, values in results.items():
            lo, hi = min(values), max(values)
            print(f"{name:16} {sorted(values)[len(values) // 2]:9.0f} instructions per decision "
                  f"(min {lo:.0f}, max {hi:.0f}, spread {(hi - lo) / lo:.1%}, {PER_TRIP} decisions per round trip)")
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
        print(f"batch / per-call: {med['batch'] / med['per-call']:.3f}; "
              f"batch-one / per-call-one: {med['batch-one'] / med['per-call-one']:.3f}; "
              f"module-batch / batch: {med['module-batch'] / med['batch']:.3f}; "
              f"module-batch-one / batch-one: {med['module-batch-one'] / med['batch-one']:.3f}")
    finally:
        if gateway:
            gateway.kill()
        redis.terminate()
        try:
            redis.wait(timeout=30)
        except subprocess.TimeoutExpired:
            redis.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
