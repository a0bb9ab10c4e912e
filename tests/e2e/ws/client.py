"""A WebSocket client for sluice's end-to-end tests: the `websockets` library's own protocol
(handshake, framing, masking, permessage-deflate), driven over a plain socket so that the test
decides how the bytes are cut.

    python3 client.py SCRIPT_JSON

SCRIPT_JSON: {"url": "ws://127.0.0.1:PORT/path", "headers": {...}, "deflate": false,
  "messages": [{"text": "..."} | {"binary": "hex"} | {"fragments": ["a", "b"], "pings": true}],
  "split": 0,            # > 0: write every frame in pieces of this many bytes, one write each
  "close": true,         # end with a close (1000) after the messages, once the server has
                         # been quiet for "quiet_ms" (200): a client that has sent its close
                         # ignores data frames, so the echoes must be in first
  "expect": 0,           # messages to receive before the quiet period starts (the timeout
                         # still bounds the wait)
  "timeout": 10}

Prints one JSON object: the extensions the server's 101 accepted, every message received
(text or binary as hex), and the close frame received (code, reason), if any. Bounded: it stops
at the timeout whatever happens.
"""

import json
import socket
import sys
import time
from urllib.parse import urlparse

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri


def main():
    script = json.loads(sys.argv[1])
    deadline = time.monotonic() + script.get("timeout", 10)
    url = urlparse(script["url"])
    extensions = [ClientPerMessageDeflateFactory()] if script.get("deflate") else None
    proto = ClientProtocol(parse_uri(script["url"]), extensions=extensions, max_size=None)
    sock = socket.create_connection((url.hostname, url.port), timeout=2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    split = script.get("split", 0)

    def flush():
        for data in proto.data_to_send():
            if not data:
                continue
            if split > 0:
                for i in range(0, len(data), split):
                    sock.sendall(data[i:i + split])
                    # Separate writes, so that Envoy reads the pieces as separate chunks.
                    time.sleep(0.002)
            else:
                sock.sendall(data)

    received, close, response, status = [], None, None, None
    partial = None

    def pump(wait):
        """Reads what arrives within `wait` seconds; False once the connection has ended."""
        nonlocal close, response, status, partial
        sock.settimeout(max(0.001, wait))
        try:
            data = sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return True
        except OSError:
            data = b""
        if data:
            proto.receive_data(data)
        else:
            proto.receive_eof()
        for event in proto.events_received():
            if isinstance(event, Response):
                response, status = event, event.status_code
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                partial = (event.opcode, bytearray(event.data))
            elif event.opcode == Opcode.CONT and partial is not None:
                partial[1].extend(event.data)
            elif event.opcode == Opcode.CLOSE:
                close = {"code": proto.close_rcvd.code if proto.close_rcvd else None,
                         "reason": proto.close_rcvd.reason if proto.close_rcvd else None}
                continue
            else:
                continue
            if event.fin and partial is not None:
                op, data = partial
                if op == Opcode.TEXT:
                    received.append({"type": "text", "data": data.decode()})
                else:
                    received.append({"type": "binary", "data": bytes(data).hex()})
                partial = None
        flush()
        return bool(data)

    request = proto.connect()
    for k, v in script.get("headers", {}).items():
        request.headers[k] = v
    proto.send_request(request)
    flush()
    while response is None and time.monotonic() < deadline:
        if not pump(deadline - time.monotonic()):
            break
    out = {"status": status}
    if status == 101 and proto.handshake_exc is None:
        out["extensions"] = response.headers.get("sec-websocket-extensions")
        for m in script.get("messages", []):
            if proto.state is not State.OPEN:
                # The server (or sluice) closed: what is left is not sent.
                break
            if "text" in m:
                proto.send_text(m["text"].encode())
            elif "binary" in m:
                proto.send_binary(bytes.fromhex(m["binary"]))
            else:
                frags = m["fragments"]
                for i, f in enumerate(frags):
                    if i > 0 and m.get("pings"):
                        proto.send_ping(b"client-ping")
                    fin = i == len(frags) - 1
                    if i == 0:
                        proto.send_text(f.encode(), fin=fin)
                    else:
                        proto.send_continuation(f.encode(), fin=fin)
            flush()
            pump(0.001)
        # The messages the test knows must come: waited for whole, however slow the machine
        # (a quiet period alone would close before a late one).
        while close is None and len(received) < script.get("expect", 0) and time.monotonic() < deadline:
            if not pump(min(0.02, max(deadline - time.monotonic(), 0))):
                break
        quiet = script.get("quiet_ms", 200) / 1000
        last = time.monotonic()
        while close is None and time.monotonic() < min(deadline, last + quiet):
            seen = len(received)
            pump(0.02)
            if len(received) != seen:
                last = time.monotonic()
        if script.get("close", True) and close is None and proto.state is State.OPEN:
            proto.send_close(1000, "done")
            flush()
        while time.monotonic() < deadline:
            if proto.close_sent is not None and proto.close_rcvd is not None:
                # The closing handshake is done: what Envoy does with the TCP connection after
                # that (it may wait out its delayed-close timeout) is not the test's business.
                break
            if not pump(deadline - time.monotonic()):
                break
    elif status is not None:
        out["body"] = response.body.decode(errors="replace") if response.body else ""
    sock.close()
    out["received"] = received
    out["close"] = close
    print(json.dumps(out))


if __name__ == "__main__":
    main()
