"""Redis and sluice-gateway for the Redis-backend measurements, on loopback ports, and a probe
that tells whether the filter's `backend: redis` works end to end in this build."""
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

from common import LOOPBACK, free_port, pin, port_open, target_dir, wait_until

TOKEN = "bench-token"
CLUSTER = "sluice_gateway"


def gateway_binary():
    return os.path.join(target_dir(), "release", "sluice-gateway")


def redis_module():
    """sluice's Redis module, release build (cargo build --release -p sluice-redis-module)."""
    path = os.path.join(target_dir(), "release", "libsluice_redis.so")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing (cargo build --release -p sluice-redis-module)")
    return path


class RedisStack:
    """redis-server (no persistence, sluice's module loaded when it is built) and sluice-gateway
    in front of it (calls run as FCALL); `add_gateway` starts more gateways on the same Redis with
    other flags, for A/B comparisons (`--redis-calls module` needs the module)."""

    def __init__(self, workdir, cpus=None):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed")
        if not os.path.exists(gateway_binary()):
            raise RuntimeError(f"{gateway_binary()} is missing (cargo build --release -p sluice-gateway)")
        self.procs = []
        self.cpus = cpus
        self.extra = {}  # name -> (port, process)
        self.redis_port, self.port = free_port(), free_port()
        self.dir = tempfile.mkdtemp(dir=workdir, prefix="redis-")
        try:
            self.module = ["--loadmodule", redis_module()]
        except RuntimeError:
            self.module = []
        self.procs.append(subprocess.Popen(
            pin(cpus) + ["redis-server", "--bind", LOOPBACK, "--port", str(self.redis_port), "--save", "",
                         "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"] + self.module,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: port_open(self.redis_port), 20, "redis-server")
        self.gateway_log = open(os.path.join(self.dir, "gateway.log"), "w")
        # FCALL, as before the module existed: `auto` would pick the module when it is loaded.
        self.procs.append(self._gateway(self.port, ["--redis-calls", "fcall"]))
        try:
            wait_until(lambda: port_open(self.port), 30, "sluice-gateway")
        except RuntimeError:
            self.stop()
            raise

    def _gateway(self, port, args, binary=None):
        return subprocess.Popen(
            pin(self.cpus) + [binary or gateway_binary(), "--listen", f"{LOOPBACK}:{port}",
                              "--redis-url", f"redis://{LOOPBACK}:{self.redis_port}", "--token", TOKEN] + list(args),
            stdout=self.gateway_log, stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="warn"))

    def add_gateway(self, name, args, binary=None):
        """Another sluice-gateway on the same Redis, with `args` added to its flags (e.g.
        `--redis-calls evalsha`), of another build if `binary` is given; returns its port."""
        port = free_port()
        proc = self._gateway(port, args, binary)
        self.extra[name] = (port, proc)
        wait_until(lambda: port_open(port), 30, f"sluice-gateway ({name})")
        return port

    def gateway(self, name=None):
        """(port, pid) of the default gateway, or of the one `add_gateway` named `name`."""
        if name is None:
            return self.port, self.procs[1].pid
        port, proc = self.extra[name]
        return port, proc.pid

    @property
    def pids(self):
        """Redis, then the default gateway."""
        return [p.pid for p in self.procs]

    def flush(self):
        subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(self.redis_port), "FLUSHALL"],
                       capture_output=True, timeout=10)

    def stop(self):
        for p in [proc for _, proc in self.extra.values()] + list(reversed(self.procs)):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.gateway_log.close()


def redis_plugin(rules, timeout_ms=100):
    return {"redis": {"cluster": CLUSTER, "token": TOKEN, "timeout_ms": timeout_ms}, "rules": rules}


def probe(envoy_factory, stack):
    """Whether a `backend: redis` rule decides through Redis here: 3 requests against a 2/min
    rule must give 200, 200, 429, and Redis must hold the rule's keys. Returns (ok, reason)."""
    rule = {"name": "probe", "limit": "2/min", "strategy": "fixed_window", "identifier": "global",
            "backend": "redis", "on_error": "allow"}
    try:
        envoy = envoy_factory(redis_plugin([rule], timeout_ms=1000))
    except RuntimeError as e:
        return False, f"Envoy rejected a backend: redis config: {str(e).splitlines()[0]}"
    try:
        codes = []
        for _ in range(3):
            try:
                with urllib.request.urlopen(envoy.url("/probe"), timeout=5) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
        keys = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(stack.redis_port), "DBSIZE"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        if codes == [200, 200, 429] and keys not in ("", "0"):
            return True, "ok"
        return False, f"backend: redis does not limit through Redis yet (responses {codes}, {keys or 0} Redis keys)"
    finally:
        envoy.stop()
        stack.flush()
