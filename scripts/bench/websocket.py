"""WebSocket messages per second through Envoy, with and without sluice's message rules, in one
run: the configurations are measured in interleaved rounds and compared by their medians.

    python3 scripts/bench/websocket.py [--rounds 5] [--messages 200000] [--echoes 5000] [--json FILE]

Configurations, each its own Envoy 1.40 (one worker) built from envoy/websocket.yaml, all in
front of one upstream:
  (a) Envoy, no Wasm filter
  (b) sluice with an upgrade rule only: no message rule, the frames are not followed
  (c) sluice with a local message rule never reached (token_bucket): every message judged
  (d) as (c) with a second rule costing payload_bytes: every frame judged by two rules
  (e) one message rule decided in Redis through sluice-gateway (never reached): each message
      waits for its answer before the connection's next one goes on (a hundredth of the
      messages and a tenth of the round trips, so that it ends)

Two loads per configuration and round:
  stream  the client writes N small messages (32-byte payloads) as fast as the connection takes
          them, then a last one the upstream recognises; messages/s = N / time until the
          upstream says it saw the last one. Envoy reads many frames per chunk.
  echo    M round trips, one message at a time (the upstream answers each): messages/s =
          M / elapsed. One frame per chunk, and the answer crosses the filter too.

The upstream and the client are plain sockets (frames built here; RFC 6455 client frames
masked with a zero key, which is a valid key), so their cost per message is small next to
Envoy's. Bounded: every socket read has a timeout and every loop a count. Run it from the
repository root after `cargo build --release --target wasm32-wasip1`.
"""
import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import yaml  # noqa: E402

from common import LOOPBACK, ROOT, log, median, target_dir  # noqa: E402
from envoyctl import Envoy, gateway_cluster  # noqa: E402
from redisenv import CLUSTER, TOKEN, RedisStack  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LAST = b"sluice-bench-last-message"
PAYLOAD = b"m" * 32
NEVER = "1000000000/s"


