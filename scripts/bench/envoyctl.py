"""Envoy processes for the benchmark: bootstraps derived from the shipped envoy/demo.yaml (a
direct_response route, so the proxy is the whole system under test), the filters compared, and
a process wrapper that starts, reads stats and memory, and stops."""
import copy
import json
import os
import re
import subprocess
import time
import urllib.request

import yaml

from common import LOOPBACK, ROOT, free_port, pin

# Access log line used by the accuracy section: decision time lies in [start, start + duration].
ACCESS_FORMAT = "%START_TIME(%s.%6f)% %COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %RESPONSE_CODE% %REQ(:PATH)%\n"


def demo_bootstrap():
    with open(os.path.join(ROOT, "envoy/demo.yaml")) as f:
        return yaml.safe_load(f)


def _hcm(boot):
    return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def wasm_filter(wasm_path, plugin_config, vm_id="sluice"):
    """The demo's Wasm filter entry, pointed at `wasm_path` with `plugin_config` (a dict)."""
    wasm = copy.deepcopy(_hcm(demo_bootstrap())["http_filters"][0])
    cfg = wasm["typed_config"]["config"]
    cfg["vm_config"]["code"]["local"]["filename"] = wasm_path
    cfg["vm_config"]["vm_id"] = vm_id
    cfg["configuration"]["value"] = json.dumps(plugin_config)
    return wasm


def native_filter(max_tokens, fill_s):
    """Envoy's own local_ratelimit filter, enabled and enforced for every request."""
    pct = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native",
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": f"{fill_s}s"},
            "filter_enabled": dict(pct, runtime_key="rl_enabled"),
            "filter_enforced": dict(pct, runtime_key="rl_enforced"),
        },
    }


def gateway_cluster(name, port, h2=False):
    """A static loopback cluster; `h2` speaks HTTP/2 to it without TLS (h2c, prior knowledge), as
    the shipped bootstraps do towards sluice-gateway."""
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}}]}]},
    }
    if h2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


UPSTREAM = "upstream"


def routed(boot, upstream_port):
    """`boot` with its route sent to an upstream on `upstream_port` instead of answering itself."""
    boot = copy.deepcopy(boot)
    route = _hcm(boot)["route_config"]["virtual_hosts"][0]["routes"][0]
    route.pop("direct_response", None)
    route["route"] = {"cluster": UPSTREAM, "timeout": "15s"}
    boot["static_resources"].setdefault("clusters", []).append(gateway_cluster(UPSTREAM, upstream_port))
    return boot


def bootstrap(filters, access_log=None, clusters=(), access_format=ACCESS_FORMAT):
    boot = demo_bootstrap()
    hcm = _hcm(boot)
    router = hcm["http_filters"][-1]
    hcm["http_filters"] = list(filters) + [router]
    if access_log:
        hcm["access_log"] = [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": access_log,
                "log_format": {"text_format_source": {"inline_string": access_format}},
            },
        }]
    if clusters:
        boot["static_resources"]["clusters"] = list(clusters)
    return boot


class Envoy:
    """One Envoy 1.40 process on free loopback ports; `cpus` pins it (taskset)."""

    def __init__(self, name, boot, workdir, concurrency=1, cpus=None):
        boot = copy.deepcopy(boot)
        self.name = name
        self.port, self.admin = free_port(), free_port()
        boot["admin"]["address"]["socket_address"]["port_value"] = self.admin
        boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = self.port
        path = os.path.join(workdir, f"envoy-{name}.json")
        with open(path, "w") as f:
            json.dump(boot, f)
        self.log = os.path.join(workdir, f"envoy-{name}.log")
        self.proc = subprocess.Popen(
            pin(cpus) + ["envoy", "-c", path, "--concurrency", str(concurrency), "--disable-hot-restart",
                         "--base-id", str(self.admin), "--log-level", "warn", "--log-path", self.log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy {name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                if self._get("/ready", timeout=1).startswith("LIVE"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"envoy {name} not ready within 90 s:\n{self.log_tail()}")

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path="/bench/x"):
        return f"http://{LOOPBACK}:{self.port}{path}"

    def log_tail(self, n=30):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def _get(self, path, timeout=5):
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.admin}{path}", timeout=timeout) as r:
            return r.read().decode()

    def stats(self, regex):
        """Counters and gauges whose name matches `regex`, as {name: int}."""
        body = self._get("/stats?filter=" + urllib.request.quote(regex))
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name):
        return self.stats("^" + re.escape(name) + "$").get(name, 0)

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            m = re.search(r"VmRSS:\s+(\d+)", f.read())
        return int(m.group(1)) if m else 0

    def heap(self):
        """Envoy's allocator view (admin /memory): bytes allocated and heap size."""
        m = json.loads(self._get("/memory"))
        return {k: int(v) for k, v in m.items() if str(v).isdigit()}

    def workers_connections(self):
        """Downstream connections accepted per worker (to check load reached every worker)."""
        s = self.stats(r"listener\..*worker_[0-9]+\.downstream_cx_total")
        return [v for k, v in sorted(s.items())]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