def client_frame(payload, opcode=0x1):
    """A masked client frame with the zero masking key (payload bytes unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    return head + b"\0\0\0\0" + payload


def server_frame(payload, opcode=0x1):
    n = len(payload)
    head = bytes([0x80 | opcode, n]) if n < 126 else bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    return head + payload


def read_frame(sock, buf):
    """One frame from `sock` (bytes already read in `buf`): (opcode, payload, rest of buf)."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
    need(2)
    opcode, masked, n = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F
    at = 2
    if n == 126:
        need(4)
        n, at = struct.unpack(">H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, at = struct.unpack(">Q", buf[2:10])[0], 10
    key = b""
    if masked:
        need(at + 4)
        key, at = buf[at:at + 4], at + 4
    need(at + n)
    payload = buf[at:at + n]
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload, buf[at + n:]


def read_head(sock):
    data = b""
    for _ in range(64):
        if b"\r\n\r\n" in data:
            break
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class Upstream:
    """A WebSocket upstream on a free port: answers the handshake, then per connection either
    echoes every message (path /ws/echo) or only tells when the last message arrived."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            conn.settimeout(60)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head, rest = read_head(conn)
            key = next(l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
            path = head.split(" ", 2)[1]
            if path.endswith("/echo"):
                buf = rest
                while True:
                    opcode, payload, buf = read_frame(conn, buf)
                    if opcode == 0x8:
                        conn.sendall(server_frame(payload[:2], 0x8))
                        return
                    if opcode in (0x1, 0x2):
                        conn.sendall(server_frame(payload, opcode))
            else:
                # Frames are not parsed: the last message's payload, unmasked by the zero key,
                # is looked for in the bytes.
                tail = rest
                while LAST not in tail:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        return
                    tail = tail[-len(LAST):] + chunk
                conn.sendall(server_frame(b"seen"))
                conn.recv(1024)
        except (OSError, ConnectionError, StopIteration):
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


def connect(port, path):
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nx-user: bench\r\n\r\n").encode())
    head, rest = read_head(sock)
    if not head.startswith("HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head.splitlines()[0] if head else head!r}")
    return sock, rest


def close(sock):
    try:
        sock.sendall(client_frame(b"\x03\xe8", 0x8))
    except OSError:
        pass
    sock.close()


def stream(port, n):
    """Messages per second of n small messages written back to back."""
    sock, _ = connect(port, "/ws/stream")
    data = client_frame(PAYLOAD) * n + client_frame(LAST)
    start = time.perf_counter()
    sock.sendall(data)
    opcode, payload, _ = read_frame(sock, b"")
    elapsed = time.perf_counter() - start
    close(sock)
    if payload != b"seen":
        raise RuntimeError(f"stream: unexpected answer {opcode} {payload!r}")
    return n / elapsed


def echo(port, m):
    """Messages per second of m round trips, one message at a time."""
    sock, buf = connect(port, "/ws/echo")
    frame = client_frame(PAYLOAD)
    start = time.perf_counter()
    for _ in range(m):
        sock.sendall(frame)
        opcode, payload, buf = read_frame(sock, buf)
        if payload != PAYLOAD:
            raise RuntimeError(f"echo: unexpected answer {opcode} {payload!r}")
    elapsed = time.perf_counter() - start
    close(sock)
    return m / elapsed


def configs():
    upgrades = {"name": "upgrades", "match": {"path": "/ws/**", "headers": {"upgrade": "websocket"}}, "limit": NEVER}
    messages = {"name": "messages", "per": "message", "match": {"path": "/ws/**"}, "limit": NEVER,
                "strategy": "token_bucket", "identifier": {"header": "x-user"}}
    byte_rule = {"name": "bytes", "per": "message", "match": {"path": "/ws/**"}, "limit": NEVER,
                 "strategy": "token_bucket", "cost": "payload_bytes", "identifier": {"header": "x-user"}}
    redis = dict(messages, backend="redis", limit="1000000/s")
    redis_config = {"redis": {"cluster": CLUSTER, "token": TOKEN, "timeout_ms": 1000}, "rules": [upgrades, redis]}
    # (name, what, plugin config, share of the messages and round trips)
    return [
        ("a", "Envoy, no Wasm filter", None, 1),
        ("b", "sluice, upgrade rule only (no message rule)", {"rules": [upgrades]}, 1),
        ("c", "sluice, one local message rule, never reached", {"rules": [upgrades, messages]}, 1),
        ("d", "sluice, (c) and a payload_bytes rule", {"rules": [upgrades, messages, byte_rule]}, 1),
        ("e", "sluice, one Redis message rule (sluice-gateway), never reached", redis_config, 0.01),
    ]


def bootstrap(plugin_config, upstream_port, wasm, gateway_port):
    with open(os.path.join(ROOT, "envoy/websocket.yaml")) as f:
        boot = yaml.safe_load(f)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    if plugin_config is None:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    else:
        cfg = hcm["http_filters"][0]["typed_config"]["config"]
        cfg["vm_config"]["code"]["local"]["filename"] = wasm
        cfg["configuration"]["value"] = json.dumps(plugin_config)
    addr = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    addr["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    boot["static_resources"]["clusters"].append(gateway_cluster(CLUSTER, gateway_port, h2=True))
    return boot


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=200000, help="messages per stream run")
    ap.add_argument("--echoes", type=int, default=5000, help="round trips per echo run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    wasm = os.path.join(target_dir(), "wasm32-wasip1/release/sluice.wasm")
    if not os.path.exists(wasm):
        sys.exit(f"{wasm} is missing: cargo build --release --target wasm32-wasip1")
    upstream = Upstream()
    work = tempfile.mkdtemp(prefix="sluice-ws-bench-")
    redis = RedisStack(work)
    envoys = {}
    share = {name: k for name, _, _, k in configs()}
    counts = {name: (max(1, int(args.messages * k)), max(1, int(args.echoes * min(1, k * 10)))) for name, k in share.items()}
    try:
        for name, _, plugin, _ in configs():
            boot = bootstrap(plugin, upstream.port, wasm, redis.port)
            envoys[name] = Envoy(f"ws-{name}", boot, work, concurrency=1)
        results = {name: {"stream": [], "echo": []} for name in envoys}
        names = list(envoys)
        for name in names:  # warm-up: the VMs, the connections, the caches
            stream(envoys[name].port, 1000)
            echo(envoys[name].port, 100)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                n, m = counts[name]
                results[name]["stream"].append(stream(envoys[name].port, n))
                results[name]["echo"].append(echo(envoys[name].port, m))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"({n}) {results[n]['stream'][-1]:.0f}/{results[n]['echo'][-1]:.0f}" for n in names))
        # sluice hands its counts to Envoy at each worker's tick (100 ms): read them settled.
        expected = {n: args.rounds * (counts[n][0] + 1 + counts[n][1]) + 1000 + 1 + 100 for n in ("c", "d", "e")}
        deadline = time.monotonic() + 3
        while True:
            counted = {n: envoys[n].stat("wasmcustom.sluice.rule.messages.messages_admitted") for n in expected}
            if counted == expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for e in envoys.values():
            e.stop()
        upstream.stop()
        redis.stop()
    summary = {"rounds": args.rounds, "messages": args.messages, "echoes": args.echoes,
               "messages_admitted": counted, "messages_admitted_expected": expected, "configs": {}}
    a = {k: median(results["a"][k]) for k in ("stream", "echo")}
    print(f"WebSocket messages/s through Envoy 1.40 (1 worker), medians of {args.rounds} interleaved rounds, "
          f"{len(PAYLOAD)}-byte payloads; stream: {args.messages} messages back to back; echo: {args.echoes} round trips "
          "((e): a hundredth of the messages, a tenth of the round trips)")
    print()
    print("| config | stream msg/s | vs (a) | echo msg/s | vs (a) |")
    print("|---|---|---|---|---|")
    for name, what, _, _ in configs():
        m = {k: median(results[name][k]) for k in ("stream", "echo")}
        summary["configs"][name] = {"what": what, **m, "runs": results[name]}
        print(f"| ({name}) {what} | {m['stream']:.0f} | {m['stream'] / a['stream']:.3g} | "
              f"{m['echo']:.0f} | {m['echo'] / a['echo']:.3g} |")
    print()
    print(f"messages counted by the message rules: {counted} (messages sent: {expected})")
    if counted != expected:
        sys.exit("a message rule did not count every message")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
